"""Fine-tuning data: images and class masks, split into disjoint areas, with a budget.

:class:`SegmentationDataModule` wires a :class:`~glcgeo.datasets.GeoTiffMosaic` of
images and a :class:`~glcgeo.datasets.GeoTiffMask` of class masks, the spatial
split and label budget of :mod:`glcgeo.splits`, and
:class:`~glcgeo.samplers.TileSampler`, for TorchGeo's
:class:`~torchgeo.tasks.SemanticSegmentation` and :func:`glcgeo.finetune.finetune`.
"""

import dataclasses
import warnings
from collections.abc import Sequence
from typing import Annotated

import kornia.augmentation as K
import torch
from rasterio.crs import CRS
from rasterio.errors import CRSError
from torch import Tensor, nn
from torchgeo.datamodules import GeoDataModule
from torchgeo.datasets import IntersectionDataset
from torchgeo.datasets.utils import Sample, merge_samples

from ..arguments import (
    CRSName,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Range,
    check_arguments,
)
from ..checkpoints import BandMetadata
from ..collection import GeoTiffCollection, open_mosaic
from ..crs import crs_name, transformable, untransformable_error
from ..datasets import GeoTiffMask, GeoTiffMosaic
from ..errors import GlcgeoError
from ..geometry import PixelGrid
from ..rasters import read_header
from ..samplers import TileSampler
from ..sources import expand as expand_paths
from ..splits import TileIndex, TileSplit, draw_label_tiles, split_tiles
from ..stats import BandStats, resolve_band_stats
from ..transforms import normalize_bands

__all__ = ['MaskEncoder', 'SegmentationDataModule']


class MaskEncoder:
    """Turn raw mask values into class ids 0..K-1; everything else is ignored.

    Pixels whose value is not a class (nodata, unknown colours, unlabelled) get
    *ignore_index*, as do pixels where the image has no data (a sample's
    ``valid`` entry, when present), so they count neither in the loss nor in
    the scores.

    .. versionadded:: 0.1
    """

    def __init__(self, class_values: Sequence[int], ignore_index: int = 255) -> None:
        """Initialize a new MaskEncoder.

        Args:
            class_values: the raw mask value of each class, in class order.
            ignore_index: the id given to pixels that are not a class.

        Raises:
            GlcgeoError: for repeated class values or an *ignore_index* that is
                also a class id.

        """
        if len(set(class_values)) != len(class_values):
            raise GlcgeoError(f'class values repeat: {list(class_values)}')
        if 0 <= ignore_index < len(class_values):
            raise GlcgeoError(
                f'ignore index {ignore_index} is also a class id '
                f'(0..{len(class_values) - 1})'
            )
        self.class_values = [int(v) for v in class_values]
        self.ignore_index = ignore_index

    def encode(self, raw: Tensor) -> Tensor:
        """Map raw mask values to class ids.

        Args:
            raw: mask of raw values, any shape, integer dtype.

        Returns:
            int64 class ids of the same shape, *ignore_index* where not a class.

        """
        ids = torch.full(raw.shape, self.ignore_index, dtype=torch.long)
        for class_id, value in enumerate(self.class_values):
            ids[raw == value] = class_id
        return ids

    def __call__(self, sample: Sample) -> Sample:
        """Encode ``mask``, ignoring unlabelled pixels and pixels without image.

        Args:
            sample: a sample with ``mask``, optionally ``labelled`` ([H, W] bool,
                True on a mask file's value that is not nodata, as
                :class:`~glcgeo.datasets.GeoTiffMask` reads it; removed) and
                ``valid`` ([H, W] bool, True where the image holds data; kept,
                for normalisation).

        Returns:
            the sample with ``mask`` as class ids.

        """
        mask = self.encode(sample['mask'])
        for key in ('labelled', 'valid'):
            known = sample.get(key)
            if known is not None:
                mask[~known] = self.ignore_index
        sample.pop('labelled', None)
        sample['mask'] = mask
        return sample


class _MarkImageValid:
    """Record where the image holds data, for :class:`MaskEncoder` to ignore.

    Pixels between image files read as the fill value (0 without nodata), which
    is no data either.
    """

    def __init__(self, images: GeoTiffMosaic) -> None:
        self.images = images

    def __call__(self, sample: Sample) -> Sample:
        xmin, xmax, xres, ymin, ymax, yres = sample['bounds'].tolist()
        on_files = self.images.on_files(xmin, ymin, xmax, ymax, (xres, yres))
        sample['valid'] = self.images.valid_mask(sample['image']) & on_files
        return sample


