"""Streaming tiled inference of a segmentation model over a georeferenced raster.

:func:`predict_raster` reads a scene one grid row of tiles at a time (a
rasterio window over the scene's width), in a background thread ahead of the
model where that pays (:func:`reads_ahead`); on the model's device, it
normalises each such strip once, cuts its tiles into batches, predicts them,
blends overlapping tiles with Hann weights and picks each pixel's class, and
writes each band of finished rows as soon as no later tile touches it. Only
class ids (and percentages, when asked) come back to the host, and memory is
bounded by the tile size, batch size and scene width, not by the scene. The
output has exactly the input's size, CRS and transform (copied from the input
file, never from float32 tensors), is nodata wherever the input is, and is
published as a Cloud Optimized GeoTIFF only once complete.

The streaming is shared by every output made this way: a :class:`SceneOutput`
says what each batch's model output becomes and which files its blended rows go
to (:class:`ClassMapOutput` here, per-pixel embeddings in
:mod:`glcgeo.inference.embed`); :func:`open_scene`, :func:`stream_tiles` and
:func:`stream_unpublished` do the rest.

:func:`predict_dataset` does the same over a TorchGeo dataset and sampler, stitching
the patches in memory.

The module is long for one reason: both entry points share the batch loop
(:class:`_BatchPredictor`) and the device, batch-size and read-ahead policies,
which nothing else uses; split, each half would import the other's internals.
"""

import dataclasses
import itertools
import os
import threading
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, cast

import rasterio
import torch
from rasterio.windows import Window
from torch import Tensor, nn
from torchgeo.datasets import GeoDataset
from torchgeo.samplers import GeoSampler
from tqdm import tqdm

from ..checkpoints import BandMetadata, CheckpointMetadata, ModelMetadata
from ..errors import GlcgeoError, check_band_count, check_memory
from ..gdal_paths import gdal_options, is_url
from ..geometry import PixelGrid
from ..outputs import check_destination
from ..provenance import Provenance, creation_time
from ..rasters import open_raster
from .blending import RowBandAccumulator, tile_weights
from .patches import Patch, batch_patches, dataset_patch
from .reading import (
    SCENE_MARGIN,
    Placement,
    SceneReader,
    Strip,
    input_bands,
    normalize_input,
    pad_to_stride,
    prediction_grid,
    read_ahead,
)
from .tiling import Tile, TileGrid
from .writer import (
    CogWriter,
    SegmentationMap,
    class_dtype,
    class_ids,
    class_writer,
    probability_writer,
    write_rows,
)

__all__ = [
    'Buffer',
    'ClassMapOutput',
    'OpenScene',
    'PredictionSummary',
    'SceneOutput',
    'TileSink',
    'UnpublishedScene',
    'class_probabilities',
    'default_batch_size',
    'model_memory_format',
    'open_scene',
    'predict_dataset',
    'predict_raster',
    'predict_unpublished',
    'reads_ahead',
    'resolve_device',
    'stream_tiles',
    'stream_unpublished',
]

#: GDAL's block cache, in MB: its default (5% of RAM) would grow with the scene.
GDAL_CACHE_MB = 64


@dataclass(frozen=True)
class PredictionSummary:
    """What :func:`predict_raster` did.

    Attributes:
        destination: the class map written.
        probabilities: the per-class probability file written, if any.
        width: scene width in pixels.
        height: scene height in pixels.
        tiles: number of tiles in the grid.
        skipped_tiles: tiles skipped because they held no data.
        seconds: wall-clock time of the whole prediction.

    """

    destination: str
    probabilities: str | None
    width: int
    height: int
    tiles: int
    skipped_tiles: int
    seconds: float


def model_memory_format(device: torch.device) -> torch.memory_format | None:
    """The memory format prediction gives a model's weights and input on *device*.

    Channels-last on the CPU, where PyTorch's convolutions run faster in it (on
    the 2-core CI machine a 2048 x 2048 scene took 0.77 of the time with a U-Net
    ResNet-18, 0.81 with DeepLabV3+ ResNet-50; a 1 x 1 convolution over 4 bands
    took 35 times less). Elsewhere the model keeps its own (contiguous unless
    its user made it channels-last, as is usual for mixed precision on a GPU) and
    batches are contiguous, until channels-last is measured there.

    Args:
        device: where the model runs.

    Returns:
        the memory format, or None to leave the model's own.

    """
    return torch.channels_last if device.type == 'cpu' else None


#: Pixels per forward pass on the CPU: one 512 x 512 tile, or several smaller ones.
CPU_BATCH_PIXELS = 512 * 512


