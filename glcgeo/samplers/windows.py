"""Windows on a mosaic's valid area, and pairs of them for pretraining.

:class:`ValidWindowSampler` yields windows of a mosaic's pixel grid centred on
random points of its valid area (as TorchGeo queries; statistics draw them one by
one). :class:`PairedWindowSampler`, one of them, yields
:class:`~glcgeo.pairs.WindowPair` records instead: two windows that overlap by a
controlled fraction, each at its own scale, plus ground regions inside their
overlap for GLCNet's local matching; :mod:`glcgeo.pairs` reads them.
"""

import abc
import math
from collections.abc import Iterator, Sequence

import numpy as np
import shapely
import torch
import torch.distributed as dist
from rasterio.windows import Window
from shapely import Polygon
from torch import Generator
from torchgeo.samplers import SpatialSampler

from ..datasets import GeoTiffMosaic
from ..errors import GlcgeoError
from ..geometry import PixelBox
from ..pairs import WindowPair

__all__ = ['PairStream', 'PairedWindowSampler', 'ValidWindowSampler']


def _box(window: Window) -> PixelBox:
    return (
        int(window.col_off),
        int(window.row_off),
        int(window.col_off + window.width),
        int(window.row_off + window.height),
    )


def _intersection(a: PixelBox, b: PixelBox) -> PixelBox | None:
    box = (max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3]))
    return box if box[0] < box[2] and box[1] < box[3] else None


def _area(box: PixelBox) -> int:
    return (box[2] - box[0]) * (box[3] - box[1])


def _check_window_arguments(size: int, length: int, max_nodata: float) -> None:
    """Refuse a window size, epoch length or nodata fraction out of range.

    Raises:
        GlcgeoError: naming the argument.
    """
    for name, value, least in (('size', size, 1), ('length', length, 1)):
        if value < least:
            raise GlcgeoError(f'{name} must be >= {least}, got {value}')
    if not 0 <= max_nodata < 1:
        raise GlcgeoError(f'max_nodata must be in [0, 1), got {max_nodata}')


class PairStream(abc.ABC):
    """One seeded stream of window pairs per epoch, shared out between ranks.

    What every pair sampler has in common: each epoch draws ``length`` pairs from
    a stream seeded by :attr:`generator` (:meth:`draw` makes one), and under
    distributed training each rank yields every ``world_size``-th of them, so
    ranks draw disjoint shares and ``k`` ranks see the same global batches as one
    process does.

    Attributes:
        generator: seeds each epoch's stream; every rank's is seeded alike.
        length: pairs per epoch, over all ranks.
        num_replicas: number of ranks, or None for the process group's size.
        rank: this rank, or None for the process group's rank.
    """

    generator: Generator
    length: int
    num_replicas: int | None
    rank: int | None

    @abc.abstractmethod
    def draw(self, rng: np.random.Generator) -> WindowPair:
        """Draw one pair from the stream *rng*."""

    def _ranks(self) -> tuple[int, int]:
        """Return (number of ranks, this rank), from the arguments or process group."""
        initialised = dist.is_available() and dist.is_initialized()
        world = self.num_replicas or (dist.get_world_size() if initialised else 1)
        rank = (
            self.rank
            if self.rank is not None
            else (dist.get_rank() if initialised else 0)
        )
        return world, rank

    def __len__(self) -> int:
        """Pairs this rank yields per epoch."""
        world, _ = self._ranks()
        return self.length // world

    def __iter__(self) -> Iterator[WindowPair]:  # type: ignore[override]
        """Yield this rank's share of one epoch of pairs.

        Yields:
            window pairs, for :class:`~glcgeo.pairs.GeoTiffUnions` or
            :class:`~glcgeo.pairs.GeoTiffPairs` (or a collection of them).

        """
        world, rank = self._ranks()
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator).item())
        rng = np.random.default_rng(seed)
        for i in range(len(self) * world):
            pair = self.draw(rng)
            if i % world == rank:
                yield pair


