"""Labelled data sets of the protocol, from names or ``NAME=IMAGES:MASKS`` specs.

* ``nc``: the NC Landsat-7 land-cover pair of ``../shared/data`` (6 bands,
  28.5 m, 7 classes; image nodata 0 on a ~15 % border; labels in EPSG:3358 on
  the image's EPSG:32119 grid);
* ``sen1floods11``: the Sen1Floods11 chip of ``../shared/data`` (Sentinel-2,
  13 bands int16, EPSG:4326; hand labels land/water, -1 nodata);
* ``potsdam``: the two ISPRS Potsdam patches of ``../shared/data``, NOT
  georeferenced: written side by side on a dummy grid (a smoke test);
* ``sparcs``: the 64 SPARCS Landsat-8 scenes of ``../shared/data`` (3 bands
  uint8, 30 m, one UTM zone each; 7 classes, 0 = shadow is a class), split by
  scene;
* ``zion``: the Zion Landsat-8 scene of ``../shared/data`` (4 bands uint16,
  30 m) with NLCD 2011 in 8 classes (0 nodata);
* ``NAME=IMAGES:MASKS``: any image/mask GeoTIFFs (any band count; classes are
  the masks' values, their nodata ignored). IMAGES and MASKS are two files (one
  scene, split block-wise inside it), two folders (an image and a mask belong
  together when their file names are equal) or two quoted glob patterns (they
  belong together when the parts matched by ``*`` are equal, e.g.
  ``sparcs='DIR/*_img.tif:DIR/*_lbl.tif'``). Several scenes are split by
  scene: train, validation and test scenes, never inside a scene;
* ``torchgeo:<Dataset>=<root>``: a TorchGeo non-geo segmentation data set on
  disk (e.g. ``torchgeo:Potsdam2D=/data/potsdam``), on a dummy grid.

Pretraining uses each data set's own images without their labels: the
training scenes' images only, for a set split by scene.
"""

import glob
import importlib
import math
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import rasterio
import rasterio.errors
from rasterio.transform import from_origin

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED = os.path.join(ROOT, '..', 'shared', 'data', 'labeled')
DUMMY_CRS = 'EPSG:32633'


@dataclass
class LabelledSet:
    """A labelled data set prepared for the protocol.

    Attributes:
        name: short name used in paths and tables.
        images: image GeoTIFFs (also the unlabelled pretraining mosaic).
        masks: mask GeoTIFFs.
        class_values: raw mask value of each class (None: every value found).
        class_names: one name per class (None: the values).
        mask_nodata: mask value that is not a class (None: the files' own).
        block_size: side of a split block, in tiles (a set of one scene).
        note: provenance and caveats, printed in the results.
        scenes: the scenes of each split ('train', 'val', 'test': image file
            stems) when the set is split by scene (see :meth:`split_by_scene`);
            empty for a set split block-wise inside its images.
    """

    name: str
    images: list[str]
    masks: list[str]
    class_values: list[int] | None
    class_names: list[str] | None
    mask_nodata: float | None
    block_size: int
    note: str
    scenes: dict[str, list[str]] = field(default_factory=dict)

    @property
    def by_scene(self) -> bool:
        """Whether the set is split by scene (images[i] and masks[i] are a scene)."""
        return bool(self.scenes)

    def split_by_scene(
        self, fractions: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0
    ) -> None:
        """Deal the scenes to train, validation and test, seeded.

        Validation and test get ``round(fraction * n)`` scenes each (at least
        one), training the rest: 64 scenes give 44 / 10 / 10. The deal depends on
        the scene names only, not on their order on disk.

        Raises:
            ValueError: for fewer than 3 scenes.
        """
        if len(self.images) < 3:
            raise ValueError(f'{self.name}: {len(self.images)} scenes, at least 3')
        stems = [scene_stem(path) for path in self.images]
        order = sorted(range(len(stems)), key=stems.__getitem__)
        rng = np.random.default_rng(seed)
        order = [order[i] for i in rng.permutation(len(order))]
        held = [max(1, round(f * len(order))) for f in fractions[1:]]
        val, test = order[: held[0]], order[held[0] : held[0] + held[1]]
        train = order[held[0] + held[1] :]
        self.scenes = {
            part: sorted(stems[i] for i in indexes)
            for part, indexes in (('train', train), ('val', val), ('test', test))
        }

    def classes(self) -> tuple[list[int], list[str]]:
        """Class values and names: as given, or every mask value but nodata.

        Values are read from every mask (whole files: a set of scenes is small
        enough); a mask's own nodata and :attr:`mask_nodata` are no class.
        """
        if self.class_values is not None:
            names = self.class_names or [str(v) for v in self.class_values]
            return list(self.class_values), names
        found: set[int] = set()
        for path in self.masks:
            with rasterio.open(path) as src:
                values = np.unique(src.read(1))
                nodata = {src.nodata, self.mask_nodata} - {None}
            found |= {int(v) for v in values if v not in nodata}
        values = sorted(found)
        return values, [str(v) for v in values]

    def scene_files(self, part: str) -> list[tuple[str, str]]:
        """(image, mask) files of the scenes of one split."""
        wanted = set(self.scenes[part])
        return [
            (image, mask)
            for image, mask in zip(self.images, self.masks, strict=True)
            if scene_stem(image) in wanted
        ]


