"""Samplers: windows on data, pairs of them for pretraining, tiles for fine-tuning.

:class:`ValidWindowSampler` yields windows centred on random points of a mosaic's
valid area, :class:`PairedWindowSampler` pairs of overlapping windows with the
ground regions GLCNet matches (:mod:`.windows`); :class:`TileSampler` the tiles
of a split (:mod:`.tiles`).

All are TorchGeo spatial samplers: they take the dataset and an optional region
of interest, in the dataset CRS, out of which they yield nothing.
"""

from .tiles import TileSampler
from .windows import PairedWindowSampler, PairStream, ValidWindowSampler

__all__ = ['PairStream', 'PairedWindowSampler', 'TileSampler', 'ValidWindowSampler']