def default_batch_size(device: torch.device, tile_pixels: int) -> int:
    """The tiles per forward pass prediction takes on *device* unless told.

    On the CPU, as many as make :data:`CPU_BATCH_PIXELS` (one 512 px tile, four
    256 px ones): there a batch brings no parallelism beyond a tile's, and a
    512 px tile's activations (up to 16 MB for a ResNet-50 encoder) stay below
    the size from which glibc always hands freed memory back to the kernel (32
    MB), so forward passes reuse much of each other's memory instead of having
    fresh pages mapped and zeroed; smaller tiles are batched so that each
    forward pass still has that much work. On the 2-core CI machine ``glcgeo
    predict`` of a 2048 x 2048 scene (whole processes) with 512 px tiles took
    0.76 of the time of batches of 4 with DeepLabV3+ ResNet-50 and 0.93 with a
    U-Net ResNet-18, with a fifth less memory at peak; with 256 px tiles,
    batches of 1 took 1.04-1.06 times as long as batches of 4, and with 128 px
    ones 1.28 times as long as batches of 16. Four elsewhere, where a batch
    fills the device.

    Args:
        device: where the model runs.
        tile_pixels: pixels of a tile (height x width).

    Returns:
        the batch size.

    """
    if device.type == 'cpu':
        return max(1, CPU_BATCH_PIXELS // tile_pixels)
    return 4


def reads_ahead(device: torch.device, remote: bool = False) -> bool:
    """Whether prediction reads its input in a background thread, ahead of the model.

    It does where the model runs on another device than the CPU, whose work the
    reading then hides, and for a scene read over a network, whose waits take no
    core. A local scene predicted on the CPU is read in the calling thread: the
    model's threads take every core there, and a reader thread among them holds
    their parallel regions back by more than the reading takes. On the 2-core CI
    machine, reading in the calling thread took 0.95 of the time of reading ahead
    with a U-Net ResNet-18 (4096 px scene) and 0.92 with DeepLabV3+ ResNet-50
    (2048 px), 3 of 3 runs faster each.

    Args:
        device: where the model runs.
        remote: whether the input comes through GDAL's network or virtual file
            systems (:func:`~glcgeo.gdal_paths.is_url`).

    Returns:
        whether to read ahead with :func:`~glcgeo.inference.reading.read_ahead`.

    """
    return device.type != 'cpu' or remote


def _check_batch_size(batch_size: int | None) -> None:
    """Raise a :class:`GlcgeoError` unless *batch_size* is None or positive."""
    if batch_size is not None and batch_size < 1:
        raise GlcgeoError(f'batch size must be positive, got {batch_size}')


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Choose the device to run a model on.

    Args:
        device: a torch device, or None / ``'auto'`` for CUDA when available, else
            the CPU.

    Returns:
        the device.

    Raises:
        GlcgeoError: if the device name is not valid or not available.

    """
    if device is None or device == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        resolved = torch.device(device)
        torch.empty(0, device=resolved)
    except (RuntimeError, AssertionError) as error:
        reason = str(error).splitlines()[0]
        raise GlcgeoError(f'device {device} is not available ({reason})') from None
    return resolved


#: Hands out a tensor reused from batch to batch, on the model's device:
#: (name, shape, dtype) -> tensor (see :meth:`_BatchPredictor.buffer`).
Buffer = Callable[[str, Sequence[int], torch.dtype], Tensor]


class TileSink(Protocol):
    """Where predicted tiles go: a :class:`RowBandAccumulator`, or a sample of them."""

    def add(
        self, window: Window, scores: Tensor, weights: Tensor, valid: Tensor
    ) -> None:
        """Take one tile's scores (see :meth:`RowBandAccumulator.add`)."""


class SceneOutput(ABC):
    """What a scene streamed through a model becomes, tile by tile.

    :func:`stream_unpublished` runs the model over the scene's tiles in batches,
    turns each batch's output into float32 channels (:meth:`tile_scores`),
    blends overlapping tiles with Hann weights in a
    :class:`~glcgeo.inference.blending.RowBandAccumulator`, and hands each band
    of finished rows to :meth:`write_rows`, which writes them to the files of
    :meth:`writers`. :class:`ClassMapOutput` makes class maps (``glcgeo
    predict``), :class:`~glcgeo.inference.embed.EmbeddingOutput` per-pixel
    embeddings (``glcgeo embed``).

    .. versionadded:: 0.1
    """

    #: The files written, the main one first: it is renamed into place last.
    paths: list[str]
    #: Channels blended per pixel.
    channels: int
    #: float32 values per pixel of a batch besides its input (the model's output
    #: and the tile scores made from it), for the memory check.
    batch_channels: int

    @abstractmethod
    def tile_scores(self, output: Tensor, buffer: Buffer) -> Tensor:
        """The channels to blend of a batch of tiles.

        Args:
            output: the model's [B, *, H, W] output.
            buffer: reused tensors on the model's device.

        Returns:
            [B, :attr:`channels`, H, W] float32, channels first in memory.
        """

    @abstractmethod
    def writers(
        self,
        georeferencing: Mapping[str, Any],
        tags: Mapping[str, str],
        overwrite: bool,
    ) -> list[CogWriter]:
        """The writers of :attr:`paths`, in order, not yet entered.

        Args:
            georeferencing: the scene's ``width``, ``height``, ``crs`` and
                ``transform``.
            tags: the outputs' metadata (:meth:`Provenance.tags
                <glcgeo.provenance.Provenance.tags>`).
            overwrite: whether existing files may be replaced.
        """

    @abstractmethod
    def write_rows(
        self, writers: list[CogWriter], accumulator: RowBandAccumulator, end: int
    ) -> None:
        """Write the finished rows above scene row *end* (popped from *accumulator*)."""


def class_probabilities(
    logits: Tensor, metadata: CheckpointMetadata, buffer: Buffer
) -> Tensor:
    """Class probabilities [B, K, H, W] of a segmentation model's logits.

    Args:
        logits: [B, K, H, W] (one channel for a binary model).
        metadata: the model's task.
        buffer: reused tensors on the model's device.

    Returns:
        float32 probabilities, classes first in memory.
    """
    if metadata.task == 'binary':
        foreground = logits[:, :1].sigmoid()
        return torch.cat([1 - foreground, foreground], dim=1).float()
    # Classes first in memory (a channels-last model's output is copied): the
    # softmax over classes and the per-tile blending run several times faster.
    if not logits.is_contiguous():
        logits = buffer('logits', logits.shape, logits.dtype).copy_(logits)
    probabilities = buffer('probabilities', logits.shape, torch.float32)
    return torch.softmax(logits, dim=1, dtype=torch.float32, out=probabilities)


class ClassMapOutput(SceneOutput):
    """A class map, and per-class percentages when asked (``glcgeo predict``).

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        metadata: CheckpointMetadata,
        destination: str | os.PathLike[str],
        probabilities: str | os.PathLike[str] | None = None,
        confidence: bool = False,
    ) -> None:
        """Initialize a new ClassMapOutput.

        Args:
            metadata: the model's classes and colours.
            destination: the class map (see :func:`predict_raster`).
            probabilities: the per-class percentages, if any.
            confidence: add the confidence band to *probabilities*.

        Raises:
            GlcgeoError: if *destination* and *probabilities* are one file.
        """
        self.metadata = metadata
        self.paths = [os.fspath(destination)]
        if probabilities is not None:
            self.paths.append(os.fspath(probabilities))
        if len({os.path.realpath(path) for path in self.paths}) != len(self.paths):
            raise GlcgeoError('the class map and probabilities must be different files')
        self.confidence = confidence
        self.channels = metadata.num_classes
        self.batch_channels = 2 * metadata.num_classes

    def tile_scores(self, output: Tensor, buffer: Buffer) -> Tensor:
        """Class probabilities (see :func:`class_probabilities`)."""
        return class_probabilities(output, self.metadata, buffer)

    def writers(
        self,
        georeferencing: Mapping[str, Any],
        tags: Mapping[str, str],
        overwrite: bool,
    ) -> list[CogWriter]:
        """The class map's writer, and the probabilities' if asked."""
        destination, *probabilities = self.paths
        writers = [
            class_writer(destination, self.metadata, georeferencing, overwrite, tags)
        ]
        writers += [
            probability_writer(
                path, self.metadata, georeferencing, overwrite, tags, self.confidence
            )
            for path in probabilities
        ]
        return writers

    def write_rows(
        self, writers: list[CogWriter], accumulator: RowBandAccumulator, end: int
    ) -> None:
        """Class ids, and percentages (:func:`.writer.write_rows`)."""
        write_rows(writers, accumulator, end, self.metadata)


class _BatchPredictor:
    """Runs batches of tiles through the model and hands their scores to a sink.

    Tiles are copied into the batch as they are queued (so that nothing holds on
    to the strip they were cut from), and the batch's input and scores live in
    buffers allocated once and reused: on the CPU, fresh tensors of this size
    cost more in page faults than the softmax itself (a CUDA device caches its
    memory anyway).
    """

    def __init__(
        self,
        model: nn.Module,
        device: torch.device,
        tile_scores: Callable[[Tensor, Buffer], Tensor],
        sink: TileSink,
        batch_size: int,
    ) -> None:
        # In place, as nn.Module.to moves a model: the caller's model is used.
        self.memory_format = model_memory_format(device)
        self.model = model.eval().to(device)
        if self.memory_format is not None:
            self.model.to(memory_format=self.memory_format)
        self.device = device
        self.tile_scores = tile_scores
        self.sink = sink
        self.batch_size = batch_size
        self._weights: dict[tuple[Any, ...], Tensor] = {}
        self._buffers: dict[str, Tensor] = {}
        self._queued: list[Placement] = []
        # Whether the model has run a batch: it then takes its memory format.
        self._model_ran = False

    @property
    def idle(self) -> bool:
        """Whether every tile queued so far has been predicted."""
        return not self._queued

    def weights(self, placement: Placement, height: int, width: int) -> Tensor:
        """A tile's blending weights, on the device (made once per shape)."""
        key = (height, width, placement.edges)
        if key not in self._weights:
            weights = tile_weights(height, width, placement.edges)
            self._weights[key] = torch.from_numpy(weights).to(self.device)
        return self._weights[key]

    def buffer(
        self,
        name: str,
        shape: Sequence[int],
        dtype: torch.dtype,
        memory_format: torch.memory_format = torch.contiguous_format,
    ) -> Tensor:
        """A reused tensor of this shape, dtype and memory format, on the device."""
        buffer = self._buffers.get(name)
        if buffer is None or buffer.shape != tuple(shape) or buffer.dtype != dtype:
            buffer = torch.empty(
                tuple(shape),
                dtype=dtype,
                device=self.device,
                memory_format=memory_format,
            )
            self._buffers[name] = buffer
        return buffer

    def queue(self, image: Tensor, holds_data: Tensor, placement: Placement) -> None:
        """Add a tile to the batch; predict the batch once it is full.

        Args:
            image: [C, H, W] normalised tile, on the device; all tiles of one
                size.
            holds_data: [H, W] True where the tile holds data, on the device.
            placement: where the tile goes in the scene.

        """
        index = len(self._queued)
        shape = (self.batch_size, *image.shape)
        memory_format = self.memory_format or torch.contiguous_format
        self.buffer('image', shape, image.dtype, memory_format)[index] = image
        self.buffer('holds', (self.batch_size, *holds_data.shape), torch.bool)[
            index
        ] = holds_data
        self._queued.append(placement)
        if len(self._queued) == self.batch_size:
            self.flush()

    def flush(self) -> None:
        """Predict the tiles queued, if any."""
        if self._queued:
            count = len(self._queued)
            self.run(
                self._buffers['image'][:count],
                self._buffers['holds'][:count],
                self._queued,
            )
            self._queued = []

    def logits(self, image: Tensor) -> Tensor:
        """The model's output (logits, features) of a batch of normalised images.

        A model that fails on its first channels-last batch but not on the same
        batch contiguous (one that calls ``Tensor.view`` on its input, say) is
        given contiguous tensors from then on, with a warning; an error in both
        formats is the model's own, raised without a warning.
        """
        try:
            logits = self.model(image)
        except RuntimeError as error:
            if self._model_ran or self.memory_format != torch.channels_last:
                raise
            self.memory_format = torch.contiguous_format
            self.model.to(memory_format=torch.contiguous_format)
            self._buffers.pop('image', None)
            logits = self.model(image.contiguous())
            reason = str(error).splitlines()[0]
            warnings.warn(
                f'the model fails on channels-last input ({reason}); predicting '
                'in contiguous memory format, slower on a CPU',
                stacklevel=2,
            )
        self._model_ran = True
        return logits

    @torch.inference_mode()
    def run(
        self, image: Tensor, holds_data: Tensor, placements: Sequence[Placement]
    ) -> None:
        """Predict a batch of tiles and hand their scores to the sink.

        Args:
            image: [B, C, H, W] normalised tiles, on the device.
            holds_data: [B, H, W] True where the tiles hold data, on the device.
            placements: where each tile goes in the scene.

        """
        image = pad_to_stride(image)
        if self.memory_format is not None:
            # A no-op for the tiles queued here, already in it.
            image = image.contiguous(memory_format=self.memory_format)
        scores = self.tile_scores(self.logits(image), self.buffer)
        height, width = holds_data.shape[-2:]
        for placement, tile_scores, holds in zip(
            placements, scores, holds_data, strict=True
        ):
            rows, cols = placement.crop
            self.sink.add(
                placement.window,
                tile_scores[:, rows, cols],
                self.weights(placement, height, width)[rows, cols],
                holds[rows, cols],
            )


def _device_tiles(
    strips: Iterable[Strip], metadata: BandMetadata, device: torch.device
) -> Iterator[tuple[Tile, Placement | None, Tensor | None, Tensor | None]]:
    """Each tile of the grid, with its normalised pixels on the device.

    Each strip goes to the device and is normalised there once, however many
    tiles share its pixels.

    Yields:
        (tile, placement, [C, H, W] normalised pixels, [H, W] nodata mask); the
        last three None for a tile without data.
    """
    for strip in strips:
        if strip.data is None or strip.holds_data is None:
            for tile, _ in strip.tiles:
                yield tile, None, None, None
            continue
        holds = strip.holds_data.to(device, non_blocking=True)
        data = strip.data.to(device, non_blocking=True)
        image = normalize_input(data, holds, metadata)
        for tile, placement in strip.tiles:
            offset = int(tile.window.col_off) - strip.col_off
            cols = slice(offset, offset + int(tile.window.width))
            yield tile, placement, image[:, :, cols], holds[:, cols]


class UnpublishedScene:
    """A scene's outputs, predicted into temporary files and not yet published.

    :meth:`publish` converts them to COGs and renames them onto their names (the
    class map last); it may run in another thread while the next scene is
    predicted. :meth:`discard` removes the temporary files instead, from any
    thread.

    Attributes:
        summary: what the prediction did; its ``seconds`` without publishing.

    """

    def __init__(
        self, writers: list[CogWriter], cleanup: ExitStack, summary: PredictionSummary
    ) -> None:
        """Initialize a new UnpublishedScene.

        Args:
            writers: the main output's writer (the class map), then the
                others' (the probabilities), as :attr:`SceneOutput.paths`.
            cleanup: closes the writers and removes their temporary files.
            summary: what the prediction did.

        """
        self.writers = writers
        self.cleanup = cleanup
        self.summary = summary
        self._lock = threading.Lock()
        self._publishing = False
        self._discarded = False

    def publish(self) -> None:
        """Convert the outputs to COGs and rename them onto their names.

        The temporary files are removed whatever happens.

        Raises:
            GlcgeoError: if the scene was discarded.
            OSError: if the outputs cannot be written (e.g. a full disk).
            rasterio.errors.RasterioError: likewise, as GDAL reports it.
        """
        with self._lock:
            if self._discarded:
                raise GlcgeoError('the scene was discarded', self.summary.destination)
            self._publishing = True
        with (
            self.cleanup,
            # In another thread, the caller's rasterio.Env does not apply.
            rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB),
        ):
            for writer in self.writers:
                writer.finish()
            # The class map last: once it stands under its name, every output
            # of the scene is complete.
            for writer in reversed(self.writers):
                writer.commit()

    def discard(self) -> None:
        """Remove the temporary files, before publishing or while it runs.

        Publishing that has started in another thread loses its files: it then
        fails, or publishes complete outputs; it is not waited for.
        """
        with self._lock:
            self._discarded = True
            publishing = self._publishing
        if publishing:
            for writer in self.writers:
                writer.discard()
        else:
            self.cleanup.close()


