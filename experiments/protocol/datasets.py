"""Labelled data sets of the protocol, from names or ``NAME=IMAGES:MASKS`` specs.

* ``nc``: the NC Landsat-7 land-cover pair of ``../shared/data`` (6 bands,
  28.5 m, 7 classes; image nodata 0 on a ~15 % border; labels in EPSG:3358 on
  the image's EPSG:32119 grid);
* ``sen1floods11``: the Sen1Floods11 chip of ``../shared/data`` (Sentinel-2,
  13 bands int16, EPSG:4326; hand labels land/water, -1 nodata);
* ``potsdam``: the two ISPRS Potsdam patches of ``../shared/data``, NOT
  georeferenced: written side by side on a dummy grid (a smoke test);
* ``NAME=IMAGES.tif:MASKS.tif``: any image/mask GeoTIFF pair (any band count;
  classes are the mask's values, its nodata ignored);
* ``torchgeo:<Dataset>=<root>``: a TorchGeo non-geo segmentation data set on
  disk (e.g. ``torchgeo:Potsdam2D=/data/potsdam``), on a dummy grid.

Pretraining uses each data set's own images without their labels.
"""

import importlib
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

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
        block_size: side of a split block, in tiles.
        note: provenance and caveats, printed in the results.
    """

    name: str
    images: list[str]
    masks: list[str]
    class_values: list[int] | None
    class_names: list[str] | None
    mask_nodata: float | None
    block_size: int
    note: str


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
    """``NAME=IMAGES.tif:MASKS.tif``: any image/mask pair; classes from the mask."""
    name, _, paths = spec.partition('=')
    # The separator is the last ':' that does not start a URL scheme ('://').
    cut = max(
        i for i, c in enumerate(paths) if c == ':' and not paths.startswith('//', i + 1)
    )
    images, masks = paths[:cut], paths[cut + 1 :]
    for path in (images, masks):
        if '://' not in path and not os.path.exists(path):
            return f'{name}: skipped, {path} does not exist'
    return LabelledSet(
        name=name,
        images=[images],
        masks=[masks],
        class_values=None,
        class_names=None,
        mask_nodata=None,
        block_size=2,
        note=f'{name}: images {images}, masks {masks} (classes: the mask values).',
    )


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
    if spec == 'potsdam':
        return potsdam(work)
    if spec.startswith('torchgeo:'):
        return torchgeo_set(spec, work, torchgeo_samples)
    if '=' in spec and ':' in spec.partition('=')[2]:
        return image_mask_pair(spec)
    raise ValueError(
        f'unknown data set {spec!r}: use nc, sen1floods11, potsdam, '
        'NAME=IMAGES.tif:MASKS.tif or torchgeo:<Dataset>=<root>'
    )