class ValidWindowSampler(SpatialSampler):
    """Draw square windows of a mosaic's grid centred on random points with data.

    The mosaic's coverage (:meth:`~glcgeo.datasets.GeoTiffMosaic.coverage`, in
    coarse cells) weighs where a window may be centred: cells with at most
    *max_nodata* nodata, in proportion to their valid area, so that windows spread
    over files in proportion to their data. A window is clamped inside the mosaic.

    Example::

        mosaic = GeoTiffMosaic('tiles/*.tif')
        sampler = ValidWindowSampler(mosaic, size=128, length=64)
        for query in sampler:
            image = mosaic[query]['image']

    .. versionadded:: 0.1
    """

    strategy = 'random'

    def __init__(
        self,
        dataset: GeoTiffMosaic,
        size: int = 224,
        length: int = 1000,
        max_nodata: float = 0.1,
        generator: Generator | None = None,
        roi: Polygon | None = None,
        cell: float | None = None,
        max_tries: int = 1000,
    ) -> None:
        """Initialize a new ValidWindowSampler.

        Args:
            dataset: the mosaic to draw from.
            size: width and height of a window, in mosaic pixels.
            length: windows per epoch.
            max_nodata: largest nodata fraction of a coverage cell a window may
                be centred in.
            generator: random generator (defaults to one seeded with 0).
            roi: region of interest, in the dataset CRS, that every window lies
                in (defaults to the whole mosaic).
            cell: side of a coverage cell, in CRS units (defaults to an eighth
                of a window).
            max_tries: draws allowed per window inside *roi* before giving up.

        Raises:
            GlcgeoError: if a window is larger than the mosaic, the arguments
                are out of range, or the mosaic (inside *roi*) holds (almost) no
                valid data.
        """
        _check_window_arguments(size, length, max_nodata)
        super().__init__(dataset, roi=roi)
        self.roi = roi
        if roi is not None:
            shapely.prepare(roi)  # one containment test per window drawn
        self.dataset = dataset
        self.size = size
        self.length = length
        self.max_nodata = max_nodata
        self.generator = generator or torch.Generator().manual_seed(0)
        self.max_tries = max_tries
        # The grid is fixed: keep it rather than recompute the dataset bounds
        # (a pass over the index) at every draw.
        self.grid = grid = dataset.grid
        self.height, self.width = dataset.shape
        if size > min(self.width, self.height):
            raise GlcgeoError(
                f'a window of {size} x {size} px does not fit in the mosaic, '
                f'{self.width} x {self.height} px',
                dataset.files[0],
            )
        # Coverage cells of about an eighth of a window: fine enough to reject
        # windows by their nodata fraction without reading them.
        self.cell = cell = size / 8 * grid.res[0] if cell is None else cell
        # Cells per pixel and pixels per cell, along columns (x) and rows (y):
        # pixels need not be square.
        self.cells_per_pixel = (grid.res[0] / cell, grid.res[1] / cell)
        self.pixels_per_cell = (cell / grid.res[0], cell / grid.res[1])
        coverage = dataset.coverage(cell)
        if roi is not None:
            # Cells whose centre lies outside the region count as nodata: no
            # window centre there.
            rows, cols = coverage.cells()
            xs, ys = coverage.grid.to_map(cols + 0.5, rows + 0.5)  # type: ignore[arg-type]
            coverage = coverage.restricted(shapely.contains_xy(roi, xs, ys))
        self.coverage = coverage
        weights = np.where(
            coverage.fractions >= 1 - max_nodata, coverage.fractions, 0.0
        ).astype(np.float64)
        if weights.sum() <= 0:
            where = 'the region of interest' if roi is not None else 'the mosaic'
            raise GlcgeoError(
                f'no area with at most {max_nodata:.0%} nodata: {where} is '
                'nodata (or nearly) everywhere',
                dataset.files[0],
            )
        # Ground a window may be centred on, in squared CRS units: what a group
        # of a collection of several CRSs weighs.
        self.valid_area = float(weights.sum()) * cell**2
        # Cumulative distribution over the occupied cells, built once: drawing by
        # it is what rng.choice(cells, p=...) does, without rebuilding it every
        # draw.
        self.cell_cdf = (weights / weights.sum()).cumsum()
        self.cell_cdf /= self.cell_cdf[-1]

    def __iter__(self) -> Iterator[tuple[slice, slice]]:
        """Yield one epoch of windows, as TorchGeo queries.

        Yields:
            ``(slice(xmin, xmax, xres), slice(ymin, ymax, yres))`` of *size* x
            *size* px windows, in the dataset CRS.

        Raises:
            GlcgeoError: if no window inside the region of interest is found in
                *max_tries* draws.
        """
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator).item())
        rng = np.random.default_rng(seed)
        xres, yres = self.grid.res
        for _ in range(self.length):
            for _ in range(self.max_tries):
                window = self.random_window(rng, self.size)
                if self.roi is None or self._in_roi(_box(window)):
                    break
            else:
                raise GlcgeoError(
                    f'no window of {self.size} px inside the region of interest '
                    f'found in {self.max_tries} draws',
                    self.dataset.files[0],
                )
            xmin, ymin, xmax, ymax = self.grid.window_bounds(window)
            yield slice(xmin, xmax, xres), slice(ymin, ymax, yres)

    def __len__(self) -> int:
        """Windows per epoch."""
        return self.length

    def valid_fractions(self, boxes: Sequence[PixelBox]) -> np.ndarray:
        """Estimated fraction of boxes of the mosaic grid holding data.

        Args:
            boxes: (col1, row1, col2, row2) boxes in mosaic pixels.

        Returns:
            [len(boxes)] float64 mean coverage of the coarse cells each box spans.

        """
        col_ratio, row_ratio = self.cells_per_pixel
        rows, cols = self.coverage.shape
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        c1 = np.clip(np.floor(b[:, 0] * col_ratio), 0, cols - 1)
        r1 = np.clip(np.floor(b[:, 1] * row_ratio), 0, rows - 1)
        c2 = np.clip(np.ceil(b[:, 2] * col_ratio), c1 + 1, cols)
        r2 = np.clip(np.ceil(b[:, 3] * row_ratio), r1 + 1, rows)
        return self.coverage.box_means(np.stack([c1, r1, c2, r2], axis=1))

    def valid_fraction(self, box: PixelBox) -> float:
        """Estimated fraction of a box of the mosaic grid holding data.

        Args:
            box: (col1, row1, col2, row2) in mosaic pixels.

        Returns:
            the mean coverage of the coarse cells the box spans.

        """
        return float(self.valid_fractions([box])[0])

    def _in_roi(self, box: PixelBox) -> bool:
        """Whether a box of the mosaic grid lies inside the region of interest."""
        assert self.roi is not None
        return bool(self.roi.covers(shapely.box(*self.grid.boxes_to_map([box])[0])))

    def random_window(self, rng: np.random.Generator, n: int) -> Window:
        """Draw a window of n x n mosaic pixels centred on a random point with data.

        Args:
            rng: the random stream.
            n: window side in mosaic pixels.

        Returns:
            the window, clamped inside the mosaic.

        """
        index = int(self.cell_cdf.searchsorted(rng.random(), side='right'))
        cell_row, cell_col = divmod(
            int(self.coverage.keys[index]), self.coverage.shape[1]
        )
        col_ratio, row_ratio = self.pixels_per_cell
        centre_col = (cell_col + rng.uniform()) * col_ratio
        centre_row = (cell_row + rng.uniform()) * row_ratio
        col = min(max(0, round(centre_col - n / 2)), self.width - n)
        row = min(max(0, round(centre_row - n / 2)), self.height - n)
        return Window(col, row, n, n)


