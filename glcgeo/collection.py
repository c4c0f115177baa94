"""Collections of GeoTIFFs in several CRSs, each file read in its own.

A :class:`~glcgeo.datasets.GeoTiffMosaic` is a TorchGeo ``RasterDataset``: one
CRS, onto which files in any other are warped. Warped into one UTM zone, a
worldwide collection (Landsat or Sentinel-2 scenes across many zones) is
distorted far from that zone, costs a warp at every read, and fails where GDAL
cannot place a far file in the zone at all. :func:`open_mosaic` groups the files
by CRS instead: a :class:`GeoTiffCollection` holds one mosaic per CRS group, each
on its files' own grid and resolution, and every read comes from one group.
:class:`GroupedPairSampler` draws a group in proportion to its valid ground area,
then a pair inside it with the group's own
:class:`~glcgeo.samplers.PairedWindowSampler`, so the pairs' ground rules
(overlap, scale, matched regions) hold in each group's own metres.

Files that all share one CRS, or a ``crs`` or ``res`` given to force one grid,
give a plain mosaic, exactly as constructing it directly does.
"""

import glob
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import shapely
import torch
from pyproj import CRS as PROJ_CRS
from pyproj import Geod, Transformer
from pyproj.exceptions import ProjError
from rasterio.crs import CRS
from rasterio.errors import CRSError
from torch import Generator, Tensor
from torch.utils.data import Dataset, Sampler
from torchgeo.datasets.utils import Sample

from .crs import untransformable_error
from .datasets import GeoTiffMosaic
from .errors import GlcgeoError
from .gdal_paths import is_url
from .index_cache import cache_key, load_crs_groups, save_crs_groups
from .pairs import GeoTiffUnions, WindowPair
from .rasters import (
    RasterHeader,
    check_band_counts,
    read_header,
    read_headers,
    valid_pixels,
)
from .samplers import PairedWindowSampler, PairStream, ValidWindowSampler
from .sources import expand as expand_paths

__all__ = [
    'GeoTiffCollection',
    'GroupedPairSampler',
    'group_samplers',
    'mosaic_groups',
    'open_mosaic',
    'pair_sampler',
    'square_metres_per_unit',
]


class GeoTiffCollection[M: GeoTiffMosaic](Dataset[Sample]):
    """GeoTIFFs in several CRSs: one mosaic per CRS, each read on its own grid.

    Built by :func:`open_mosaic`. Each group (:attr:`groups`) is a mosaic of the
    class asked for (a TorchGeo ``RasterDataset`` of one CRS, at its first
    file's resolution) and is read, queried and sampled as such; nothing is
    warped from one CRS to another. Indexing the collection with a
    :class:`~glcgeo.pairs.WindowPair` reads the pair from its group
    (``pair.group``); :class:`GroupedPairSampler` draws such pairs.

    One nodata rule holds for the whole collection, as for a mosaic: the first
    file's nodata value (or the one given), set on every group.

    .. versionadded:: 0.1
    """

    def __init__(self, groups: Sequence[M], files: Sequence[str]) -> None:
        """Initialize a new GeoTiffCollection.

        Args:
            groups: one mosaic per CRS, the first holding the first file.
            files: every file, in index order (as :func:`glcgeo.sources.expand`
                lists them).
        """
        self.groups = list(groups)
        self._files = list(files)
        first = self.groups[0]
        self.file_nodata = first.file_nodata
        for group in self.groups[1:]:
            group.file_nodata = first.file_nodata
        self.source_dtype = first.source_dtype
        self.all_bands = first.all_bands
        self.band_indexes_selected = first.band_indexes_selected

    @property
    def files(self) -> list[str]:
        """Every file of the collection, in index order."""
        return list(self._files)

    @property
    def num_bands(self) -> int:
        """Number of bands each sample has."""
        return len(self.band_indexes_selected)

    def __len__(self) -> int:
        """Number of files."""
        return len(self._files)

    def valid_mask(self, image: Tensor) -> Tensor:
        """Pixels holding data, by the collection's nodata (:func:`valid_pixels`).

        Args:
            image: [C, H, W] or [B, C, H, W] raw values, of any dtype.

        Returns:
            a boolean [H, W] (or [B, H, W]) mask, True where there is data.
        """
        return valid_pixels(image, self.file_nodata)

    def __getitem__(self, pair: WindowPair) -> Sample:
        """Read a window pair from its group.

        Args:
            pair: the pair, in pixels of its group's grid.

        Returns:
            see :meth:`read_pairs`.
        """
        return self.read_pairs([pair])[0]

    def __getitems__(self, pairs: Sequence[WindowPair]) -> list[Sample]:
        """Read a batch of window pairs (as a DataLoader does): :meth:`read_pairs`."""
        return self.read_pairs(pairs)

    def read_pairs(self, pairs: Sequence[WindowPair]) -> list[Sample]:
        """Read window pairs, each from its group, those of a group together.

        Args:
            pairs: the pairs, each in pixels of its group's grid.

        Returns:
            one sample per pair, in order: the group's
            :meth:`~glcgeo.pairs.GeoTiffUnions.read_pairs` sample (its geometry
            in the group's CRS), with ``group`` int64 the pair's group and a
            ``union`` in the first file's dtype, as a mosaic reads any file.
        """
        samples: list[Sample] = [{} for _ in pairs]
        for index, group in enumerate(self.groups):
            positions = [i for i, pair in enumerate(pairs) if pair.group == index]
            if not positions:
                continue
            assert isinstance(group, GeoTiffUnions), 'a collection of pair readers'
            read = group.read_pairs([pairs[i] for i in positions])
            for position, sample in zip(positions, read, strict=True):
                union = sample.get('union')
                if union is not None and str(union.numpy().dtype) != self.source_dtype:
                    sample['union'] = torch.from_numpy(
                        union.numpy().astype(self.source_dtype)
                    )
                sample['group'] = torch.tensor(index)
                samples[position] = sample
        return samples