@dataclass(frozen=True)
class OpenScene:
    """A scene open for streaming, its grid and how its batches are made.

    Attributes:
        src: the open raster.
        bands: 1-based bands read.
        grid: the tile grid (:func:`~glcgeo.inference.reading.prediction_grid`).
        device: where the model runs.
        batch_size: tiles per forward pass.

    """

    src: rasterio.DatasetReader
    bands: list[int]
    grid: TileGrid
    device: torch.device
    batch_size: int


@contextmanager
def open_scene(
    source: str | os.PathLike[str],
    metadata: ModelMetadata,
    *,
    tile_size: int,
    overlap: int,
    batch_size: int | None,
    device: str | torch.device | None,
    channels: int,
    batch_channels: int,
) -> Iterator[OpenScene]:
    """Open a scene for :func:`stream_tiles`, checking it against the model.

    Args:
        source: the raster, a file or a URL.
        metadata: the model's bands.
        tile_size: tile side in pixels (see :func:`predict_raster`).
        overlap: pixels shared by neighbouring tiles.
        batch_size: tiles per forward pass; None for :func:`default_batch_size`.
        device: torch device, or None / ``'auto'``.
        channels: channels blended per pixel (0 for none).
        batch_channels: see :attr:`SceneOutput.batch_channels`.

    Yields:
        the open scene.

    Raises:
        GlcgeoError: for an unreadable input, bands that do not fit the model,
            a batch size below 1, an unavailable device, or tiles that would not
            fit in memory.
    """
    _check_batch_size(batch_size)
    torch_device = resolve_device(device)
    with (
        rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB, **gdal_options(os.fspath(source))),
        open_raster(source) as src,
    ):
        bands = input_bands(src, metadata, os.fspath(source))
        grid = prediction_grid(src.height, src.width, tile_size, overlap)
        if batch_size is None:
            tile_pixels = grid.tile_height * grid.tile_width
            batch_size = default_batch_size(torch_device, tile_pixels)
        # At least: a batch's input and outputs, and the rows in progress.
        tiles = f'{grid.tile_height:,} x {grid.tile_width:,} pixels'
        check_memory(
            4
            * batch_size
            * grid.tile_height
            * grid.tile_width
            * (len(bands) + batch_channels)
            + 4 * 2 * grid.tile_height * src.width * channels,
            f'batches of {batch_size} tiles of {tiles} (--batch-size, --tile-size)',
            'choose a smaller --tile-size or --batch-size',
        )
        yield OpenScene(src, bands, grid, torch_device, batch_size)