# A GeoSampler yields TorchGeo queries; this one yields window pairs.
class PairedWindowSampler(PairStream, ValidWindowSampler):  # type: ignore[misc]
    """Draw pairs of overlapping windows over the same ground, GLCNet style.

    Each pair is drawn as follows: a first window centred on a random point of the
    mosaic's valid area (:meth:`ValidWindowSampler.random_window`: pairs spread
    over files in proportion to their data, never a whole batch from one tile, cf.
    TorchGeo issue #3548); a scale per view
    (each view covers ``size * scale`` mosaic pixels resized to ``size``, so it has
    its own ground resolution); a second window shifted so that the fraction of
    each view covered by the other lies in *overlap*; windows with more than
    *max_nodata* nodata are rejected; finally *regions* ground boxes inside the
    overlap, spread apart, for local matching.

    With a region of interest, both views of every pair lie inside it.

    Under distributed training each rank yields every ``world_size``-th pair of one
    seeded stream, so ranks draw disjoint shares and ``k`` ranks see the same
    global batches as one process does.

    Example::

        unions = GeoTiffUnions('tiles/*.tif')
        sampler = PairedWindowSampler(unions, size=224, length=1000)
        loader = DataLoader(unions, batch_size=32, sampler=sampler,
                            collate_fn=collate_unions, num_workers=2)

    .. versionadded:: 0.1
    """

    strategy = 'random'

    def __init__(
        self,
        dataset: GeoTiffMosaic,
        size: int = 224,
        length: int = 1000,
        overlap: tuple[float, float] = (0.3, 1.0),
        scale: tuple[float, float] = (0.7, 1.15),
        regions: int = 4,
        region_size: float = 48.0,
        max_nodata: float = 0.1,
        generator: Generator | None = None,
        num_replicas: int | None = None,
        rank: int | None = None,
        max_tries: int = 1000,
        roi: Polygon | None = None,
    ) -> None:
        """Initialize a new PairedWindowSampler.

        Args:
            dataset: the mosaic to draw from.
            size: width and height of each view, in pixels.
            length: pairs per epoch, over all ranks.
            overlap: (min, max) fraction of each view covered by the other.
            scale: (min, max) scale of a view: it covers ``size * scale`` mosaic
                pixels, i.e. its pixel size is ``scale`` times the mosaic's
                (the default spans the paper's random-resized crops of 256-pixel
                tiles, area 0.4 to 1, resized to 224).
            regions: matched regions per pair.
            region_size: side of a region, in pixels of a view at scale 1.
            max_nodata: largest nodata fraction accepted in each view and in
                the overlap.
            generator: random generator; every rank must pass one seeded alike
                (defaults to one seeded with 0).
            num_replicas: number of ranks (defaults to the process group's size).
            rank: this rank (defaults to the process group's rank).
            max_tries: draws allowed per pair before giving up with an error.
            roi: region of interest, in the dataset CRS, that every view lies in
                (defaults to the whole mosaic).

        Raises:
            GlcgeoError: if a view is larger than the mosaic, the arguments are out
                of range, or the mosaic (inside *roi*) holds (almost) no valid data.

        """
        _check_window_arguments(size, length, max_nodata)
        if regions < 1:  # GLCNet's local matching needs regions
            raise GlcgeoError(f'regions must be >= 1, got {regions}')
        if not 0 < overlap[0] <= overlap[1] <= 1:
            raise GlcgeoError(
                f'overlap must be (min, max) with 0 < min <= max <= 1, got {overlap}'
            )
        if not 0 < scale[0] <= scale[1]:
            raise GlcgeoError(
                f'scale must be (min, max) with 0 < min <= max, got {scale}'
            )
        rows, cols = dataset.shape
        largest = math.ceil(size * scale[1])
        if largest > min(cols, rows):
            raise GlcgeoError(
                f'a view of {size} px at scale up to {scale[1]} needs {largest} x '
                f'{largest} px, but the mosaic is {cols} x {rows} px',
                dataset.files[0],
            )
        # Coverage cells of about an eighth of the smallest view.
        super().__init__(
            dataset,
            size=size,
            length=length,
            max_nodata=max_nodata,
            generator=generator,
            roi=roi,
            cell=size * scale[0] / 8 * dataset.res[0],
            max_tries=max_tries,
        )
        self.overlap = overlap
        self.scale = scale
        self.regions = regions
        self.region_size = region_size
        self.num_replicas = num_replicas
        self.rank = rank

    def draw(self, rng: np.random.Generator) -> WindowPair:
        """Draw one pair.

        Args:
            rng: the random stream.

        Returns:
            a pair meeting the overlap and nodata constraints.

        Raises:
            GlcgeoError: if no pair is found in *max_tries* draws.

        """
        min_valid = 1 - self.max_nodata
        for _ in range(self.max_tries):
            n1, n2 = (round(self.size * s) for s in rng.uniform(*self.scale, size=2))
            view1 = self.random_window(rng, n1)
            box1 = _box(view1)
            # Shift the second view anywhere it still intersects the first.
            reach = (n1 + n2) // 2
            col = (
                int(view1.col_off)
                + (n1 - n2) // 2
                + int(rng.integers(-reach, reach + 1))
            )
            row = (
                int(view1.row_off)
                + (n1 - n2) // 2
                + int(rng.integers(-reach, reach + 1))
            )
            if not (0 <= col <= self.width - n2 and 0 <= row <= self.height - n2):
                continue
            view2 = Window(col, row, n2, n2)
            box2 = _box(view2)
            overlap = _intersection(box1, box2)
            if overlap is None:
                continue
            fractions = (_area(overlap) / _area(box1), _area(overlap) / _area(box2))
            if not all(self.overlap[0] <= f <= self.overlap[1] for f in fractions):
                continue
            if self.valid_fractions((box1, box2, overlap)).min() < min_valid:
                continue
            if self.roi is not None and not (self._in_roi(box1) and self._in_roi(box2)):
                continue
            union = Window(
                min(box1[0], box2[0]),
                min(box1[1], box2[1]),
                max(box1[2], box2[2]) - min(box1[0], box2[0]),
                max(box1[3], box2[3]) - min(box1[1], box2[1]),
            )
            regions = self._regions(rng, overlap, math.sqrt(n1 * n2) / self.size)
            return WindowPair(view1, view2, union, overlap, regions, self.size)
        raise GlcgeoError(
            f'no window pair of {self.size} px with overlap {self.overlap} and at '
            f'most {self.max_nodata:.0%} nodata found in {self.max_tries} draws; '
            'lower the size or overlap, or raise max_nodata',
            self.dataset.files[0],
        )

    def _regions(
        self, rng: np.random.Generator, overlap: PixelBox, pixel_ratio: float
    ) -> tuple[PixelBox, ...]:
        """Square ground regions inside the overlap, spread apart.

        Each region is the best of a few random candidates: the one overlapping
        the regions already chosen least (the authors remove the first view's box
        from the candidates after each pick; this is the geometric equivalent).

        Args:
            rng: the random stream.
            overlap: the overlap box, in mosaic pixels.
            pixel_ratio: mosaic pixels per view pixel (geometric mean of the views).

        Returns:
            *regions* boxes in mosaic pixels.

        """
        width, height = overlap[2] - overlap[0], overlap[3] - overlap[1]
        side = max(1, min(round(self.region_size * pixel_ratio), width, height))
        chosen: list[PixelBox] = []
        for _ in range(self.regions):
            best, best_shared = None, math.inf
            for _ in range(8):
                col = overlap[0] + int(rng.integers(0, width - side + 1))
                row = overlap[1] + int(rng.integers(0, height - side + 1))
                candidate = (col, row, col + side, row + side)
                shared = sum(
                    _area(i)
                    for other in chosen
                    if (i := _intersection(candidate, other)) is not None
                )
                if shared < best_shared:
                    best, best_shared = candidate, shared
                if shared == 0:
                    break
            assert best is not None
            chosen.append(best)
        return tuple(chosen)