def scene_stem(path: str) -> str:
    """A scene's name: its image file name without the extension."""
    return os.path.splitext(os.path.basename(path))[0]


def pair_files(images: str, masks: str) -> list[tuple[str, str]]:
    """Image and mask files of an ``IMAGES:MASKS`` spec, paired.

    Two files are one pair; two folders pair files of equal names; two glob
    patterns pair files whose ``*`` parts are equal.

    Raises:
        ValueError: when nothing matches, an image has no mask, or the two
            patterns have different numbers of ``*``.
    """
    if '*' in images or '*' in masks:
        if images.count('*') != masks.count('*'):
            raise ValueError(f'{images} and {masks} have different numbers of "*"')
        pattern = re.compile(
            '(.*?)'.join(re.escape(part) for part in images.split('*')) + '$'
        )
        pairs = []
        for image in sorted(glob.glob(images)):
            match = pattern.match(image)
            if match is None:
                continue
            mask = ''.join(
                piece + matched
                for piece, matched in zip(
                    masks.split('*'), (*match.groups(), ''), strict=True
                )
            )
            if not os.path.exists(mask):
                raise ValueError(f'{image}: no mask {mask}')
            pairs.append((image, mask))
        if not pairs:
            raise ValueError(f'no file matches {images}')
        return pairs
    if os.path.isdir(images) and os.path.isdir(masks):
        names = sorted(
            f for f in os.listdir(images) if f.lower().endswith(('.tif', '.tiff'))
        )
        for name in names:
            if not os.path.exists(os.path.join(masks, name)):
                raise ValueError(
                    f'{os.path.join(images, name)}: no mask of that name in {masks}'
                )
        if not names:
            raise ValueError(f'{images} holds no GeoTIFF')
        return [(os.path.join(images, n), os.path.join(masks, n)) for n in names]
    return [(images, masks)]


def lay_out_scenes(images: Sequence[str], folder: str, gap: int = 64) -> list[str]:
    """Copy scenes onto one dummy grid, side by side, their pixels unchanged.

    For pretraining on scenes in different CRSs as one mosaic without warping:
    each copy keeps its scene's pixels, band values, nodata and pixel size; only
    its position changes (cells of a square layout in :data:`DUMMY_CRS`, *gap*
    pixels apart). Windows weigh by data and the gaps hold none, so a view is
    cut from one scene's own pixel grid.

    Returns:
        the copies, in the order of *images*.
    """
    os.makedirs(folder, exist_ok=True)
    columns = math.ceil(math.sqrt(len(images)))
    copies = []
    for i, path in enumerate(images):
        copy = os.path.join(folder, os.path.basename(path))
        copies.append(copy)
        if os.path.exists(copy):
            continue
        with rasterio.open(path) as src:
            xres, yres = src.res
            row, col = divmod(i, columns)
            cell = max(src.width, src.height) + gap
            profile = src.profile | {
                'driver': 'GTiff',
                'crs': DUMMY_CRS,
                'transform': from_origin(
                    500000.0 + col * cell * xres,
                    5800000.0 - row * cell * yres,
                    xres,
                    yres,
                ),
                'compress': 'deflate',
            }
            with rasterio.open(copy + '.part.tif', 'w', **profile) as dst:
                dst.write(src.read())
        os.replace(copy + '.part.tif', copy)
    return copies


