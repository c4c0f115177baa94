"""Labelled mosaics for fine-tuning: masks, spatial splits and label budgets.

* :class:`GeoTiffMask` reads class masks (any CRS: they are warped with nearest
  neighbour onto the images' grid when combined with TorchGeo's ``&``).
* :func:`split_tiles` cuts the labelled area into square tiles, groups them into
  blocks and deals whole blocks to train, validation and test with a seeded
  generator, so no training tile touches the evaluation area.
* :func:`draw_label_tiles` draws a label budget (a fraction or a count of tiles)
  from the training tiles only, reproducibly.
* :class:`SegmentationDataModule` wires them for TorchGeo's
  :class:`~torchgeo.tasks.SemanticSegmentation` and :class:`~glcgeo.finetune`.

Why not TorchGeo's ``random_grid_cell_assignment``: it grids each *file* separately,
so two overlapping files give overlapping cells that may land in different splits.
Here one grid covers the whole mosaic, aligned to its pixels.
"""

import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import kornia.augmentation as K
import numpy as np
import torch
from pyproj import CRS as PROJ_CRS
from rasterio.windows import Window
from torch import Generator, Tensor, nn
from torchgeo.datamodules import GeoDataModule
from torchgeo.datasets import IntersectionDataset
from torchgeo.datasets.utils import GeoSlice, Sample, merge_samples
from torchgeo.samplers import GeoSampler

from .datasets import GeoTiffMosaic
from .errors import GlcgeoError
from .geometry import PixelGrid
from .stats import BandStats, compute_band_stats
from .transforms import normalize_bands

__all__ = [
    'SPLITS',
    'GeoTiffMask',
    'MaskEncoder',
    'SegmentationDataModule',
    'TileSampler',
    'TileSplit',
    'draw_label_tiles',
    'split_tiles',
]

#: Names of the three spatially disjoint parts of a labelled mosaic.
SPLITS = ('train', 'val', 'test')

#: A tile of a :class:`TileSplit`: (row, col) in tiles from the top-left.
TileIndex = tuple[int, int]


class GeoTiffMask(GeoTiffMosaic):
    """Class masks in GeoTIFFs: one band of integer class values.

    Samples hold ``mask`` [H, W] int64 instead of ``image``. Resampling is nearest
    neighbour (TorchGeo's choice for integer data), so class values are never
    blended. Areas outside the files read as the nodata value.

    .. versionadded:: 0.1
    """

    is_image = False

    def __init__(
        self,
        paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
        band: int = 1,
        crs: PROJ_CRS | str | int | None = None,
        res: float | tuple[float, float] | None = None,
        nodata: float | None = None,
        transforms: Callable[[Sample], Sample] | None = None,
    ) -> None:
        """Initialize a new GeoTiffMask.

        Args:
            paths: files, folders or glob patterns of the masks.
            band: 1-based band holding the class values.
            crs: CRS to reproject to (defaults to the first file's).
            res: pixel size in units of *crs* (defaults to the first file's).
            nodata: value of unlabelled pixels overriding the files' own.
            transforms: a function applied to each sample.

        """
        super().__init__(
            paths, bands=[band], crs=crs, res=res, nodata=nodata, transforms=transforms
        )


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
        """Encode ``mask`` of a sample, ignoring pixels without image data.

        Args:
            sample: a sample with ``mask`` (and optionally ``valid``: [H, W] bool,
                True where the image holds data; it is kept, for normalisation).

        Returns:
            the sample with ``mask`` as class ids.

        """
        mask = self.encode(sample['mask'])
        valid = sample.get('valid')
        if valid is not None:
            mask[~valid] = self.ignore_index
        sample['mask'] = mask
        return sample


@dataclass(frozen=True)
class TileSplit:
    """Square tiles of a labelled mosaic dealt, block by block, to three splits.

    The tile grid starts at :attr:`grid`'s origin; tile (row, col) covers pixels
    ``row * tile_size`` to ``(row + 1) * tile_size`` of that grid (likewise for
    columns). A block is ``block_size`` x ``block_size`` tiles; every tile of a
    block is in the block's split, so tiles of different splits never overlap and
    only touch along block edges.

    Attributes:
        grid: pixel grid of the mosaic (origin at the top-left of the tiles, in
            the mosaic's CRS).
        tile_size: side of a tile, in pixels.
        block_size: side of a block, in tiles.
        tiles: for each split name, its tiles holding enough labels, sorted.
        labelled: fraction of labelled pixels in each kept tile.
        class_values: raw mask values found in the tiles (or given), sorted.

    """

    grid: PixelGrid
    tile_size: int
    block_size: int
    tiles: dict[str, list[TileIndex]]
    labelled: dict[TileIndex, float] = field(repr=False)
    class_values: list[int]

    def block_of(self, tile: TileIndex) -> TileIndex:
        """The (row, col) of the block holding *tile*.

        Args:
            tile: (row, col) of a tile.

        Returns:
            (row, col) of its block, in blocks.

        """
        return tile[0] // self.block_size, tile[1] // self.block_size

    def bounds(self, tile: TileIndex) -> tuple[float, float, float, float]:
        """The ground extent of a tile.

        Args:
            tile: (row, col) of a tile.

        Returns:
            (xmin, ymin, xmax, ymax) in the mosaic's CRS.

        """
        row, col = tile
        size = self.tile_size
        return self.grid.window_bounds(Window(col * size, row * size, size, size))

    def query(self, tile: TileIndex) -> GeoSlice:
        """The TorchGeo query that reads a tile at the grid's resolution.

        Args:
            tile: (row, col) of a tile.

        Returns:
            ``(slice(xmin, xmax, xres), slice(ymin, ymax, yres))``.

        """
        xmin, ymin, xmax, ymax = self.bounds(tile)
        xres, yres = self.grid.res
        return slice(xmin, xmax, xres), slice(ymin, ymax, yres)


