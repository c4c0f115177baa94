"""Prediction outputs: class and probability maps, as Cloud Optimized GeoTIFFs.

A :class:`CogWriter` takes windows of a raster as they are finished and writes them
to a temporary striped GeoTIFF beside the destination, compressed by GDAL's
threads.
:meth:`CogWriter.finish` converts it with GDAL's COG driver (tiles, DEFLATE,
overviews) into a second temporary file; :meth:`CogWriter.commit` renames that onto
the destination (both temporary files are :class:`~glcgeo.outputs.OutputFile`).
Files that travel with the raster (*sidecars*) are written under temporary names
too and renamed onto theirs just before it, so a raster under its name always has
its sidecars.
Leaving the ``with`` block removes whatever temporary file is left, so an error or
an interruption never leaves a file under the destination name nor a partial file.

:func:`class_writer` and :func:`probability_writer` make the writers of a class
map (colour table, class names for GDAL and QGIS: :func:`class_map_sidecars`) and
of per-class percentages;
:func:`write_rows` turns finished rows of blended scores into class ids (and
percentages) on the scores' device and writes them; a :class:`SegmentationMap` is
a class map held in memory.
"""

import json
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import numpy as np
import rasterio
import rasterio.shutil
import torch
from affine import Affine
from rasterio.enums import Resampling
from rasterio.windows import Window
from torch import Tensor

from ..checkpoints import CheckpointMetadata
from ..errors import GlcgeoError
from ..outputs import OutputFile, check_destination, no_room_reported
from .blending import RowBandAccumulator

__all__ = [
    'CONFIDENCE_BAND',
    'PROBABILITY_NODATA',
    'CogWriter',
    'SegmentationMap',
    'class_dtype',
    'class_ids',
    'class_map_sidecars',
    'class_writer',
    'probability_writer',
    'sidecar_paths',
    'write_rows',
]

#: Side of the COGs' blocks, in pixels.
COG_BLOCK_SIZE = 512

#: Nodata value of the per-class probability file (stored as percent, 0-100).
PROBABILITY_NODATA = 255

#: Creation options of the temporary file: strips suit row-band writes, and a fast
#: compression, spread over GDAL's threads, keeps it small for large scenes.
PARTIAL_OPTIONS = {
    'driver': 'GTiff',
    'tiled': False,
    'blockysize': 16,
    'compress': 'deflate',
    'zlevel': 1,
    'bigtiff': 'if_safer',
    'num_threads': 'all_cpus',
}


def class_dtype(num_classes: int) -> tuple[str, int]:
    """Choose the smallest unsigned dtype holding class ids plus a nodata value.

    Args:
        num_classes: number of classes (ids ``0 .. num_classes - 1``).

    Returns:
        (dtype name, nodata value): the dtype's largest value is nodata.

    """
    for dtype in ('uint8', 'uint16', 'uint32'):
        largest = int(np.iinfo(dtype).max)
        if num_classes <= largest:
            return dtype, largest
    raise GlcgeoError(f'too many classes: {num_classes}')