#: What a mask in a CRS that cannot be transformed needs, for errors.
ON_GRIDS = (
    " (such a mask is read in the images' CRS only on the exact grid of an image: "
    'same transform and size)'
)


def _on_image_grids(mask_files: list[str], images: GeoTiffMosaic) -> dict[str, CRS]:
    """Masks whose CRS cannot be transformed to the images', on an image's grid.

    A mask and its image on the same pixel grid, one in a local (engineering)
    CRS such as FLAIR-2's masks beside EPSG:2154 images, hold the same ground
    pixel for pixel: such a mask is read in the images' CRS, with a warning.

    Args:
        mask_files: the mask files.
        images: the images.

    Returns:
        each mask to read in the images' CRS, with that CRS.

    Raises:
        GlcgeoError: naming the first mask whose CRS cannot be transformed and
            that lies on the exact grid (transform and size) of no image file in
            the images' CRS.
    """
    target = CRS.from_user_input(images.crs)
    grids = {}
    for path in images.files:
        header = read_header(path, crs_given=True)
        if header.crs == target:
            grids[(header.transform, header.width, header.height)] = path
    read_as = {}
    for path in mask_files:
        header = read_header(path, crs_given=True)
        if header.crs is None or transformable(header.crs, target):
            continue
        image = grids.get((header.transform, header.width, header.height))
        if image is None:
            raise untransformable_error([path], target, ON_GRIDS)
        warnings.warn(
            f'{path}: its CRS, {crs_name(header.crs)}, cannot be transformed to '
            f"the images' {crs_name(target)}; the mask lies on the exact grid of "
            f"{image}, so it is read in the images' CRS",
            UserWarning,
            stacklevel=2,
        )
        read_as[path] = target
    if not read_as:
        raise untransformable_error(mask_files, target, ON_GRIDS)
    return read_as


