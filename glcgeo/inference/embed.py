"""Per-pixel embeddings of scenes from a pretrained network, as COGs.

The embedding of a pixel is the output of the pretrained DeepLabV3+ decoder
(:class:`DecoderFeatures`): its 256 channels at stride 4, where the decoder has
fused the ASPP's context (stride 16) with the encoder's stride-4 features, the
finest scale it has, upsampled to pixels as the segmentation head upsamples
(bilinear, ``align_corners=True``). It is exactly what a segmentation head sees:
fine-tuning fits a 1 x 1 convolution on it, so a linear classifier on the
embeddings is such a head. GLCNet's local loss trains this map directly (its
head's 1 x 1 convolution of it, pooled over matched regions); the ASPP alone
(stride 16) would blur field edges and roads over 16 pixels.

:func:`embed_raster` streams a scene through the network exactly as
:func:`~glcgeo.inference.predict_raster` does (the same tiles, mirrored margin,
Hann blending, row bands and host path:
:func:`~glcgeo.inference.predict.stream_unpublished` with an
:class:`EmbeddingOutput`), into a COG of float16 bands: half the size of
float32, with 3 significant digits, much finer than the features' spread between
pixels, and with no range to calibrate before the scene is seen (an int8
quantisation would need the range of every band first). Pixels without data are
NaN (the nodata value).

``dims`` reduces the embeddings to their first principal components: the PCA is
fitted on a seeded sample of the scene's pixels (:func:`sample_embeddings`: up
to :data:`PCA_PIXELS` pixels from up to :data:`PCA_TILES` tiles), and each tile
is projected on the model's device before blending (blending is an affine
combination, so this equals projecting the blended embeddings, and the rows in
progress hold N channels, not 256). The PCA (mean, components, explained
variance) is stored in the file's ``pca`` tag (:class:`PCA`), so that the
components can be mapped back to the decoder's channels.

Example (:func:`~glcgeo.inference.pca.write_preview` draws the preview)::

    model, metadata = load_embedding_network('pretrain/checkpoints/last.ckpt')
    embed_raster(model, metadata, 'scene.tif', 'embeddings.tif', dims=16)
    write_preview('embeddings.tif', 'embeddings.png')
"""

import dataclasses
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from rasterio.windows import Window
from torch import Tensor, nn

from ..checkpoints import ModelMetadata, read_checkpoint, state_dict_misfit, weights_of
from ..errors import GlcgeoError
from ..outputs import check_destination
from ..provenance import Provenance
from .blending import RowBandAccumulator
from .pca import PCA, PCA_PIXELS, fit_pca
from .predict import (
    Buffer,
    PredictionSummary,
    SceneOutput,
    UnpublishedScene,
    open_scene,
    stream_tiles,
    stream_unpublished,
)
from .scenes import SceneJob, SceneResult, run_scenes
from .writer import CogWriter

__all__ = [
    'EMBEDDING_NODATA',
    'PCA_TILES',
    'DecoderFeatures',
    'EmbeddingOutput',
    'embed_raster',
    'embed_scenes',
    'embed_unpublished',
    'load_embedding_network',
    'output_channels',
    'sample_embeddings',
]

#: Nodata value of the embeddings (float16).
EMBEDDING_NODATA = math.nan
#: Most tiles the PCA sample is drawn from (a seeded random choice of the grid's).
PCA_TILES = 16