def stream_tiles(
    scene: OpenScene,
    model: nn.Module,
    metadata: ModelMetadata,
    source: str | os.PathLike[str],
    tile_scores: Callable[[Tensor, Buffer], Tensor],
    sink: TileSink,
    *,
    nodata: float | None = None,
    finished: Callable[[int], None] | None = None,
    keep: Callable[[int], bool] | None = None,
    progress: bool = True,
) -> int:
    """Run the model over a scene's tiles, in batches, into a sink.

    The scene is read a strip of a grid row at a time (ahead of the model where
    :func:`reads_ahead`), each strip normalised on the model's device once; tiles
    without data are not predicted.

    Args:
        scene: the scene, from :func:`open_scene`.
        model: takes [B, C, H, W] normalised tiles (H and W multiples of 32).
        metadata: the model's band statistics.
        source: the raster's name as the user gave it, for errors.
        tile_scores: makes the model's output of a batch into the channels
            handed to *sink* (e.g. :meth:`SceneOutput.tile_scores`).
        sink: takes each tile's scores.
        nodata: input nodata value overriding the file's own.
        finished: called with each scene row above which no later tile adds
            anything, as soon as the rows are known to be finished, and with the
            scene's height at the end.
        keep: predict only the tiles whose grid index it accepts (all if None).
        progress: show a progress bar (tiles, ETA) on stderr.

    Returns:
        the tiles skipped for holding no data.
    """
    grid, height, device = scene.grid, scene.src.height, scene.device
    # Strips of a batch (4 tiles at least): their tiles share the reads of
    # their overlaps, and their memory does not grow with the scene's width.
    reader = SceneReader(
        scene.src,
        scene.bands,
        nodata,
        source,
        tiles_per_read=max(scene.batch_size, 4),
    )
    predictor = _BatchPredictor(model, device, tile_scores, sink, scene.batch_size)
    strips = reader.strips(grid, pin_memory=device.type == 'cuda')
    if reads_ahead(device, is_url(source)):
        # The reader thread is the only user of src until it stops.
        strips = read_ahead(strips)
    skipped = 0
    with (
        closing(strips),
        tqdm(total=len(grid), unit='tile', disable=not progress, leave=False) as bar,
    ):
        tiles = _device_tiles(strips, metadata, device)
        for index, (tile, placement, image, holds) in enumerate(tiles):
            if placement is None or image is None or holds is None:
                skipped += 1
            elif keep is None or keep(index):
                predictor.queue(image, holds, placement)
            if finished is not None and predictor.idle:
                # The rows that no tile after this one touches are final.
                finished(min(grid.rows_finished(tile) - SCENE_MARGIN, height))
            bar.update()
        predictor.flush()
    if finished is not None:
        finished(height)
    return skipped