class SegmentationDataModule(GeoDataModule):
    """Images and class masks, split into disjoint areas, with a label budget.

    Images are a :class:`~glcgeo.datasets.GeoTiffMosaic` and masks a
    :class:`~glcgeo.datasets.GeoTiffMask`, combined with TorchGeo's ``&``
    (:class:`~torchgeo.datasets.IntersectionDataset`), which warps the masks onto
    the images' CRS and resolution (nearest neighbour). The area is cut into
    *patch_size* tiles dealt block-wise to train/val/test by
    :func:`~glcgeo.splits.split_tiles` (seed *split_seed*, the same for every run
    that shares the evaluation area), and the label budget is drawn from the
    training tiles by :func:`~glcgeo.splits.draw_label_tiles` (seed *seed*).
    Training draws *length* labelled tiles per epoch with random flips and
    90-degree rotations; validation and test read each of their tiles once.
    Images are normalised on the device with per-band statistics of raw values
    (:class:`~glcgeo.stats.BandStats`), their nodata pixels set to 0
    (:func:`~glcgeo.transforms.normalize_bands`).

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        images: str | list[str],
        masks: str | list[str],
        bands: list[int | str] | None = None,
        crs: CRSName | None = None,
        res: PositiveFloat | None = None,
        nodata: float | None = None,
        mask_nodata: float | None = None,
        class_values: list[int] | None = None,
        class_names: list[str] | None = None,
        ignore_index: NonNegativeInt = 255,
        patch_size: PositiveInt = 256,
        block_size: PositiveInt = 4,
        split: Annotated[
            tuple[float, float, float], Range(0, 1, low_open=True, high_open=True)
        ] = (0.6, 0.2, 0.2),
        split_seed: NonNegativeInt = 0,
        min_labelled: Annotated[float, Range(0, 1)] = 0.5,
        label_fraction: Annotated[float, Range(0, 1, low_open=True)] | None = None,
        num_label_patches: PositiveInt | None = None,
        seed: NonNegativeInt = 0,
        batch_size: PositiveInt = 16,
        eval_batch_size: PositiveInt = 64,
        length: PositiveInt | None = None,
        stats: str | BandStats | None = None,
        augment: bool = True,
        num_workers: NonNegativeInt = 0,
    ) -> None:
        """Initialize a new SegmentationDataModule.

        Args:
            images: GeoTIFF files, folders or glob patterns of the images.
            masks: GeoTIFF files, folders or glob patterns of the class masks (any
                CRS; warped onto the images' grid).
            bands: 1-based band indexes or names of the images (defaults to all).
            crs: CRS to work in (defaults to the images' own; images in
                several CRSs need one).
            res: pixel size in CRS units (defaults to the first image's).
            nodata: image nodata value overriding the files' own.
            mask_nodata: mask nodata value overriding the files' own.
            class_values: raw mask value of each class, in class order (defaults to
                every value found except the mask nodata).
            class_names: one name per class (defaults to the raw values).
            ignore_index: class id of pixels left out of loss and scores.
            patch_size: side of a tile, in pixels.
            block_size: side of a split block, in tiles.
            split: shares of blocks for train, validation and test.
            split_seed: seed of the block deal.
            min_labelled: smallest fraction of labelled pixels for a tile to be used.
            label_fraction: share of the training tiles that are labelled.
            num_label_patches: number of labelled training tiles instead.
            seed: seed of the label draw and of the training order.
            batch_size: training tiles per batch.
            eval_batch_size: validation and test tiles per batch (evaluation
                needs no gradients: large batches are cheaper per tile).
            length: training tiles per epoch (defaults to the number of labelled
                tiles; at least one batch).
            stats: band statistics (a :class:`~glcgeo.stats.BandStats` or its JSON
                file); computed from the images when None.
            augment: random flips and 90-degree rotations of training tiles.
            num_workers: data loader worker processes.

        Raises:
            SettingError: naming an argument out of range (see the annotations).

        """
        check_arguments(SegmentationDataModule.__init__, locals())
        super().__init__(
            GeoTiffMosaic,
            batch_size=batch_size,
            patch_size=patch_size,
            length=length,
            num_workers=num_workers,
        )
        # The task records the resolved bands and class names; Lightning refuses
        # to log a data module and a task whose hyperparameters differ.
        self.save_hyperparameters(ignore=['stats', 'bands', 'class_names'])
        self.val_batch_size = self.test_batch_size = eval_batch_size
        self.bands = bands
        self.given_class_names = class_names
        self.stats_source = stats
        self.band_stats: BandStats | None = None
        self.tile_split: TileSplit | None = None
        self.label_tiles: list[TileIndex] = []
        self.encoder: MaskEncoder | None = None

    def setup(self, stage: str) -> None:
        """Build the datasets, the split, the label draw and the samplers (once).

        Args:
            stage: Lightning stage ('fit', 'validate', 'test'); all are prepared.

        Raises:
            GlcgeoError: for unreadable inputs, no overlap of images and masks, or
                a split or budget that does not fit the data.

        """
        if self.tile_split is not None:
            return
        hp = self.hparams
        image_files = expand_paths(hp['images'], self.bands)
        images = open_mosaic(
            GeoTiffMosaic,
            image_files,
            bands=self.bands,
            crs=hp['crs'],
            res=hp['res'],
            nodata=hp['nodata'],
        )
        if isinstance(images, GeoTiffCollection):
            # Tiles, splits and masks are cut on one grid.
            raise GlcgeoError(
                f'the images are in {len(images.groups)} CRSs; fine-tuning reads '
                'one grid: give --crs (and --res) to reproject them onto one, or '
                'fine-tune on the images of one CRS',
                images.files[0],
            )
        # Warped onto the images' grid from the start (nearest neighbour).
        mask_files = expand_paths(hp['masks'])
        try:
            masks = GeoTiffMask(
                mask_files, crs=images.crs, res=images.res, nodata=hp['mask_nodata']
            )
        except CRSError:
            masks = GeoTiffMask(
                mask_files,
                crs=images.crs,
                res=images.res,
                nodata=hp['mask_nodata'],
                read_as=_on_image_grids(mask_files, images),
            )
        try:
            dataset = IntersectionDataset(
                images, masks, spatial_only=True, collate_fn=merge_samples
            )
        except RuntimeError:
            raise GlcgeoError(
                'the masks do not overlap the images', masks.files[0]
            ) from None
        grid, size = self._tiled_area(images, dataset)
        split = split_tiles(
            masks,
            grid,
            size,
            tile_size=hp['patch_size'],
            block_size=hp['block_size'],
            fractions=hp['split'],
            min_labelled=hp['min_labelled'],
            class_values=hp['class_values'],
            generator=torch.Generator().manual_seed(hp['split_seed']),
            images=images,
        )
        if len(split.class_values) < 2:
            # A segmentation needs two classes; a mask may hold one of them only.
            held = (
                'one class value is given'
                if hp['class_values']
                else ('the masks hold one class')
            )
            raise GlcgeoError(
                f'{held} (value {split.class_values[0]}) over the images: give the '
                'values of every class, at least two, with --class-values '
                '(class_values= in Python)',
                masks.files[0],
            )
        names = self.given_class_names or [str(v) for v in split.class_values]
        if len(names) != len(split.class_values):
            raise GlcgeoError(
                f'{len(names)} class names for {len(split.class_values)} classes '
                f'(values {split.class_values})'
            )
        self.class_names = list(names)
        self.encoder = MaskEncoder(split.class_values, hp['ignore_index'])
        images.transforms = _MarkImageValid(images)
        dataset.transforms = self.encoder
        generator = torch.Generator().manual_seed(hp['seed'])
        self.label_tiles = draw_label_tiles(
            split.tiles['train'],
            hp['label_fraction'],
            hp['num_label_patches'],
            generator=generator,
        )
        for name in ('val', 'test'):
            if not split.tiles[name]:
                raise GlcgeoError(f'no {name} tile holds labels; use a smaller split')
        self.tile_split = split
        self.band_stats = resolve_band_stats(
            self.stats_source, images, 'the images have'
        )
        self.mean = torch.tensor(self.band_stats.mean)
        self.std = torch.tensor(self.band_stats.std)
        # Normalised in on_after_batch_transfer: validation and test batches
        # need nothing more.
        self.aug = nn.Identity()
        if hp['augment']:
            self.train_aug = K.AugmentationSequential(
                K.RandomHorizontalFlip(),
                K.RandomVerticalFlip(),
                K.RandomRotation90(times=(0, 3)),
                data_keys=None,
                keepdim=True,
            )
        self.dataset = dataset
        # Whole batches only (the last partial one is dropped): at least one.
        length = max(hp['length'] or len(self.label_tiles), hp['batch_size'])
        self.train_sampler = TileSampler(
            dataset,
            [split.query(t) for t in self.label_tiles],
            length=length,
            generator=generator,
        )
        self.val_sampler = TileSampler(
            dataset, [split.query(t) for t in split.tiles['val']]
        )
        self.test_sampler = TileSampler(
            dataset, [split.query(t) for t in split.tiles['test']]
        )

    def on_after_batch_transfer(self, batch: Sample, dataloader_idx: int) -> Sample:
        """Normalise the images on the device, then augment training batches.

        Args:
            batch: ``image`` [B, C, H, W] raw values, ``valid`` [B, H, W] (True
                where the image holds data; removed), ``mask`` and the rest.
            dataloader_idx: index of the data loader.

        Returns:
            the batch with ``image`` normalised by
            :func:`~glcgeo.transforms.normalize_bands` (0 where there is no data),
            flipped and rotated when training with *augment*.
        """
        batch['image'] = normalize_bands(
            batch['image'], self.mean, self.std, batch.pop('valid')
        )
        return super().on_after_batch_transfer(batch, dataloader_idx)

    @staticmethod
    def _tiled_area(
        images: GeoTiffMosaic, dataset: IntersectionDataset
    ) -> tuple[PixelGrid, tuple[int, int]]:
        """The images' pixel grid over the overlap of images and masks.

        Returns:
            (grid with its origin at the overlap's top-left, snapped to the image
            pixels; (width, height) of the overlap in whole image pixels:
            :meth:`PixelGrid.inner_window
            <glcgeo.geometry.PixelGrid.inner_window>`).
        """
        image_grid = images.grid
        x, y, _ = dataset.bounds
        window = image_grid.inner_window(x.start, y.start, x.stop, y.stop)
        x0, y0 = image_grid.to_map(window.col_off, window.row_off)
        grid = PixelGrid(x0=x0, y0=y0, res=image_grid.res)
        return grid, (int(window.width), int(window.height))

    @property
    def num_bands(self) -> int:
        """Number of image bands (after :meth:`setup`)."""
        assert self.band_stats is not None
        return len(self.band_stats.mean)

    @property
    def band_metadata(self) -> BandMetadata:
        """The image bands read and their statistics, as checkpoints keep them.

        Without ``bands`` every band is read, and the checkpoint says so (None):
        a scene is then read whole and must have as many bands.
        """
        assert self.band_stats is not None
        assert isinstance(self.dataset, IntersectionDataset)
        images = self.dataset.datasets[0]
        assert isinstance(images, GeoTiffMosaic)
        return dataclasses.replace(
            self.band_stats.metadata(self.band_indexes),
            bands=None if self.bands is None else tuple(self.band_indexes),
            band_dtype=images.source_dtype,
        )

    @property
    def band_indexes(self) -> list[int]:
        """1-based band indexes of the image files that are read."""
        assert isinstance(self.dataset, IntersectionDataset)
        images = self.dataset.datasets[0]
        assert isinstance(images, GeoTiffMosaic)
        return list(images.band_indexes_selected)
