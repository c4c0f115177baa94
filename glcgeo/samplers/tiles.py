"""Fixed lists of tiles for fine-tuning and evaluation (see :mod:`glcgeo.splits`)."""

from collections.abc import Iterator, Sequence
from typing import Literal

import shapely
import torch
from shapely import Polygon
from torch import Generator
from torchgeo.datasets import GeoDataset
from torchgeo.samplers import SpatialSampler

__all__ = ['TileSampler']


class TileSampler(SpatialSampler):
    """Yield the TorchGeo queries of a fixed list of tiles.

    In order (evaluation), or, with *length*, that many draws per epoch from
    successive seeded permutations of the tiles (training): every tile is seen
    equally often, whatever the number of tiles. With a region of interest, only
    the tiles inside it are yielded.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        dataset: GeoDataset,
        queries: Sequence[tuple[slice, slice]],
        *,
        length: int | None = None,
        generator: Generator | None = None,
        roi: Polygon | None = None,
    ) -> None:
        """Initialize a new TileSampler.

        Args:
            dataset: the dataset the queries read.
            queries: one TorchGeo query per tile,
                ``(slice(xmin, xmax, xres), slice(ymin, ymax, yres))`` in the
                dataset CRS.
            length: draws per epoch; None yields each query once, in order.
            generator: random generator of the draws (defaults to seed 0).
            roi: region of interest, in the dataset CRS; tiles not inside it are
                left out (defaults to all tiles).

        """
        super().__init__(dataset, roi=roi)
        if roi is not None:
            shapely.prepare(roi)
            queries = [
                (x, y)
                for x, y in queries
                if roi.covers(shapely.box(x.start, y.start, x.stop, y.stop))
            ]
        self.queries = list(queries)
        self.length = length
        self.generator = generator or torch.Generator().manual_seed(0)

    @property
    def strategy(self) -> Literal['random', 'sequential']:  # type: ignore[override]
        """'sequential' without *length* (each tile once, in order), else 'random'."""
        return 'sequential' if self.length is None else 'random'

    def __iter__(self) -> Iterator[tuple[slice, slice]]:
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