def write_dummy_grid(
    pairs: Iterable[tuple[np.ndarray, np.ndarray]],
    folder: str,
    res: float,
    gap: int = 64,
) -> tuple[list[str], list[str]]:
    """Write non-georeferenced (image, mask) samples as GeoTIFFs on a dummy grid.

    Sample *i* goes to column *i* of one row, *gap* empty pixels apart, in
    :data:`DUMMY_CRS` from an arbitrary origin: only the samples' own pixels
    are real.

    Returns:
        (image files, mask files).
    """
    os.makedirs(folder, exist_ok=True)
    images, masks = [], []
    x0 = 500000.0
    for i, (image, mask) in enumerate(pairs):
        count, height, width = image.shape
        profile = {
            'driver': 'GTiff',
            'width': width,
            'height': height,
            'crs': DUMMY_CRS,
            'transform': from_origin(x0, 5800000.0, res, res),
            'compress': 'deflate',
        }
        x0 += (width + gap) * res
        image_path = os.path.join(folder, f'image_{i:04d}.tif')
        mask_path = os.path.join(folder, f'mask_{i:04d}.tif')
        with rasterio.open(
            image_path,
            'w',
            count=count,
            dtype=image.dtype,
            photometric='minisblack',
            **profile,
        ) as dst:
            dst.write(image)
        with rasterio.open(
            mask_path, 'w', count=1, dtype='uint8', nodata=255, **profile
        ) as dst:
            dst.write(mask.astype(np.uint8), 1)
        images.append(image_path)
        masks.append(mask_path)
    return images, masks


def nc() -> LabelledSet | str:
    """The NC land-cover pair, or why it is skipped."""
    folder = os.path.join(SHARED, 'nc_landsat7_landcover')
    image = os.path.join(folder, 'lsat7_2000_6band.tif')
    if not os.path.exists(image):
        return f'nc: skipped, {folder} is absent'
    return LabelledSet(
        name='nc',
        images=[image],
        masks=[os.path.join(folder, 'landclass_7class.tif')],
        class_values=[1, 2, 3, 4, 5, 6, 7],
        class_names=[
            'developed',
            'agriculture',
            'herbaceous',
            'shrubland',
            'forest',
            'water',
            'sediment',
        ],
        mask_nodata=0,
        block_size=1,
        note=(
            'NC Landsat-7 (2000; 6 bands uint8, 28.5 m, 489 x 443 px, nodata 0 on a '
            '~15 % border) with the GRASS landclass96 map (7 classes, from a 1996 '
            'classification); images EPSG:32119, labels EPSG:3358 on the same grid.'
        ),
    )


def sen1floods11() -> LabelledSet | str:
    """The Sen1Floods11 chip (Sentinel-2, hand labels), or why it is skipped."""
    folder = os.path.join(SHARED, 'sen1floods11_sample')
    image = os.path.join(folder, 'Spain_7370579_S2Hand.tif')
    if not os.path.exists(image):
        return f'sen1floods11: skipped, {folder} is absent'
    return LabelledSet(
        name='sen1floods11',
        images=[image],
        masks=[os.path.join(folder, 'Spain_7370579_LabelHand.tif')],
        class_values=[0, 1],
        class_names=['land', 'water'],
        mask_nodata=-1,
        block_size=2,
        note=(
            'Sen1Floods11 chip Spain_7370579: Sentinel-2 L1C, 13 bands int16 '
            '(nodata 0), ~10 m in EPSG:4326, 512 x 512 px; hand labels land/water '
            '(-1 nodata).'
        ),
    )