class DecoderFeatures(nn.Module):
    """A DeepLabV3+'s decoder features, upsampled to pixels: per-pixel embeddings.

    The network GLCNet pretrains and TorchGeo's ``SemanticSegmentation`` builds
    (segmentation_models_pytorch, output stride 16), without its segmentation
    head's 1 x 1 convolution: the decoder's stride-4 map, upsampled 4 times
    by the head's own bilinear upsampling.

    .. versionadded:: 0.1
    """

    def __init__(self, backbone: str = 'resnet50', in_channels: int = 4) -> None:
        """Initialize a new DecoderFeatures, with random weights.

        Args:
            backbone: smp encoder name.
            in_channels: number of input bands.
        """
        super().__init__()
        import segmentation_models_pytorch as smp

        network = smp.DeepLabV3Plus(
            encoder_name=backbone,
            encoder_weights=None,
            in_channels=in_channels,
            classes=1,
            encoder_output_stride=16,
        )
        self.encoder = network.encoder
        self.decoder = network.decoder
        head = network.segmentation_head
        self.upsample = head[1]
        #: Channels of the embeddings.
        self.channels: int = head[0].in_channels

    def forward(self, image: Tensor) -> Tensor:
        """Embed each pixel.

        Args:
            image: [B, C, H, W] normalised images, H and W multiples of 16.

        Returns:
            [B, :attr:`channels`, H, W] embeddings.
        """
        return self.upsample(self.decoder(self.encoder(image)))


def load_embedding_network(
    path: str | os.PathLike[str],
) -> tuple[DecoderFeatures, ModelMetadata]:
    """Load the embedding network of a pretrained checkpoint or exported weights.

    Args:
        path: a GLCNet pretraining checkpoint, glcgeo weights (``glcgeo
            export``) or a DeepLabV3+ segmentation checkpoint: any layout of
            :func:`~glcgeo.checkpoints.read_weights` with a whole decoder.

    Returns:
        (the network in eval mode on the CPU; its bands and statistics, model
        ``'deeplabv3+'``).

    Raises:
        GlcgeoError: if the file is no such checkpoint, or its decoder is not
            pretrained whole (a global-only pretraining trains the ASPP only,
            SimCLR and MoCo no decoder at all).
    """
    weights = weights_of(read_checkpoint(path), path)
    try:
        network = DecoderFeatures(weights.backbone, weights.in_channels)
    except (KeyError, ValueError, RuntimeError) as error:
        reason = str(error).splitlines()[0]
        raise GlcgeoError(f'cannot build the network ({reason})', path) from None
    if not weights.decoder:
        raise GlcgeoError(
            'holds no pretrained decoder (an encoder only): embeddings need a '
            'GLCNet pretraining with its local branch, or its export',
            path,
        )
    for part, state in (('encoder', weights.encoder), ('decoder', weights.decoder)):
        misfit = state_dict_misfit(getattr(network, part), state, strict=True)
        if misfit:
            raise GlcgeoError(
                f'its {part} does not fit DeepLabV3+ {weights.backbone} '
                f'({misfit}); a global-only pretraining trains part of the '
                'decoder only',
                path,
            )
    network.encoder.load_state_dict(weights.encoder)
    network.decoder.load_state_dict(weights.decoder)
    metadata = ModelMetadata(
        model='deeplabv3+',
        backbone=weights.backbone,
        in_channels=weights.in_channels,
        bands=None if weights.bands is None else tuple(weights.bands),
        band_mean=None if weights.band_mean is None else tuple(weights.band_mean),
        band_std=None if weights.band_std is None else tuple(weights.band_std),
        band_dtype=weights.band_dtype,
    )
    return network.eval(), metadata


@torch.inference_mode()
def output_channels(model: nn.Module, in_channels: int) -> int:
    """Channels of a network's per-pixel output, from one 64 px tile of zeros.

    Args:
        model: takes [B, C, H, W] and returns [B, D, H, W].
        in_channels: C.

    Returns:
        D (a :class:`DecoderFeatures`' own :attr:`~DecoderFeatures.channels`).
    """
    channels = getattr(model, 'channels', None)
    if isinstance(channels, int):
        return channels
    device = next(model.parameters(), torch.empty(0)).device
    was_training = model.training
    try:
        output = model.eval()(torch.zeros(1, in_channels, 64, 64, device=device))
    finally:
        model.train(was_training)
    return int(output.shape[1])