class CogWriter:
    """Write a georeferenced raster window by window and publish it as a COG.

    Example::

        with CogWriter('map.tif', profile, colormap={0: (0, 0, 255, 255)}) as writer:
            writer.write(classes, Window(0, 0, width, 256))
            ...
            writer.finish()
            writer.commit()

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        profile: dict[str, Any],
        *,
        overwrite: bool = False,
        overview_resampling: str = 'mode',
        colormap: dict[int, tuple[int, int, int, int]] | None = None,
        descriptions: tuple[str, ...] = (),
        band_tags: dict[str, str] | None = None,
        tags: dict[str, str] | None = None,
        scales: tuple[float, ...] | None = None,
        sidecars: Mapping[str, str] | None = None,
        interleave: str = 'pixel',
    ) -> None:
        """Initialize a new CogWriter.

        Args:
            path: the destination file.
            profile: rasterio profile of the output: ``width``, ``height``,
                ``count``, ``dtype``, ``crs``, ``transform``, ``nodata``.
            overwrite: whether an existing destination may be replaced.
            overview_resampling: GDAL resampling of overviews (``'mode'`` for
                classes, ``'average'`` for scores).
            colormap: colour table of band 1, {value: (r, g, b, alpha)}, 0-255.
            descriptions: one description per band.
            band_tags: metadata of band 1 (e.g. class names).
            tags: metadata of the dataset.
            scales: per-band scale from stored to real values.
            sidecars: text files that travel with the raster, {path: content}.
            interleave: ``'pixel'`` (a block holds every band) or ``'band'``
                (a block per band: for many bands, whose pixel blocks would
                outgrow GDAL's block cache).

        Raises:
            GlcgeoError: see :func:`~glcgeo.outputs.check_destination` (for the
                raster and each sidecar).

        """
        sidecars = dict(sidecars or {})
        for destination in (path, *sidecars):
            check_destination(destination, overwrite)
        self.path = os.fspath(path)
        # The striped file written window by window, never published, and the
        # COG made from it, published whole.
        self._striped = OutputFile(path)
        self._cog = OutputFile(path)
        self.profile = profile
        self.overview_resampling = overview_resampling
        self.colormap = colormap
        self.descriptions = descriptions
        self.band_tags = band_tags or {}
        self.tags = tags or {}
        self.scales = scales
        self.interleave = interleave
        self._sidecars = [(OutputFile(name), text) for name, text in sidecars.items()]
        self._dataset: Any = None

    def __enter__(self) -> Self:
        """Create the temporary file, with its colour table and metadata."""
        # The file exists from GDAL's first call: an error or Ctrl-C before this
        # returns (and __exit__ is due) removes it here.
        try:
            self._dataset = dataset = rasterio.open(
                self._striped.temporary,
                'w',
                **{**self.profile, **PARTIAL_OPTIONS, 'interleave': self.interleave},
            )
            # Before any pixel: GDAL cannot make a file paletted once strips are out.
            if self.colormap is not None:
                dataset.write_colormap(1, self.colormap)
            for band, description in enumerate(self.descriptions, start=1):
                dataset.set_band_description(band, description)
            if self.scales is not None:
                dataset.scales = self.scales
            dataset.update_tags(1, **self.band_tags)
            dataset.update_tags(**self.tags)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def write(self, array: np.ndarray, window: Window) -> None:
        """Write a window of all bands.

        Args:
            array: [count, window height, window width] values of the output dtype.
            window: where, in the output's pixels.

        """
        with self._no_room_reported():
            self._dataset.write(array, window=window)

    def finish(self) -> None:
        """Convert the temporary file to a COG and write the sidecars (temporary).

        Raises:
            NoRoomError: if the device, a quota or the file size limit leaves
                no room for the outputs.
        """
        dataset, self._dataset = self._dataset, None
        options = {}
        with self._no_room_reported():
            dataset.close()
            if self.profile['dtype'] == 'float16' and self.profile['count'] > 1:
                # GDAL's COG driver (3.12) cannot make the overviews of several
                # float16 bands ("all the overviews bands must have the same
                # data type"); GTiff's overviews of the same levels can, and
                # the COG driver copies them.
                self._build_overviews()
                options['overviews'] = 'force_use_existing'
            # The COG driver copies the colour table, descriptions, scales and
            # tags.
            rasterio.shutil.copy(
                self._striped.temporary,
                self._cog.temporary,
                driver='COG',
                compress='deflate',
                blocksize=COG_BLOCK_SIZE,
                overview_resampling=self.overview_resampling,
                bigtiff='if_safer',
                num_threads='all_cpus',
                interleave=self.interleave,
                **options,
            )
        self._striped.discard()
        with self._no_room_reported():
            for output, text in self._sidecars:
                with open(output.temporary, 'w', encoding='utf-8') as f:
                    f.write(text)

    def _build_overviews(self) -> None:
        """Add to the temporary file the overviews the COG driver would make.

        Halvings of the raster until it fits in one block, as the COG driver
        makes them.
        """
        with rasterio.open(self._striped.temporary, 'r+') as dataset:
            factors = []
            factor = 2
            while max(dataset.width, dataset.height) * 2 / factor > COG_BLOCK_SIZE:
                factors.append(factor)
                factor *= 2
            if factors:
                resampling = Resampling[self.overview_resampling]
                dataset.build_overviews(factors, resampling)

    def _no_room_reported(self) -> AbstractContextManager[None]:
        """Report a write that finds no room as one line naming the output.

        GDAL reports failed writes on stderr, and fails later reading the
        truncated file.
        """
        return no_room_reported(self.path, self._striped.temporary, self._cog.temporary)

    def commit(self) -> None:
        """Move the sidecars, then the finished COG, onto their names."""
        for output, _ in self._sidecars:
            output.commit()
        self._cog.commit()

    def discard(self) -> None:
        """Remove the temporary files, even while another thread converts them.

        The conversion then fails, or publishes a complete COG.
        """
        self._striped.discard()
        self._cog.discard()
        for output, _ in self._sidecars:
            output.discard()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Close and remove any temporary file left, whatever happened."""
        if self._dataset is not None:
            self._dataset.close()
            self._dataset = None
        self.discard()


def class_ids(scores: Tensor, metadata: CheckpointMetadata, dim: int = 0) -> Tensor:
    """The most probable class of scores along *dim*, never the ignored class.

    Args:
        scores: class scores, classes along *dim*.
        metadata: the model's ignored class, if any.
        dim: the class dimension.

    Returns:
        class ids (int64), *scores*' shape without *dim*; the first of equal
        scores wins, as in :func:`torch.max`.
    """
    ignored = metadata.ignore_index
    classes = scores.shape[dim]
    if ignored is not None and 0 <= ignored < classes and classes > 1:
        index = torch.tensor([ignored], device=scores.device)
        scores = scores.index_fill(dim, index, -math.inf)
    # torch.max, not torch.argmax: over a dimension that is not the last, the
    # latter is several times slower on the CPU.
    return scores.max(dim).indices


def sidecar_paths(path: str | os.PathLike[str]) -> list[str]:
    """The files that travel with a class map, for GIS.

    Args:
        path: the class map, e.g. ``landcover.tif``.

    Returns:
        GDAL's sidecar ``landcover.tif.aux.xml`` (class names and attribute
        table) and QGIS's default style ``landcover.qml``.
    """
    text = os.fspath(path)
    return [f'{text}.aux.xml', f'{os.path.splitext(text)[0]}.qml']


#: GDAL's codes for the raster attribute table: field types and usages.
_RAT_INTEGER, _RAT_STRING = 0, 2
_RAT_NAME, _RAT_MIN_MAX, _RAT_RED, _RAT_GREEN, _RAT_BLUE = 2, 5, 6, 7, 8


def _xml(root: ET.Element) -> str:
    ET.indent(root)
    return ET.tostring(root, encoding='unicode') + '\n'


def _pam_xml(metadata: CheckpointMetadata) -> str:
    """GDAL's sidecar of a class map: category names and an attribute table.

    GDAL keeps neither in a GeoTIFF: it reads them from ``<map>.aux.xml`` (its
    "PAM" file), as ``gdalinfo`` shows (``Categories:``) and as QGIS and ArcGIS
    read them.
    """
    root = ET.Element('PAMDataset')
    band = ET.SubElement(root, 'PAMRasterBand', band='1')
    categories = ET.SubElement(band, 'CategoryNames')
    for name in metadata.class_names:
        ET.SubElement(categories, 'Category').text = name
    table = ET.SubElement(band, 'GDALRasterAttributeTable', tableType='thematic')
    fields = [
        ('value', _RAT_INTEGER, _RAT_MIN_MAX),
        ('class_name', _RAT_STRING, _RAT_NAME),
        ('red', _RAT_INTEGER, _RAT_RED),
        ('green', _RAT_INTEGER, _RAT_GREEN),
        ('blue', _RAT_INTEGER, _RAT_BLUE),
    ]
    for index, (name, kind, usage) in enumerate(fields):
        field = ET.SubElement(table, 'FieldDefn', index=str(index))
        ET.SubElement(field, 'Name').text = name
        ET.SubElement(field, 'Type').text = str(kind)
        ET.SubElement(field, 'Usage').text = str(usage)
    for value, (name, rgb) in enumerate(
        zip(metadata.class_names, metadata.class_colors, strict=True)
    ):
        row = ET.SubElement(table, 'Row', index=str(value))
        for item in (value, name, *rgb):
            ET.SubElement(row, 'F').text = str(item)
    return _xml(root)


def _qml(metadata: CheckpointMetadata) -> str:
    """QGIS's style of a class map: one legend entry per class, named and coloured.

    QGIS labels the entries of a colour table with GDAL's category names, but lists
    every entry of the table (256 for a uint8 map); this style lists the classes
    only. QGIS loads ``<map>.qml`` when it opens ``<map>.tif``.
    """
    root = ET.Element('qgis', version='3.28.0', styleCategories='Symbology')
    pipe = ET.SubElement(root, 'pipe')
    renderer = ET.SubElement(
        pipe, 'rasterrenderer', type='paletted', band='1', opacity='1', alphaBand='-1'
    )
    ET.SubElement(renderer, 'rasterTransparency')
    palette = ET.SubElement(renderer, 'colorPalette')
    for value, (name, (r, g, b)) in enumerate(
        zip(metadata.class_names, metadata.class_colors, strict=True)
    ):
        ET.SubElement(
            palette,
            'paletteEntry',
            value=str(value),
            color=f'#{r:02x}{g:02x}{b:02x}',
            alpha='255',
            label=name,
        )
    ET.SubElement(root, 'blendMode').text = '0'
    return "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n" + _xml(root)


def class_map_sidecars(
    path: str | os.PathLike[str], metadata: CheckpointMetadata
) -> dict[str, str]:
    """The sidecars of a class map (see :func:`sidecar_paths`) and their text.

    Args:
        path: the class map.
        metadata: the model's class names and colours.

    Returns:
        {sidecar path: content}.
    """
    pam, qml = sidecar_paths(path)
    return {pam: _pam_xml(metadata), qml: _qml(metadata)}


def class_writer(
    path: str | os.PathLike[str],
    metadata: CheckpointMetadata,
    georeferencing: Mapping[str, Any],
    overwrite: bool,
    tags: Mapping[str, str] | None = None,
) -> CogWriter:
    """Make a writer of a class map with colour table, class names and nodata.

    The class names are GDAL's category names and attribute table, in the
    sidecars of :func:`class_map_sidecars`, and the JSON band tag
    ``class_names``.

    Args:
        path: the output file.
        metadata: the model's classes and colours.
        georeferencing: the map's ``width``, ``height``, ``crs`` and
            ``transform``, as in a rasterio profile.
        overwrite: whether existing files (the map, its sidecars) may be
            replaced.
        tags: the map's metadata, e.g. :meth:`~glcgeo.provenance.Provenance.tags`.

    Returns:
        the writer.
    """
    dtype, nodata = class_dtype(metadata.num_classes)
    colormap = {i: (*rgb, 255) for i, rgb in enumerate(metadata.class_colors)}
    colormap[nodata] = (0, 0, 0, 0)
    return CogWriter(
        path,
        {**georeferencing, 'count': 1, 'dtype': dtype, 'nodata': nodata},
        overwrite=overwrite,
        overview_resampling='mode',
        colormap=colormap,
        descriptions=('class',),
        band_tags={'class_names': json.dumps(list(metadata.class_names))},
        tags=dict(tags or {}),
        sidecars=class_map_sidecars(path, metadata),
    )


#: Description of the band of :func:`probability_writer`'s *confidence*.
CONFIDENCE_BAND = 'confidence'


def probability_writer(
    path: str | os.PathLike[str],
    metadata: CheckpointMetadata,
    georeferencing: Mapping[str, Any],
    overwrite: bool,
    tags: Mapping[str, str] | None = None,
    confidence: bool = False,
) -> CogWriter:
    """Make a writer of per-class probabilities in percent, one band per class.

    Bands are plain grey (photometric MINISBLACK, whatever their count: GDAL
    would make 3 or 4 bytes bands RGB(A), a fourth class an alpha mask), named
    after their classes.

    Args:
        path: the output file.
        metadata: the model's classes.
        georeferencing: as for :func:`class_writer`.
        overwrite: whether an existing file may be replaced.
        tags: as for :func:`class_writer`.
        confidence: add a last band, :data:`CONFIDENCE_BAND`: the probability of
            each pixel's class in the map, in percent.

    Returns:
        the writer.
    """
    count = metadata.num_classes + confidence
    return CogWriter(
        path,
        {
            **georeferencing,
            'count': count,
            'dtype': 'uint8',
            'nodata': PROBABILITY_NODATA,
            'photometric': 'minisblack',
        },
        overwrite=overwrite,
        overview_resampling='average',
        descriptions=(*metadata.class_names, *[CONFIDENCE_BAND] * confidence),
        tags=dict(tags or {}),
        scales=(0.01,) * count,
    )


def write_rows(
    writers: list[CogWriter],
    accumulator: RowBandAccumulator,
    end: int,
    metadata: CheckpointMetadata,
) -> None:
    """Write the finished rows above scene row *end* to the class (and score) files.

    Class ids (and percentages, and the confidence band when the score writer
    has one more band than classes) are made on the accumulator's device; only
    they come back to the host.
    """
    class_writer, *probability_writers = writers
    top, scores, valid = accumulator.pop(end, normalize=bool(probability_writers))
    if not len(valid):
        return
    window = Window(0, top, valid.shape[1], valid.shape[0])
    dtype = class_writer.profile['dtype']
    best = class_ids(scores, metadata)
    # uint8 ids travel as such; wider ones as int32 (torch's unsigned types are few).
    ids = best.to(torch.uint8 if dtype == 'uint8' else torch.int32)
    ids = ids.masked_fill(~valid, class_writer.profile['nodata'])
    class_writer.write(ids.cpu().numpy().astype(dtype, copy=False)[None], window)
    for writer in probability_writers:
        if writer.profile['count'] > metadata.num_classes:
            # The confidence band: the probability of the class mapped.
            scores = torch.cat([scores, scores.gather(0, best[None])])
        percent = torch.round(scores * 100).to(torch.uint8)
        percent = percent.masked_fill(~valid, PROBABILITY_NODATA)
        writer.write(percent.cpu().numpy(), window)


@dataclass
class SegmentationMap:
    """A class map in memory, with its georeferencing.

    Attributes:
        classes: [H, W] class ids, *nodata* where the input had no data.
        transform: pixel -> map affine transform (float64).
        crs: coordinate reference system of *transform*.
        nodata: the value marking pixels without data.
        metadata: the model's metadata (class names and colours).
        tags: the map's metadata tags (see :mod:`glcgeo.provenance`).

    """

    classes: np.ndarray
    transform: Affine
    crs: Any
    nodata: int
    metadata: CheckpointMetadata
    tags: dict[str, str] = field(default_factory=dict)

    def write(self, path: str | os.PathLike[str], overwrite: bool = False) -> None:
        """Write the map as a Cloud Optimized GeoTIFF with colour map and names.

        Its sidecars (:func:`class_map_sidecars`) are written beside it.

        Args:
            path: the output file.
            overwrite: whether an existing file may be replaced.

        """
        height, width = self.classes.shape
        georeferencing = {
            'width': width,
            'height': height,
            'crs': self.crs,
            'transform': self.transform,
        }
        with class_writer(
            path, self.metadata, georeferencing, overwrite, self.tags
        ) as writer:
            writer.write(self.classes[None], Window(0, 0, width, height))
            writer.finish()
            writer.commit()
