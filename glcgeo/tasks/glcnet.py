"""GLCNet self-supervised pretraining as a TorchGeo task."""

from typing import Annotated, Any

from lightning.pytorch.utilities.types import OptimizerLRScheduler
from torch import Tensor
from torch.optim import Adam
from torch.optim.lr_scheduler import CosineAnnealingLR
from torchgeo.tasks import BaseTask

from ..arguments import (
    EncoderName,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    Range,
    check_arguments,
)
from ..errors import GlcgeoError, check_band_count
from ..losses import GLCNetLoss
from ..models import ABLATIONS, MATCHINGS, GLCNet

__all__ = ['GLCNetTask']


class GLCNetTask(BaseTask):
    """GLCNet: global style and local matching contrastive pretraining.

    Li et al., "Global and Local Contrastive Self-Supervised Learning for Semantic
    Segmentation of HR Remote Sensing Images", IEEE TGRS 60 (2022). The network is
    segmentation_models_pytorch's DeepLabV3Plus (as TorchGeo's
    :class:`~torchgeo.tasks.SemanticSegmentation` builds it), so encoder and decoder
    transfer (see :mod:`glcgeo.export`). Train it with
    :class:`~glcgeo.datamodules.GLCNetDataModule`, under ``glcgeo pretrain`` or
    ``torchgeo fit --config``.

    The learning rate is scaled by the number of processes (the paper: 1e-3 per
    GPU with batch 256 per GPU) and follows a cosine schedule to *eta_min* over
    all training steps.

    .. versionadded:: 0.1
    """

    monitor = 'train_loss'

    def __init__(
        self,
        backbone: EncoderName = 'resnet50',
        in_channels: PositiveInt = 4,
        ablation: str = 'full',
        matching: str = 'ground',
        region_size: PositiveFloat = 48.0,
        lam: Annotated[float, Range(0, 1)] = 0.5,
        temperature: PositiveFloat = 0.5,
        decoupled: bool = False,
        gather_distributed: bool = True,
        lr: PositiveFloat = 1e-3,
        weight_decay: NonNegativeFloat = 1e-5,
        betas: Annotated[tuple[float, float], Range(0, 1, high_open=True)] = (
            0.9,
            0.99,
        ),
        eta_min: NonNegativeFloat = 4e-8,
        band_mean: list[float] | None = None,
        band_std: list[float] | None = None,
        bands: list[int] | None = None,
        band_dtype: str | None = None,
    ) -> None:
        """Initialize a new GLCNetTask.

        Args:
            backbone: encoder name of segmentation_models_pytorch (ResNet-50 in the
                paper).
            in_channels: number of input bands.
            ablation: 'full', 'no_style' (global branch on the channel mean only),
                'global_only' or 'local_only'.
            matching: 'ground' (regions cover the same ground in both views) or
                'centre' (the authors' boxes of *region_size* pixels around
                matched centres, which cover different ground at different scales).
            region_size: side in pixels of the authors' centre-matched boxes.
            lam: weight of the global loss; the local loss gets ``1 - lam``.
            temperature: NT-Xent temperature.
            decoupled: use the decoupled NT-Xent (positive left out of the
                denominator, the authors' last version) instead of SimCLR's.
            gather_distributed: gather embeddings across processes (with gradient)
                so that a global batch behaves alike on 1 or k processes.
            lr: Adam learning rate per process.
            weight_decay: Adam weight decay.
            betas: Adam betas.
            eta_min: final learning rate of the cosine schedule.
            band_mean: per-band mean of raw values (filled from the data module's
                statistics when None, and saved with the weights).
            band_std: per-band standard deviation of raw values (likewise).
            bands: 1-based band indexes of the input files (likewise).
            band_dtype: dtype of the input files' raw values (likewise).

        Raises:
            SettingError: naming an argument out of range (see the annotations)
                or an unknown backbone.
            GlcgeoError: for an unknown ablation or matching.
        """
        check_arguments(GLCNetTask.__init__, locals())
        if ablation not in ABLATIONS:
            raise GlcgeoError(
                f'unknown ablation {ablation!r}; choose one of {", ".join(ABLATIONS)}'
            )
        if matching not in MATCHINGS:
            raise GlcgeoError(
                f'unknown matching {matching!r}; choose one of {", ".join(MATCHINGS)}'
            )
        super().__init__()

    def configure_models(self) -> None:
        """Build the GLCNet network."""
        hp = self.hparams
        self.model = GLCNet(
            backbone=hp['backbone'],
            in_channels=hp['in_channels'],
            ablation=hp['ablation'],
            matching=hp['matching'],
            region_size=hp['region_size'],
        )

    def configure_losses(self) -> None:
        """Build the global + local contrastive loss."""
        hp = self.hparams
        self.criterion = GLCNetLoss(
            lam=hp['lam'],
            temperature=hp['temperature'],
            decoupled=hp['decoupled'],
            gather_distributed=hp['gather_distributed'],
        )

    def on_fit_start(self) -> None:
        """Check the data against the model and record its statistics.

        Raises:
            GlcgeoError: if the mosaic's band count differs from *in_channels*.
        """
        datamodule = getattr(self.trainer, 'datamodule', None)
        if datamodule is None or getattr(datamodule, 'band_stats', None) is None:
            return
        stats = datamodule.band_stats
        check_band_count(
            'the mosaic has',
            len(stats.mean),
            'the model expects in_channels =',
            self.hparams['in_channels'],
            stats.files[0] if stats.files else None,
        )
        if self.hparams['band_mean'] is None:
            self.hparams.update(datamodule.band_metadata.to_hyperparameters())

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """Compute the GLCNet loss of one batch of view pairs.

        Args:
            batch: augmented ``image1``, ``image2`` and region ``boxes1``,
                ``boxes2`` (view pixels).
            batch_idx: index of the batch.

        Returns:
            the loss.
        """
        outputs = self.model(
            batch['image1'],
            batch['image2'],
            batch['boxes1'],
            batch['boxes2'],
            batch.get('valid_pixels1'),
            batch.get('valid_pixels2'),
        )
        losses = self.criterion(outputs)
        batch_size = batch['image1'].shape[0]
        self.log_dict(
            {f'train_{name}': value for name, value in losses.items()},
            batch_size=batch_size,
            prog_bar=True,
            # Each rank's loss is its share of the global one: log their mean.
            sync_dist=True,
        )
        loss: Tensor = losses['loss']
        return loss

    def configure_optimizers(self) -> OptimizerLRScheduler:
        """Adam with the learning rate scaled by world size, cosine to *eta_min*.

        Returns:
            optimizer and per-step learning rate scheduler.
        """
        hp = self.hparams
        world_size = self.trainer.world_size if self._trainer is not None else 1
        optimizer = Adam(
            self.parameters(),
            lr=hp['lr'] * world_size,
            betas=tuple(hp['betas']),
            weight_decay=hp['weight_decay'],
            # One kernel for all parameters: ~4x faster than the default loop
            # on a CPU (where it is not the default), as on CUDA.
            fused=self.device.type in ('cpu', 'cuda'),
        )
        total_steps = 1
        if self._trainer is not None:
            total_steps = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = CosineAnnealingLR(
            optimizer, T_max=total_steps, eta_min=hp['eta_min']
        )
        return {
            'optimizer': optimizer,
            'lr_scheduler': {'scheduler': scheduler, 'interval': 'step'},
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Save the statistics filled in at fit start with the hyperparameters.

        Args:
            checkpoint: the checkpoint being written.
        """
        checkpoint['hyper_parameters'] = dict(self.hparams)