def stream_unpublished(
    model: nn.Module,
    metadata: ModelMetadata,
    source: str | os.PathLike[str],
    output: SceneOutput,
    *,
    tile_size: int = 512,
    overlap: int = 128,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    nodata: float | None = None,
    overwrite: bool = False,
    progress: bool = True,
    provenance: Provenance | None = None,
    settings: Mapping[str, Any] | None = None,
) -> UnpublishedScene:
    """Stream a scene through a model into *output*'s files, left unpublished.

    The output has the input's size, CRS and transform (copied from the input
    file, never from float32 tensors). Rows are written as soon as no later
    tile touches them, so memory is bounded by the tile size, batch size and
    scene width, not by the scene.

    Args:
        model: the network (see :func:`stream_tiles`), set to eval mode and moved
            to *device* in place (in :func:`model_memory_format`).
        metadata: the model's bands and statistics, for reading and provenance.
        source: the input raster.
        output: what the scene becomes.
        tile_size: see :func:`predict_raster`.
        overlap: see :func:`predict_raster`.
        batch_size: see :func:`predict_raster`.
        device: see :func:`predict_raster`.
        nodata: see :func:`predict_raster`.
        overwrite: whether existing outputs may be replaced.
        progress: show a progress bar.
        provenance: the model file, for the outputs' tags; None for none.
        settings: more settings for the provenance tags, besides tiling,
            batch, device and nodata.

    Returns:
        the outputs in temporary files, to publish.

    Raises:
        GlcgeoError: see :func:`predict_raster`; checked before any tile is
            predicted, and nothing is left behind.
    """
    start = time.perf_counter()
    created = creation_time()
    for path in output.paths:
        check_destination(path, overwrite, inputs=[source])
    with open_scene(
        source,
        metadata,
        tile_size=tile_size,
        overlap=overlap,
        batch_size=batch_size,
        device=device,
        channels=output.channels,
        batch_channels=output.batch_channels,
    ) as scene:
        src, grid = scene.src, scene.grid
        # A batch across two grid rows keeps the band from the first row's top to
        # the second row's bottom (a larger batch grows the buffers).
        offsets = grid.row_offsets
        stride = max((b - a for a, b in itertools.pairwise(offsets)), default=0)
        accumulator = RowBandAccumulator(
            src.width,
            output.channels,
            device=scene.device,
            capacity=stride + grid.tile_height,
        )
        geo = {
            'width': src.width,
            'height': src.height,
            'crs': src.crs,
            'transform': src.transform,
        }
        all_settings = {
            'tile_size': tile_size,
            'overlap': overlap,
            'batch_size': scene.batch_size,
            'device': str(scene.device),
            'nodata': nodata,
            **(settings or {}),
        }
        tags = (provenance or Provenance()).tags(
            source, metadata, all_settings, created
        )
        # The writers' temporary files go when *outputs* closes: on any error
        # here, or once the scene is published.
        with ExitStack() as outputs:
            writers = [
                outputs.enter_context(writer)
                for writer in output.writers(geo, tags, overwrite)
            ]
            skipped = stream_tiles(
                scene,
                model,
                metadata,
                source,
                output.tile_scores,
                accumulator,
                nodata=nodata,
                finished=lambda end: output.write_rows(writers, accumulator, end),
                progress=progress,
            )
            cleanup = outputs.pop_all()
    summary = PredictionSummary(
        destination=output.paths[0],
        probabilities=output.paths[1] if len(output.paths) > 1 else None,
        width=src.width,
        height=src.height,
        tiles=len(grid),
        skipped_tiles=skipped,
        seconds=time.perf_counter() - start,
    )
    return UnpublishedScene(writers, cleanup, summary)