def _split_counts(fractions: Sequence[float], total: int) -> list[int]:
    """Whole numbers of blocks per split, each at least one, summing to *total*.

    Raises:
        GlcgeoError: if there are fewer blocks than splits.
    """
    if total < len(fractions):
        raise GlcgeoError(
            f'only {total} block(s) hold labels, {len(fractions)} are needed (one '
            'per split): use a smaller --block-size or --patch-size'
        )
    counts = [max(1, math.floor(f * total)) for f in fractions]
    # Hand out what rounding left, largest remainder first; never below one.
    while sum(counts) < total:
        remainders = [f * total - c for f, c in zip(fractions, counts, strict=True)]
        counts[int(np.argmax(remainders))] += 1
    while sum(counts) > total:
        counts[int(np.argmax(counts))] -= 1
    return counts


def split_tiles(
    masks: GeoTiffMask,
    grid: PixelGrid,
    size: tuple[int, int],
    tile_size: int,
    block_size: int = 4,
    fractions: Sequence[float] = (0.6, 0.2, 0.2),
    min_labelled: float = 0.5,
    class_values: Sequence[int] | None = None,
    generator: Generator | None = None,
) -> TileSplit:
    """Cut the labelled area into tiles and deal whole blocks of them to splits.

    The mask is read once, block by block, to find each tile's labelled fraction;
    tiles below *min_labelled* are dropped, and blocks without any kept tile take
    no part in the draw. Blocks are dealt in the order of a seeded permutation:
    the first ``fractions[0]`` of them to train, and so on, at least one each.

    Args:
        masks: the masks, in the CRS and resolution of *grid*.
        grid: the pixel grid to tile (origin at the top-left of the area).
        size: (width, height) of the area, in pixels of *grid*.
        tile_size: side of a tile, in pixels.
        block_size: side of a block, in tiles.
        fractions: shares of blocks for train, validation and test.
        min_labelled: smallest fraction of class pixels for a tile to be used.
        class_values: raw values that are classes (defaults to every value found
            except the masks' nodata).
        generator: random generator of the block deal (defaults to seed 0).

    Returns:
        the split.

    Raises:
        GlcgeoError: for bad fractions or sizes, or too few labelled blocks.

    """
    if len(fractions) != len(SPLITS) or any(f <= 0 for f in fractions):
        raise GlcgeoError(
            f'split fractions must be three positive numbers, got {list(fractions)}'
        )
    if not math.isclose(sum(fractions), 1.0):
        raise GlcgeoError(f'split fractions must sum to 1, got {list(fractions)}')
    if tile_size < 1 or block_size < 1:
        raise GlcgeoError(f'bad tile size {tile_size} or block size {block_size}')
    columns, rows = size[0] // tile_size, size[1] // tile_size
    if columns == 0 or rows == 0:
        raise GlcgeoError(
            f'the labelled area ({size[0]} x {size[1]} pixels) is smaller than one '
            f'{tile_size}-pixel tile',
            masks.files[0],
        )
    generator = generator or torch.Generator().manual_seed(0)
    nodata = masks.file_nodata
    span = tile_size * block_size
    raw_blocks: dict[TileIndex, np.ndarray] = {}
    for block_row in range(math.ceil(rows / block_size)):
        for block_col in range(math.ceil(columns / block_size)):
            # Read whole blocks (clipped to the tiled area): one read per block.
            width = min(span, (columns - block_col * block_size) * tile_size)
            height = min(span, (rows - block_row * block_size) * tile_size)
            block = Window(block_col * span, block_row * span, width, height)
            xmin, ymin, xmax, ymax = grid.window_bounds(block)
            query = (slice(xmin, xmax, grid.res[0]), slice(ymin, ymax, grid.res[1]))
            try:
                raw = masks[query]['mask'].numpy()
            except IndexError:
                continue  # a block outside every mask file
            raw_blocks[(block_row, block_col)] = raw
    if class_values is None:
        found = set()
        for raw in raw_blocks.values():
            found.update(np.unique(raw).tolist())
        found.discard(nodata)
        class_values = sorted(int(v) for v in found)
    labelled: dict[TileIndex, float] = {}
    for (block_row, block_col), raw in raw_blocks.items():
        is_class = np.isin(raw, class_values)
        for r in range(raw.shape[0] // tile_size):
            for c in range(raw.shape[1] // tile_size):
                part = is_class[
                    r * tile_size : (r + 1) * tile_size,
                    c * tile_size : (c + 1) * tile_size,
                ]
                fraction = float(part.mean())
                if fraction >= min_labelled and fraction > 0:
                    tile = (block_row * block_size + r, block_col * block_size + c)
                    labelled[tile] = fraction
    blocks = sorted({(r // block_size, c // block_size) for r, c in labelled})
    counts = _split_counts(fractions, len(blocks))
    order = torch.randperm(len(blocks), generator=generator).tolist()
    split_of_block: dict[TileIndex, str] = {}
    start = 0
    for name, count in zip(SPLITS, counts, strict=True):
        for i in order[start : start + count]:
            split_of_block[blocks[i]] = name
        start += count
    tiles: dict[str, list[TileIndex]] = {name: [] for name in SPLITS}
    for tile in sorted(labelled):
        tiles[split_of_block[(tile[0] // block_size, tile[1] // block_size)]].append(
            tile
        )
    return TileSplit(
        grid=grid,
        tile_size=tile_size,
        block_size=block_size,
        tiles=tiles,
        labelled=labelled,
        class_values=list(class_values),
    )


def draw_label_tiles(
    tiles: Sequence[TileIndex],
    label_fraction: float | None = None,
    num_label_patches: int | None = None,
    generator: Generator | None = None,
) -> list[TileIndex]:
    """Draw the labelled tiles of a budget from the training tiles.

    The tiles are put in the order of a seeded permutation and the budget takes
    the first ones, so with one seed a smaller budget is a subset of a larger one
    (1% within 5% within 100%): budgets differ by labels only, not by luck.

    Args:
        tiles: the training tiles to draw from.
        label_fraction: share of *tiles* to label, in (0, 1]; at least one tile.
        num_label_patches: number of tiles to label (instead of a fraction).
        generator: random generator (defaults to seed 0).

    Returns:
        the drawn tiles, in draw order.

    Raises:
        GlcgeoError: for both or a bad budget, or more tiles than there are.

    """
    if label_fraction is not None and num_label_patches is not None:
        raise GlcgeoError('give a label fraction or a number of labelled patches')
    if label_fraction is None and num_label_patches is None:
        label_fraction = 1.0
    if num_label_patches is None:
        assert label_fraction is not None
        if not 0 < label_fraction <= 1:
            raise GlcgeoError(f'label fraction must be in (0, 1], got {label_fraction}')
        count = max(1, round(label_fraction * len(tiles)))
    else:
        count = num_label_patches
        if not 1 <= count <= len(tiles):
            raise GlcgeoError(
                f'{count} labelled patches asked for, the training area has '
                f'{len(tiles)}'
            )
    generator = generator or torch.Generator().manual_seed(0)
    order = torch.randperm(len(tiles), generator=generator).tolist()
    return [tiles[i] for i in order[:count]]


class TileSampler(GeoSampler):
    """Yield the TorchGeo queries of a fixed list of tiles.

    In order (evaluation), or, with *length*, that many draws per epoch from
    successive seeded permutations of the tiles (training): every tile is seen
    equally often, whatever the number of tiles.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        queries: Sequence[GeoSlice],
        length: int | None = None,
        generator: Generator | None = None,
    ) -> None:
        """Initialize a new TileSampler.

        Args:
            queries: one TorchGeo query per tile.
            length: draws per epoch; None yields each query once, in order.
            generator: random generator of the draws (defaults to seed 0).

        """
        self.queries = list(queries)
        self.length = length
        self.generator = generator or torch.Generator().manual_seed(0)

    def __iter__(self) -> Iterator[GeoSlice]:
        """Yield the queries of one epoch.

        Yields:
            ``(slice(xmin, xmax, xres), slice(ymin, ymax, yres))`` queries.

        """
        if self.length is None:
            yield from self.queries
            return
        drawn = 0
        while drawn < self.length:
            for i in torch.randperm(len(self.queries), generator=self.generator):
                if drawn == self.length:
                    return
                yield self.queries[int(i)]
                drawn += 1

    def __len__(self) -> int:
        """Number of queries per epoch."""
        return len(self.queries) if self.length is None else self.length


class _MarkImageValid:
    """Record where the image holds data, for :class:`MaskEncoder` to ignore."""

    def __init__(self, images: GeoTiffMosaic) -> None:
        self.images = images

    def __call__(self, sample: Sample) -> Sample:
        sample['valid'] = self.images.valid_mask(sample['image'])
        return sample


class SegmentationDataModule(GeoDataModule):
    """Images and class masks, split into disjoint areas, with a label budget.

    Images are a :class:`~glcgeo.datasets.GeoTiffMosaic` and masks a
    :class:`GeoTiffMask`, combined with TorchGeo's ``&``
    (:class:`~torchgeo.datasets.IntersectionDataset`), which warps the masks onto
    the images' CRS and resolution (nearest neighbour). The area is cut into
    *patch_size* tiles dealt block-wise to train/val/test by :func:`split_tiles`
    (seed *split_seed*, the same for every run that shares the evaluation area),
    and the label budget is drawn from the training tiles by
    :func:`draw_label_tiles` (seed *seed*). Training draws *length* labelled tiles
    per epoch with random flips and 90-degree rotations; validation and test read
    each of their tiles once. Images are normalised on the device with per-band
    statistics of raw values (:class:`~glcgeo.stats.BandStats`), their nodata
    pixels set to 0 (:func:`~glcgeo.transforms.normalize_bands`).

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        images: str | list[str],
        masks: str | list[str],
        bands: list[int | str] | None = None,
        crs: str | None = None,
        res: float | None = None,
        nodata: float | None = None,
        mask_nodata: float | None = None,
        class_values: list[int] | None = None,
        class_names: list[str] | None = None,
        ignore_index: int = 255,
        patch_size: int = 256,
        block_size: int = 4,
        split: tuple[float, float, float] = (0.6, 0.2, 0.2),
        split_seed: int = 0,
        min_labelled: float = 0.5,
        label_fraction: float | None = None,
        num_label_patches: int | None = None,
        seed: int = 0,
        batch_size: int = 16,
        eval_batch_size: int = 64,
        length: int | None = None,
        stats: str | BandStats | None = None,
        augment: bool = True,
        num_workers: int = 0,
    ) -> None:
        """Initialize a new SegmentationDataModule.

        Args:
            images: GeoTIFF files, folders or glob patterns of the images.
            masks: GeoTIFF files, folders or glob patterns of the class masks (any
                CRS; warped onto the images' grid).
            bands: 1-based band indexes or names of the images (defaults to all).
            crs: CRS to work in (defaults to the first image's).
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

        """
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
        images = GeoTiffMosaic(
            hp['images'],
            bands=self.bands,
            crs=hp['crs'],
            res=hp['res'],
            nodata=hp['nodata'],
        )
        # Warped onto the images' grid from the start (nearest neighbour).
        masks = GeoTiffMask(
            hp['masks'], crs=images.crs, res=images.res, nodata=hp['mask_nodata']
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
        self.band_stats = self._band_stats(images)
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
            [split.query(t) for t in self.label_tiles], length, generator
        )
        self.val_sampler = TileSampler([split.query(t) for t in split.tiles['val']])
        self.test_sampler = TileSampler([split.query(t) for t in split.tiles['test']])

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
            pixels; (width, height) of the overlap in whole pixels).
        """
        image_grid = images.grid
        xres, yres = image_grid.res
        x, y, _ = dataset.bounds
        col0 = math.ceil(round((x.start - image_grid.x0) / xres, 6))
        row0 = math.ceil(round((image_grid.y0 - y.stop) / yres, 6))
        col1 = math.floor(round((x.stop - image_grid.x0) / xres, 6))
        row1 = math.floor(round((image_grid.y0 - y.start) / yres, 6))
        x0, y0 = image_grid.to_map(col0, row0)
        return PixelGrid(x0=x0, y0=y0, res=(xres, yres)), (col1 - col0, row1 - row0)

    def _band_stats(self, images: GeoTiffMosaic) -> BandStats:
        """The statistics given, or computed from the images."""
        source = self.stats_source
        if isinstance(source, BandStats):
            stats = source
        elif source is not None:
            stats = BandStats.load(source)
        else:
            return compute_band_stats(images)
        if len(stats.mean) != images.num_bands:
            raise GlcgeoError(
                f'statistics have {len(stats.mean)} bands, the images '
                f'{images.num_bands}',
                images.files[0],
            )
        return stats

    @property
    def num_bands(self) -> int:
        """Number of image bands (after :meth:`setup`)."""
        assert self.band_stats is not None
        return len(self.band_stats.mean)

    @property
    def band_indexes(self) -> list[int]:
        """1-based band indexes of the image files that are read."""
        assert isinstance(self.dataset, IntersectionDataset)
        images = self.dataset.datasets[0]
        assert isinstance(images, GeoTiffMosaic)
        return list(images.band_indexes_selected)