class _PixelSample:
    """A seeded sample of the pixels of the tiles handed to it (a tile sink)."""

    def __init__(self, per_tile: int, limit: int, seed: int) -> None:
        self.per_tile = per_tile
        self.limit = limit
        self.generator = torch.Generator().manual_seed(seed)
        self.parts: list[Tensor] = []
        self.count = 0

    def add(
        self, window: Window, scores: Tensor, weights: Tensor, valid: Tensor
    ) -> None:
        """Keep up to *per_tile* random pixels of a tile that hold data."""
        holding = valid.flatten().nonzero().flatten()
        take = min(len(holding), self.per_tile, self.limit - self.count)
        if take <= 0:
            return
        # Drawn on the CPU, so that every device samples the same pixels.
        chosen = torch.randperm(len(holding), generator=self.generator)[:take]
        pixels = holding[chosen.to(holding.device)]
        self.parts.append(scores.flatten(1)[:, pixels].T.double().cpu())
        self.count += take


def sample_embeddings(
    model: nn.Module,
    metadata: ModelMetadata,
    source: str | os.PathLike[str],
    *,
    seed: int = 0,
    tiles: int = PCA_TILES,
    pixels: int = PCA_PIXELS,
    tile_size: int = 512,
    overlap: int = 128,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    nodata: float | None = None,
    progress: bool = True,
) -> Tensor:
    """Embeddings of a seeded random sample of a scene's pixels.

    The model runs over a seeded random choice of *tiles* tiles of the grid
    :func:`embed_raster` uses, each tile alone (not blended); each gives up to
    ``pixels // tiles`` random pixels holding data. Where the tiles chosen hold
    no data (a scene mostly empty), every tile is sampled.

    Args:
        model: the embedding network (see :func:`embed_raster`).
        metadata: its bands and statistics.
        source: the scene.
        seed: seed of the choice of tiles and pixels.
        tiles: most tiles sampled.
        pixels: most pixels sampled.
        tile_size: see :func:`embed_raster`.
        overlap: see :func:`embed_raster`.
        batch_size: see :func:`embed_raster`.
        device: see :func:`embed_raster`.
        nodata: see :func:`embed_raster`.
        progress: show a progress bar.

    Returns:
        [n, D] float64 embeddings, n <= *pixels* (0 for a scene without data).
    """
    channels = output_channels(model, metadata.in_channels)
    with open_scene(
        source,
        metadata,
        tile_size=tile_size,
        overlap=overlap,
        batch_size=batch_size,
        device=device,
        channels=0,
        batch_channels=channels,
    ) as scene:
        chosen = torch.randperm(
            len(scene.grid), generator=torch.Generator().manual_seed(seed)
        )[:tiles].tolist()
        for keep in (set(chosen), None):
            sample = _PixelSample(max(1, pixels // tiles), pixels, seed)
            stream_tiles(
                scene,
                model,
                metadata,
                source,
                _embedding_scores,
                sample,
                nodata=nodata,
                keep=None if keep is None else keep.__contains__,
                progress=progress,
            )
            if sample.parts or len(chosen) == len(scene.grid):
                break
    if not sample.parts:
        return torch.zeros((0, channels), dtype=torch.float64)
    return torch.cat(sample.parts)


def _embedding_scores(output: Tensor, buffer: Buffer) -> Tensor:
    """A batch's embeddings as float32, channels first in memory."""
    if output.dtype != torch.float32:
        return output.float().contiguous()
    if not output.is_contiguous():
        return buffer('embeddings', output.shape, torch.float32).copy_(output)
    return output


class EmbeddingOutput(SceneOutput):
    """Per-pixel embeddings, or their principal components, as float16 bands.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        destination: str | os.PathLike[str],
        channels: int,
        pca: PCA | None = None,
        description: str = '',
    ) -> None:
        """Initialize a new EmbeddingOutput.

        Args:
            destination: the COG to write.
            channels: channels of the network's output (D).
            pca: project onto these components before blending; None to write
                the D channels.
            description: what the embeddings are, for the ``embedding`` tag.
        """
        self.paths = [os.fspath(destination)]
        self.pca = pca
        self.channels = channels if pca is None else pca.dims
        self.batch_channels = channels + self.channels
        self.description = description
        # The projection's weight and bias on the model's device, made once.
        self._projection: tuple[Tensor, Tensor] | None = None

    @property
    def descriptions(self) -> tuple[str, ...]:
        """Band names: ``pc_0 ..`` for principal components, else ``embedding_0 ..``."""
        prefix = 'embedding' if self.pca is None else 'pc'
        return tuple(f'{prefix}_{i}' for i in range(self.channels))

    def tile_scores(self, output: Tensor, buffer: Buffer) -> Tensor:
        """The embeddings as float32, projected onto the PCA's components if any."""
        features = _embedding_scores(output, buffer)
        if self.pca is None:
            return features
        if self._projection is None or self._projection[0].device != features.device:
            self._projection = self.pca.convolution(features)
        return F.conv2d(features, *self._projection).contiguous()

    def writers(
        self,
        georeferencing: Mapping[str, Any],
        tags: Mapping[str, str],
        overwrite: bool,
    ) -> list[CogWriter]:
        """The embeddings' writer: float16, NaN nodata, a grey band per channel."""
        extra = {'embedding': self.description} if self.description else {}
        if self.pca is not None:
            extra['pca'] = self.pca.tag()
        writer = CogWriter(
            self.paths[0],
            {
                **georeferencing,
                'count': self.channels,
                'dtype': 'float16',
                'nodata': EMBEDDING_NODATA,
                'photometric': 'minisblack',
            },
            overwrite=overwrite,
            overview_resampling='average',
            descriptions=self.descriptions,
            tags={**tags, **extra},
            interleave='band',
        )
        return [writer]

    def write_rows(
        self, writers: list[CogWriter], accumulator: RowBandAccumulator, end: int
    ) -> None:
        """Write the blended embeddings of the finished rows, NaN without data."""
        top, values, valid = accumulator.pop(end)
        if not len(valid):
            return
        half = values.to(torch.float16).masked_fill(~valid, EMBEDDING_NODATA)
        window = Window(0, top, valid.shape[1], valid.shape[0])
        writers[0].write(half.cpu().numpy(), window)


def embed_unpublished(
    model: nn.Module,
    metadata: ModelMetadata,
    source: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    *,
    dims: int | None = None,
    seed: int = 0,
    tile_size: int = 512,
    overlap: int = 128,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    nodata: float | None = None,
    overwrite: bool = False,
    progress: bool = True,
    provenance: Provenance | None = None,
) -> UnpublishedScene:
    """Embed a scene as :func:`embed_raster` does, leaving it unpublished.

    Takes :func:`embed_raster`'s arguments and raises its errors; nothing is
    left behind when it raises.

    Returns:
        the embeddings in a temporary file, to publish.
    """
    check_destination(destination, overwrite, inputs=[source])
    channels = output_channels(model, metadata.in_channels)
    if dims is not None and not 1 <= dims <= channels:
        raise GlcgeoError(f'--dims must be 1 to {channels}, got {dims}')
    tiling: dict[str, Any] = {
        'tile_size': tile_size,
        'overlap': overlap,
        'batch_size': batch_size,
        'device': device,
        'nodata': nodata,
        'progress': progress,
    }
    pca = None
    if dims is not None:
        samples = sample_embeddings(model, metadata, source, seed=seed, **tiling)
        if len(samples) < 2:
            raise GlcgeoError(
                f'{len(samples)} pixels with data: too few to fit --dims on', source
            )
        pca = fit_pca(samples, dims, seed)
    description = (
        f'{metadata.model} {metadata.backbone} decoder features (stride 4, '
        'bilinear to pixels)'
    )
    return stream_unpublished(
        model,
        metadata,
        source,
        EmbeddingOutput(destination, channels, pca, description),
        overwrite=overwrite,
        provenance=provenance,
        settings={'dims': dims, 'seed': seed},
        **tiling,
    )


def embed_raster(
    model: nn.Module,
    metadata: ModelMetadata,
    source: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    *,
    dims: int | None = None,
    seed: int = 0,
    tile_size: int = 512,
    overlap: int = 128,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    nodata: float | None = None,
    overwrite: bool = False,
    progress: bool = True,
    provenance: Provenance | None = None,
) -> PredictionSummary:
    """Write per-pixel embeddings of a raster scene, tile by tile, into a COG.

    The scene is streamed as :func:`~glcgeo.inference.predict_raster` streams it
    (tiles, mirrored margin, Hann blending, row bands, memory bounded by the
    tile rows). The output has the input's width, height, CRS and transform: one
    float16 band per channel (``embedding_<i>``, or ``pc_<i>`` with *dims*),
    NaN where the input has no data, band-interleaved, with the provenance tags
    of :meth:`Provenance.tags <glcgeo.provenance.Provenance.tags>`, the tag
    ``embedding`` (what the channels are) and, with *dims*, ``pca``
    (:meth:`PCA.tag`).

    Args:
        model: takes [B, C, H, W] normalised images (H and W multiples of 32)
            and returns [B, D, H, W] per-pixel embeddings, e.g. a
            :class:`DecoderFeatures` from :func:`load_embedding_network`; set to
            eval mode and moved to *device* in place.
        metadata: the model's bands and normalisation.
        source: input raster with the bands the model takes.
        destination: output GeoTIFF; written under a temporary name in its folder
            and renamed when complete.
        dims: write the first *dims* principal components instead of the D
            channels, fitted on a seeded sample of the scene's pixels
            (:func:`sample_embeddings`); None for all D channels.
        seed: seed of that sample.
        tile_size: tile side in pixels, rounded up to a multiple of 32.
        overlap: pixels shared by neighbouring tiles, blended with Hann weights.
        batch_size: tiles per forward pass; None for
            :func:`~glcgeo.inference.predict.default_batch_size`.
        device: torch device, or None / ``'auto'`` for CUDA when available.
        nodata: input nodata value overriding the file's own.
        overwrite: whether an existing output may be replaced.
        progress: show a progress bar (tiles, ETA) on stderr.
        provenance: the model file, for the tags; None for none.

    Returns:
        a summary of the run.

    Raises:
        GlcgeoError: for a missing or unreadable input, bands that do not fit
            the model, a missing or read-only output folder, an existing output
            without *overwrite*, or *dims* out of 1..D; checked before any tile
            is embedded, and nothing is left behind.
    """
    start = time.perf_counter()
    scene = embed_unpublished(
        model,
        metadata,
        source,
        destination,
        dims=dims,
        seed=seed,
        tile_size=tile_size,
        overlap=overlap,
        batch_size=batch_size,
        device=device,
        nodata=nodata,
        overwrite=overwrite,
        progress=progress,
        provenance=provenance,
    )
    scene.publish()
    return dataclasses.replace(scene.summary, seconds=time.perf_counter() - start)


def embed_scenes(
    model: nn.Module,
    metadata: ModelMetadata,
    jobs: Sequence[SceneJob],
    *,
    rank: int = 0,
    world_size: int = 1,
    skip_complete: bool = True,
    overwrite: bool = False,
    report: Callable[[SceneResult], None] | None = None,
    **options: Any,
) -> list[SceneResult]:
    """Embed one process's share of the scenes, each into its own file.

    As :func:`~glcgeo.inference.scenes.predict_scenes` (resumable, a failed
    scene reported while the others go on), with :func:`embed_raster`'s
    *options* (``dims``, ``seed``, ``tile_size`` ...).

    Returns:
        the results of this process's scenes, in job order.
    """

    def embed(job: SceneJob, replace: bool) -> UnpublishedScene:
        return embed_unpublished(
            model, metadata, job.source, job.destination, overwrite=replace, **options
        )

    return run_scenes(
        jobs,
        embed,
        rank=rank,
        world_size=world_size,
        skip_complete=skip_complete,
        overwrite=overwrite,
        report=report,
    )