def predict_unpublished(
    model: nn.Module,
    metadata: CheckpointMetadata,
    source: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    *,
    probabilities: str | os.PathLike[str] | None = None,
    tile_size: int = 512,
    overlap: int = 128,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    nodata: float | None = None,
    overwrite: bool = False,
    progress: bool = True,
    confidence: bool = False,
    provenance: Provenance | None = None,
) -> UnpublishedScene:
    """Predict a scene as :func:`predict_raster` does, leaving it unpublished.

    Takes :func:`predict_raster`'s arguments and raises its errors; nothing is
    left behind when it raises.

    Returns:
        the outputs in temporary files, to publish.

    """
    return stream_unpublished(
        model,
        metadata,
        source,
        ClassMapOutput(metadata, destination, probabilities, confidence),
        tile_size=tile_size,
        overlap=overlap,
        batch_size=batch_size,
        device=device,
        nodata=nodata,
        overwrite=overwrite,
        progress=progress,
        provenance=provenance,
    )


def predict_raster(
    model: nn.Module,
    metadata: CheckpointMetadata,
    source: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    *,
    probabilities: str | os.PathLike[str] | None = None,
    tile_size: int = 512,
    overlap: int = 128,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    nodata: float | None = None,
    overwrite: bool = False,
    progress: bool = True,
    confidence: bool = False,
    provenance: Provenance | None = None,
) -> PredictionSummary:
    """Predict a class map of a raster scene, tile by tile, into a COG.

    The output has the input's width, height, CRS and transform; class ids are the
    smallest unsigned dtype that fits (uint8 up to 255 classes) with its largest
    value as nodata, written wherever the input has no data (every band equal to
    nodata, NaN, or masked by the file's internal mask). It carries a colour table
    and the class names (band 1 tag ``class_names``, JSON), and two sidecars:
    ``<destination>.aux.xml`` with GDAL's category names and attribute table, and
    a QGIS style ``<destination stem>.qml`` (see
    :func:`~glcgeo.inference.writer.class_map_sidecars`). Every output carries the
    provenance tags of :meth:`Provenance.tags <glcgeo.provenance.Provenance.tags>`.
    Tiles holding no data are not predicted.

    Args:
        model: segmentation model taking [B, C, H, W] normalised images (H and W
            multiples of 32) and returning [B, K, H, W] logits; set to eval mode
            and moved to *device* in place (in :func:`model_memory_format`).
        metadata: the model's bands, normalisation, classes and colours.
        source: input raster with the bands the model takes (see metadata.bands).
        destination: output GeoTIFF; written under a temporary name in its folder
            and renamed when complete.
        probabilities: optional output of per-class probabilities, one band per
            class (named after it, plain grey), uint8 percent (0-100, scale
            0.01), nodata 255.
        tile_size: tile side in pixels, rounded up to a multiple of 32 (the extra
            pixels widen the overlap).
        overlap: pixels shared by neighbouring tiles, blended with Hann weights.
        batch_size: tiles per forward pass; None for
            :func:`default_batch_size` (on a CPU one 512 px tile or as many
            smaller ones as make its pixels, 4 on a GPU).
        device: torch device, or None / ``'auto'`` for CUDA when available.
        nodata: input nodata value overriding the file's own.
        overwrite: whether existing outputs may be replaced.
        progress: show a progress bar (tiles, ETA) on stderr.
        confidence: add a last band ``confidence`` to *probabilities*: the
            probability of the class mapped (the highest, unless it is the
            ignored class), in percent.
        provenance: the model file, for the outputs' tags; None for none.

    Returns:
        a summary of the run.

    Raises:
        GlcgeoError: for a missing or unreadable input, a band count that does not
            fit the model, a missing or read-only output folder, or an existing
            output without *overwrite*; checked before any tile is predicted, and
            nothing is left behind.

    """
    start = time.perf_counter()
    scene = predict_unpublished(
        model,
        metadata,
        source,
        destination,
        probabilities=probabilities,
        tile_size=tile_size,
        overlap=overlap,
        batch_size=batch_size,
        device=device,
        nodata=nodata,
        overwrite=overwrite,
        progress=progress,
        confidence=confidence,
        provenance=provenance,
    )
    scene.publish()
    return dataclasses.replace(scene.summary, seconds=time.perf_counter() - start)