def sparcs() -> LabelledSet | str:
    """The 64 SPARCS scenes, split by scene, or why they are skipped."""
    folder = os.path.join(SHARED, 'sparcs_landsat8')
    if not os.path.isdir(folder):
        return f'sparcs: skipped, {folder} is absent'
    pairs = pair_files(
        os.path.join(folder, '*_img.tif'), os.path.join(folder, '*_lbl.tif')
    )
    data = LabelledSet(
        name='sparcs',
        images=[image for image, _ in pairs],
        masks=[mask for _, mask in pairs],
        class_values=[0, 1, 2, 3, 4, 5, 6],
        class_names=[
            'shadow',
            'shadow over water',
            'water',
            'snow/ice',
            'land',
            'cloud',
            'flooded',
        ],
        mask_nodata=None,
        block_size=1,
        note=(
            'SPARCS (USGS cloud and shadow validation set): 64 Landsat-8 OLI scenes '
            'of 1000 x 1000 px worldwide (2013-2014), each in its own UTM zone (39 '
            'zones), false-colour composite of OLI bands 6-5-4 (3 bands uint8, 30 m); '
            'dense hand-made masks, 7 classes (0 = shadow is a class; no nodata).'
        ),
    )
    data.split_by_scene()
    return data


def zion() -> LabelledSet | str:
    """The Zion Landsat-8 scene with NLCD land cover, or why it is skipped."""
    folder = os.path.join(SHARED, 'zion_landsat8_nlcd')
    image = os.path.join(folder, 'zion_landsat8_B2B3B4B5.tif')
    if not os.path.exists(image):
        return f'zion: skipped, {folder} is absent'
    return LabelledSet(
        name='zion',
        images=[image],
        masks=[os.path.join(folder, 'zion_nlcd8_on_landsat_grid.tif')],
        class_values=[1, 2, 3, 4, 5, 6, 7, 8],
        class_names=[
            'water',
            'developed',
            'barren',
            'forest',
            'shrubland',
            'herbaceous',
            'cultivated',
            'wetlands',
        ],
        mask_nodata=0,
        block_size=2,
        note=(
            'Zion National Park, Landsat-8 OLI LC80380342015230 (B2-B5 uint16, 30 m, '
            'EPSG:32612, 1128 x 1428 px) with NLCD 2011 generalised to 8 classes on '
            'the image grid (0 nodata); forest and shrubland are ~90 % of the pixels.'
        ),
    )


def potsdam(work: str) -> LabelledSet | str:
    """The two Potsdam patches on a dummy grid, or why they are skipped."""
    folder = os.path.join(SHARED, 'potsdam_grsim_notgeoref')
    if not os.path.isdir(folder):
        return f'potsdam: skipped, {folder} is absent'
    names = sorted(f for f in os.listdir(folder) if f.endswith('_RGBIR.tif'))
    pairs = []
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', rasterio.errors.NotGeoreferencedWarning)
        for name in names:
            with rasterio.open(os.path.join(folder, name)) as src:
                image = src.read()
            label = name.replace('_RGBIR.tif', '_label_index.tif')
            with rasterio.open(os.path.join(folder, label)) as src:
                mask = src.read(1)
            pairs.append((image, mask))
    images, masks = write_dummy_grid(
        pairs, os.path.join(work, 'potsdam_dummy_grid'), 0.05
    )
    return LabelledSet(
        name='potsdam',
        images=images,
        masks=masks,
        class_values=[0, 1, 2, 3, 4, 5],
        # ISPRS legend order of the index values (the authors' class_dict.txt
        # permutes the names; the colours, and these names, follow ISPRS).
        class_names=[
            'impervious',
            'building',
            'low vegetation',
            'tree',
            'car',
            'clutter',
        ],
        mask_nodata=255,
        block_size=1,
        note=(
            'Two ISPRS Potsdam 256 x 256 patches (R, G, B, NIR; 5 cm) as shipped with '
            'the GLCNet code: NOT georeferenced, written side by side on a dummy '
            f'{DUMMY_CRS} grid; 255 (unknown colour) ignored. A smoke test only.'
        ),
    )


