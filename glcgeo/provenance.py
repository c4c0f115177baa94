"""Provenance: what made an output, in the metadata tags GIS tools show.

A :class:`Provenance` names the model file of a run (its name and SHA-256, read
once); :meth:`Provenance.tags` adds, for each output, the glcgeo version, the
creation time (UTC), the input, the band statistics and the settings used. Every
raster glcgeo predicts carries these tags (``rasterio.open(path).tags()``,
``gdalinfo``, QGIS's layer properties). The creation time is
``SOURCE_DATE_EPOCH`` (seconds since 1970, UTC) where that variable is set, as
reproducible builds do, so that outputs made twice compare byte for byte.

Example::

    provenance = Provenance.of_checkpoint('model.ckpt')
    predict_raster(model, metadata, 'scene.tif', 'map.tif', provenance=provenance)
"""

import datetime
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import urlsplit

from . import __version__
from .errors import GlcgeoError, given_name
from .gdal_paths import is_url

if TYPE_CHECKING:
    from .checkpoints import ModelMetadata

__all__ = ['Provenance', 'creation_time', 'file_sha256']

#: Bytes hashed at a time.
_CHUNK = 1 << 20


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's bytes, in hexadecimal."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _source_name(source: str | os.PathLike[str]) -> str:
    """A local input as its absolute path; a URL without query nor fragment.

    An input glcgeo made (a band stack) is written as the user named it
    (:func:`~glcgeo.errors.given_name`). A URL's query may hold a signature or
    a token: it is never written.
    """
    text = given_name(source)
    if is_url(text):
        return urlsplit(text)._replace(query='', fragment='').geturl()
    return os.path.abspath(text)


def creation_time() -> datetime.datetime:
    """Now, in UTC, or the time in ``SOURCE_DATE_EPOCH`` where it is set.

    Raises:
        GlcgeoError: if ``SOURCE_DATE_EPOCH`` is not whole seconds.
    """
    epoch = os.environ.get('SOURCE_DATE_EPOCH')
    if not epoch:
        return datetime.datetime.now(datetime.UTC)
    if not epoch.isdigit():
        raise GlcgeoError(
            f'SOURCE_DATE_EPOCH must be whole seconds since 1970, got {epoch!r}'
        )
    return datetime.datetime.fromtimestamp(int(epoch), datetime.UTC)


def _json(value: Any) -> str:
    return json.dumps(list(value) if isinstance(value, tuple) else value)


@dataclass(frozen=True)
class Provenance:
    """The model file that made a run's outputs.

    Attributes:
        checkpoint: the checkpoint's file name (without its folder), None when
            the model did not come from a file.
        checkpoint_sha256: the checkpoint's SHA-256, hexadecimal.

    .. versionadded:: 0.1
    """

    checkpoint: str | None = None
    checkpoint_sha256: str | None = None

    @classmethod
    def of_checkpoint(cls, path: str | os.PathLike[str]) -> Self:
        """The provenance of outputs made by the model of a checkpoint file.

        Args:
            path: the checkpoint; it is read whole, once.

        Returns:
            its file name and SHA-256.
        """
        return cls(os.path.basename(os.fspath(path)), file_sha256(path))

    def tags(
        self,
        source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        metadata: 'ModelMetadata',
        settings: Mapping[str, Any],
        created: datetime.datetime | None = None,
    ) -> dict[str, str]:
        """The metadata tags of one output.

        Args:
            source: the input: a local path (written absolute) or a URL
                (written without its query, which may hold credentials); several
                are written as a JSON list.
            metadata: the model, bands and band statistics used.
            settings: the options that shaped the output (e.g. ``tile_size``,
                ``overlap``, ``batch_size``), written as one JSON object.
            created: the creation time; None for :func:`creation_time`.

        Returns:
            ``glcgeo_version``, ``created`` (ISO 8601, UTC), ``source``,
            ``checkpoint`` and ``checkpoint_sha256`` (when known), ``model``
            (architecture and backbone), ``bands``, ``band_mean`` and
            ``band_std`` (JSON lists, ``null`` when not set) and ``settings``
            (JSON).
        """
        moment = created or creation_time()
        tags = {
            'glcgeo_version': __version__,
            'created': moment.astimezone(datetime.UTC).isoformat(timespec='seconds'),
            'source': _source_name(source)
            if isinstance(source, str | os.PathLike)
            else json.dumps([_source_name(s) for s in source]),
        }
        if self.checkpoint is not None:
            tags['checkpoint'] = self.checkpoint
        if self.checkpoint_sha256 is not None:
            tags['checkpoint_sha256'] = self.checkpoint_sha256
        tags |= {
            'model': f'{metadata.model} {metadata.backbone}',
            'bands': _json(metadata.bands),
            'band_mean': _json(metadata.band_mean),
            'band_std': _json(metadata.band_std),
            'settings': json.dumps(dict(settings)),
        }
        return tags