def predict_dataset(
    model: nn.Module,
    metadata: CheckpointMetadata,
    dataset: GeoDataset,
    sampler: GeoSampler,
    *,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    nodata: float | None = None,
    progress: bool = False,
    provenance: Provenance | None = None,
) -> SegmentationMap:
    """Predict a class map over a TorchGeo dataset's bounds, patch by patch.

    Patches are the sampler's queries (e.g. a
    :class:`~torchgeo.samplers.GriddedPatchSampler` with a stride smaller than its
    size); each is placed by its query's float64 map coordinates on the dataset's
    pixel grid, predicted whole and blended with Hann weights over its part inside
    the dataset's bounds. The map is held in memory
    ([K, H, W] float32 scores while stitching): for large scenes, use
    :func:`predict_raster`.

    Args:
        model: segmentation model (see :func:`predict_raster`).
        metadata: the model's normalisation, classes and colours; the dataset picks
            the bands, so ``metadata.bands`` is not used.
        dataset: a TorchGeo raster dataset returning ``image`` [C, H, W] raw values
            (no normalising transform: *metadata* normalises).
        sampler: yields the patches, in the dataset's CRS; all of one size.
        batch_size: patches per forward pass; None for
            :func:`default_batch_size`.
        device: torch device, or None / ``'auto'``.
        nodata: nodata value of the raw images (defaults to the dataset's).
        progress: show a progress bar.
        provenance: the model file, for the map's tags; None for none.

    Returns:
        the class map on the dataset's grid (origin at the top-left of its bounds).

    Raises:
        GlcgeoError: if the dataset's band count does not fit the model.

    """
    x_bounds, y_bounds, _ = dataset.bounds
    grid = PixelGrid(x0=x_bounds.start, y0=y_bounds.stop, res=dataset.res)
    scene = grid.window(x_bounds.start, y_bounds.start, x_bounds.stop, y_bounds.stop)
    width, height = int(scene.width), int(scene.height)
    if nodata is None:
        # A glcgeo mosaic's nodata in force (the files' or the one given), else
        # a TorchGeo dataset's override.
        nodata = getattr(dataset, 'file_nodata', getattr(dataset, 'nodata', None))
    _check_batch_size(batch_size)
    torch_device = resolve_device(device)

    def pixel_window(query: object) -> Window:
        """A patch's pixel window on the dataset's grid, from its float64 bounds."""
        x, y = cast(tuple[slice, ...], query)[:2]
        return grid.window(x.start, y.start, x.stop, y.stop)

    queries = iter(sampler)
    first = next(queries, None)
    if first is not None:
        queries = itertools.chain([first], queries)
    if batch_size is None:
        # The patches' pixels, from the first query (without one, none to batch).
        tile_pixels = CPU_BATCH_PIXELS
        if first is not None:
            window = pixel_window(first)
            tile_pixels = int(window.width * window.height)
        batch_size = default_batch_size(torch_device, max(1, tile_pixels))
    accumulator = RowBandAccumulator(width, metadata.num_classes, device=torch_device)
    predictor = _BatchPredictor(
        model,
        torch_device,
        lambda logits, buffer: class_probabilities(logits, metadata, buffer),
        accumulator,
        batch_size,
    )

    def patches() -> Iterable[Patch | None]:
        for query in queries:
            data = dataset[query]['image'].numpy()
            check_band_count(
                'the dataset has', len(data), 'the model takes', metadata.in_channels
            )
            window = pixel_window(query)
            row, col = int(window.row_off), int(window.col_off)
            yield dataset_patch(data, nodata, row, col, height, width)

    batches = batch_patches(patches(), batch_size)
    if reads_ahead(torch_device):
        batches = read_ahead(batches)
    with (
        closing(batches),
        tqdm(
            total=len(sampler), unit='patch', disable=not progress, leave=False
        ) as bar,
    ):
        for batch in batches:
            if batch.data is not None and batch.holds_data is not None:
                data = batch.data.to(torch_device)
                holds_data = batch.holds_data.to(torch_device)
                predictor.run(
                    normalize_input(data, holds_data, metadata),
                    holds_data,
                    [patch.placement for patch in batch.patches],
                )
            bar.update(batch.items)
    _, scores, valid = accumulator.pop(height, normalize=False)
    dtype, class_nodata = class_dtype(metadata.num_classes)
    classes = class_ids(scores, metadata).masked_fill(~valid, class_nodata)
    # A dataset's paths are its files or folders (a dataset of datasets has none).
    paths = getattr(dataset, 'paths', [])
    settings = {'batch_size': batch_size, 'device': str(torch_device), 'nodata': nodata}
    tags = (provenance or Provenance()).tags(paths, metadata, settings)
    return SegmentationMap(
        classes.cpu().numpy().astype(dtype),
        grid.affine,
        dataset.crs,
        class_nodata,
        metadata,
        tags,
    )