def image_mask_pair(spec: str) -> LabelledSet | str:
    """``NAME=IMAGES:MASKS``: files, folders or glob patterns; classes from the masks.

    One image and mask are split block-wise inside the image; several scenes
    are split by scene.
    """
    name, _, paths = spec.partition('=')
    # The separator is the last ':' that does not start a URL scheme ('://').
    cut = max(
        i for i, c in enumerate(paths) if c == ':' and not paths.startswith('//', i + 1)
    )
    images, masks = paths[:cut], paths[cut + 1 :]
    if '*' not in images + masks:
        for path in (images, masks):
            if '://' not in path and not os.path.exists(path):
                return f'{name}: skipped, {path} does not exist'
    try:
        pairs = pair_files(images, masks)
    except ValueError as error:
        return f'{name}: skipped, {error}'
    scenes = f'{len(pairs)} scenes, split by scene' if len(pairs) > 1 else 'one scene'
    data = LabelledSet(
        name=name,
        images=[image for image, _ in pairs],
        masks=[mask for _, mask in pairs],
        class_values=None,
        class_names=None,
        mask_nodata=None,
        block_size=2,
        note=f'{name}: images {images}, masks {masks} ({scenes}; classes: the mask '
        'values).',
    )
    if len(pairs) > 1:
        try:
            data.split_by_scene()
        except ValueError as error:
            return f'{name}: skipped, {error}'
    return data


def torchgeo_set(spec: str, work: str, samples: int) -> LabelledSet | str:
    """A TorchGeo non-geo segmentation data set on disk, on a dummy grid."""
    name, _, root = spec.removeprefix('torchgeo:').partition('=')
    if not os.path.isdir(root):
        return f'{spec}: skipped, {root!r} is not a folder'
    cls = getattr(importlib.import_module('torchgeo.datasets'), name, None)
    if cls is None:
        return f'{spec}: skipped, torchgeo.datasets has no {name}'
    pairs = []
    for split in ('train', 'test'):
        try:
            dataset = cls(root=root, split=split)
        except Exception as error:
            return f'{spec}: skipped, {name}(split={split!r}) failed: {error}'
        for i in range(min(samples, len(dataset))):
            sample = dataset[i]
            pairs.append((sample['image'].numpy(), sample['mask'].numpy()))
    classes = [str(c) for c in getattr(cls, 'classes', [])]
    images, masks = write_dummy_grid(
        pairs, os.path.join(work, f'{name}_dummy_grid'), 1.0
    )
    return LabelledSet(
        name=name.lower(),
        images=images,
        masks=masks,
        class_values=list(range(len(classes))) if classes else None,
        class_names=classes or None,
        mask_nodata=255,
        block_size=2,
        note=(
            f'TorchGeo {name} from {root}: the first {samples} samples of its train '
            f'and test splits on a dummy {DUMMY_CRS} grid, re-split block-wise '
            '(not run on this machine: no copy here).'
        ),
    )


def resolve(spec: str, work: str, torchgeo_samples: int) -> LabelledSet | str:
    """A data set from its command-line spec, or a line saying why it is skipped."""
    if spec == 'nc':
        return nc()
    if spec == 'sen1floods11':
        return sen1floods11()
    if spec == 'sparcs':
        return sparcs()
    if spec == 'zion':
        return zion()
    if spec == 'potsdam':
        return potsdam(work)
    if spec.startswith('torchgeo:'):
        return torchgeo_set(spec, work, torchgeo_samples)
    if '=' in spec and ':' in spec.partition('=')[2]:
        return image_mask_pair(spec)
    raise ValueError(
        f'unknown data set {spec!r}: use nc, sen1floods11, sparcs, zion, potsdam, '
        'NAME=IMAGES:MASKS or torchgeo:<Dataset>=<root>'
    )