def _group_files(headers: Sequence[RasterHeader]) -> np.ndarray:
    """Number the files' CRSs in order of first file (equal CRSs, one number).

    Args:
        headers: the files' headers.

    Returns:
        [N] int64 each file's group.
    """
    crss: list[CRS | None] = []
    known: dict[str, int] = {}
    groups = np.empty(len(headers), dtype=np.int64)
    for i, header in enumerate(headers):
        # Files without a CRS (georeferenced by GCPs) form one group, in their
        # first file's GCP CRS.
        wkt = '' if header.crs is None else header.crs.to_wkt()
        if wkt not in known:
            # CRSs written differently may be equal (an EPSG code and its WKT).
            known[wkt] = next(
                (
                    k
                    for k, crs in enumerate(crss)
                    if (crs is None) == (header.crs is None)
                    and (crs is None or crs == header.crs)
                ),
                len(crss),
            )
            if known[wkt] == len(crss):
                crss.append(header.crs)
        groups[i] = known[wkt]
    return groups


def open_mosaic[M: GeoTiffMosaic](
    cls: type[M],
    paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    *,
    crs: PROJ_CRS | str | int | None = None,
    res: float | tuple[float, float] | None = None,
    index_cache: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> M | GeoTiffCollection[M]:
    """A mosaic of the files, or, where their CRSs differ, one per CRS.

    Each file is opened once, to read its CRS (and what indexing needs), unless
    *index_cache* holds the groups already.

    Args:
        cls: the mosaic class (:class:`~glcgeo.datasets.GeoTiffMosaic`,
            :class:`~glcgeo.pairs.GeoTiffUnions`, ...).
        paths: files, folders, globs or URLs (:func:`glcgeo.sources.expand`).
        crs: a CRS to reproject every file to: one mosaic, as ``cls(...)``.
        res: a pixel size for one mosaic (in units of *crs*, or of the first
            file's CRS), as ``cls(...)``.
        index_cache: a folder where the groups, indexes and coverages are kept
            for the run's other processes (:mod:`glcgeo.index_cache`).
        kwargs: the other arguments of *cls* (bands, nodata, ...).

    Returns:
        ``cls(paths, ...)`` if *crs* or *res* is given or all files share one
        CRS, else a :class:`GeoTiffCollection` of one ``cls`` per CRS.

    Raises:
        GlcgeoError: as *cls* does (a missing or unreadable file, different
            band counts, ...).
    """
    if not isinstance(paths, str | os.PathLike):
        paths = list(paths)  # expanded twice: by this function and by cls
    if crs is not None or res is not None:
        try:
            return cls(paths, crs=crs, res=res, index_cache=index_cache, **kwargs)
        except CRSError:
            # A file in a CRS PROJ has no operation from (a local engineering
            # CRS) cannot be read into the one grid asked for.
            files = expand_paths(paths, kwargs.get('bands'))
            target = crs or read_header(files[0], crs_given=True).crs
            flag = '--crs' if crs is not None else '--res'
            raise untransformable_error(
                files,
                CRS.from_user_input(target),
                f': leave out {flag} to read each file in its own CRS',
            ) from None
    files = expand_paths(paths, kwargs.get('bands'))
    folder = None if index_cache is None else os.fspath(index_cache)
    key = cache_key(files, {'crs_groups': True})
    groups = None if folder is None else load_crs_groups(folder, key)
    headers: list[RasterHeader] | None = None
    if groups is None or len(groups) != len(files):
        headers = read_headers(files, crs_given=False)
        check_band_counts(files, headers)
        groups = _group_files(headers)
        if folder is not None:
            save_crs_groups(folder, key, groups)
    if groups.max() == 0:
        return cls(paths, index_cache=index_cache, headers=headers, **kwargs)
    mosaics = []
    for group in range(int(groups.max()) + 1):
        members = np.flatnonzero(groups == group).tolist()
        mosaics.append(
            cls(
                # Each file as itself, even with glob characters in its name.
                [
                    files[i] if is_url(files[i]) else glob.escape(files[i])
                    for i in members
                ],
                index_cache=index_cache,
                headers=None if headers is None else [headers[i] for i in members],
                **kwargs,
            )
        )
    return GeoTiffCollection(mosaics, files)


def mosaic_groups[M: GeoTiffMosaic](dataset: M | GeoTiffCollection[M]) -> list[M]:
    """The mosaics of one CRS a dataset reads from: a collection's groups, or it."""
    return dataset.groups if isinstance(dataset, GeoTiffCollection) else [dataset]


def square_metres_per_unit(mosaic: GeoTiffMosaic) -> float:
    """Ground area per squared CRS unit over a mosaic's files.

    The files' footprints, measured on the WGS 84 ellipsoid, divided by their
    area in the CRS: about 1 for a UTM zone, larger for a CRS in feet, far
    larger (and latitude-dependent) in degrees. A local (engineering) CRS in
    lengths, which has no longitude and latitude, is taken as flat.

    Args:
        mosaic: the mosaic.

    Returns:
        square metres per squared unit of the mosaic's CRS.

    Raises:
        GlcgeoError: naming the mosaic's first file, if its CRS neither
            transforms to longitude and latitude nor is a local CRS in lengths.
    """
    local = PROJ_CRS.from_user_input(mosaic.crs)
    if local.is_engineering and all(
        axis.unit_conversion_factor and axis.unit_name != 'degree'
        for axis in local.axis_info
    ):
        # A local (site) grid is flat: its units are lengths on the ground.
        x_axis, y_axis = local.axis_info[:2]
        return x_axis.unit_conversion_factor * y_axis.unit_conversion_factor
    boxes = np.asarray(shapely.bounds(mosaic.index.geometry.values), dtype=np.float64)
    left, bottom, right, top = boxes.T
    # Each footprint's outline, counter-clockwise from its bottom-left corner, 8
    # points a side (a side's ends need not stay straight in degrees).
    corners_x = np.stack([left, right, right, left, left], axis=1)
    corners_y = np.stack([bottom, bottom, top, top, bottom], axis=1)
    t = np.linspace(0.0, 1.0, 9)[:-1]
    xs = (corners_x[:, :-1, None] + np.diff(corners_x)[:, :, None] * t).reshape(
        len(boxes), -1
    )
    ys = (corners_y[:, :-1, None] + np.diff(corners_y)[:, :, None] * t).reshape(
        len(boxes), -1
    )
    try:
        transformer = Transformer.from_crs(mosaic.crs, 'EPSG:4326', always_xy=True)
        lon, lat = transformer.transform(xs, ys)
        measured = bool(np.isfinite(lon).all() and np.isfinite(lat).all())
        reason = 'its footprint has no longitude and latitude'
    except ProjError as error:
        measured, reason = False, str(error)
    if not measured:
        raise GlcgeoError(
            f'cannot measure the ground area of its CRS, {mosaic.crs.name} ({reason})',
            mosaic.files[0],
        )
    geod = Geod(ellps='WGS84')
    ground = sum(
        abs(geod.polygon_area_perimeter(x, y)[0]) for x, y in zip(lon, lat, strict=True)
    )
    planar = float(((right - left) * (top - bottom)).sum())
    return ground / planar


def group_samplers[S: ValidWindowSampler](
    dataset: GeoTiffMosaic | GeoTiffCollection[Any],
    sampler: Callable[[GeoTiffMosaic], S],
) -> tuple[list[S | None], np.ndarray]:
    """A window sampler per CRS group, and the groups' weights by valid ground area.

    Each group weighs the ground area (m²) a window may be centred on in it
    (:attr:`ValidWindowSampler.valid_area <glcgeo.samplers.ValidWindowSampler>`,
    converted by :func:`square_metres_per_unit`), so that groups weigh by their
    data, not by their number of files or their extent. A group its sampler
    refuses (no room for a window, no area with data) is left out, as such a
    file is in a mosaic.

    Args:
        dataset: a mosaic (one group), or a collection of several CRSs.
        sampler: makes a group's sampler; may raise :class:`GlcgeoError`.

    Returns:
        (each group's sampler, None where left out; the cumulative distribution
        of the groups' weights, drawn with ``searchsorted(rng.random(),
        side='right')``).

    Raises:
        GlcgeoError: the first group's refusal, if every group is left out.
    """
    samplers: list[S | None] = []
    refusals: list[GlcgeoError] = []
    groups = mosaic_groups(dataset)
    for group in groups:
        try:
            samplers.append(sampler(group))
        except GlcgeoError as error:
            samplers.append(None)
            refusals.append(error)
    if all(s is None for s in samplers):
        raise refusals[0]
    if len(groups) == 1:
        return samplers, np.ones(1)
    areas = np.array(
        [
            0.0 if s is None else s.valid_area * square_metres_per_unit(group)
            for s, group in zip(samplers, groups, strict=True)
        ]
    )
    cdf = (areas / areas.sum()).cumsum()
    return samplers, cdf / cdf[-1]


class GroupedPairSampler(PairStream, Sampler[WindowPair]):
    """Draw window pairs from a collection of several CRSs, one group a pair.

    Each pair first draws a CRS group, in proportion to the ground area (m²) a
    view may be centred on in it (:func:`group_samplers`); then the group's own
    :class:`~glcgeo.samplers.PairedWindowSampler` draws the pair on the group's
    grid, in its CRS. A group with no room for a view, or no area with data, is
    left out, as such a file is in a mosaic; an error if every group is.

    Example::

        unions = open_mosaic(GeoTiffUnions, 'scenes/*.tif')  # many UTM zones
        sampler = pair_sampler(unions, size=224, length=1000)
        loader = DataLoader(unions, batch_size=32, sampler=sampler,
                            collate_fn=collate_unions)

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        collection: GeoTiffCollection[Any],
        generator: Generator | None = None,
        **kwargs: Any,
    ) -> None:
        """Initialize a new GroupedPairSampler.

        Args:
            collection: the collection to draw from.
            generator: random generator; every rank must pass one seeded alike
                (defaults to one seeded with 0).
            kwargs: the other arguments of
                :class:`~glcgeo.samplers.PairedWindowSampler` (size, length,
                overlap, scale, regions, region_size, max_nodata, num_replicas,
                rank, max_tries), the same for every group.

        Raises:
            GlcgeoError: as :class:`~glcgeo.samplers.PairedWindowSampler` does
                for the first group, if no group can be drawn from.
        """
        self.collection = collection
        self.generator = generator or torch.Generator().manual_seed(0)
        self.samplers, self.group_cdf = group_samplers(
            collection, lambda group: PairedWindowSampler(group, **kwargs)
        )
        drawn = [s for s in self.samplers if s is not None]
        self.length = drawn[0].length
        self.num_replicas = drawn[0].num_replicas
        self.rank = drawn[0].rank

    def draw_group(self, rng: np.random.Generator) -> int:
        """Draw a group in proportion to its valid ground area.

        Args:
            rng: the random stream.

        Returns:
            the group's index in the collection.
        """
        return int(self.group_cdf.searchsorted(rng.random(), side='right'))

    def draw(self, rng: np.random.Generator) -> WindowPair:
        """Draw one pair: a group, then a pair on its grid.

        Args:
            rng: the random stream.

        Returns:
            the pair, with its group.
        """
        group = self.draw_group(rng)
        sampler = self.samplers[group]
        assert sampler is not None  # a group left out has no weight
        return replace(sampler.draw(rng), group=group)


def pair_sampler(
    dataset: GeoTiffMosaic | GeoTiffCollection[Any],
    generator: Generator | None = None,
    **kwargs: Any,
) -> PairedWindowSampler | GroupedPairSampler:
    """The pair sampler of a mosaic, or of a collection of several CRSs.

    Args:
        dataset: what :func:`open_mosaic` returned.
        generator: random generator (defaults to one seeded with 0).
        kwargs: the other arguments of
            :class:`~glcgeo.samplers.PairedWindowSampler`.

    Returns:
        a :class:`~glcgeo.samplers.PairedWindowSampler` of a mosaic, a
        :class:`GroupedPairSampler` of a collection.
    """
    if isinstance(dataset, GeoTiffCollection):
        return GroupedPairSampler(dataset, generator=generator, **kwargs)
    return PairedWindowSampler(dataset, generator=generator, **kwargs)
