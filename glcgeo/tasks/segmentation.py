"""Fine-tuning a segmentation model from pretrained or random weights.

:class:`FinetuneTask` is TorchGeo's :class:`~torchgeo.tasks.SemanticSegmentation`
with the start weights glcgeo compares (random, glcgeo exports and GLCNet
pretraining checkpoints with or without their decoder, glcgeo segmentation
checkpoints, TorchGeo's SimCLR and MoCo checkpoints), scores from one global
confusion matrix (:class:`~glcgeo.metrics.SegmentationMetrics`), the paper's
schedule (Adam, learning rate x *lr_decay* per epoch), and the metadata that
``glcgeo predict`` reads back from its checkpoints.
"""

import inspect
from typing import Annotated, Literal

from lightning.pytorch.utilities.types import OptimizerLRScheduler
from torch.optim import Adam
from torch.optim.lr_scheduler import ExponentialLR
from torchgeo.tasks import SemanticSegmentation
from torchmetrics import MetricCollection

from ..arguments import EncoderName, PositiveFloat, PositiveInt, Range, check_arguments
from ..checkpoints import load_pretrained
from ..errors import GlcgeoError, check_band_count
from ..metrics import SegmentationMetrics

__all__ = ['TRANSFERS', 'FinetuneTask']

#: Which parts of a pretrained DeepLabV3+ start the fine-tuning. The authors
#: transfer the encoder (backbone and ASPP live in smp's encoder and decoder
#: respectively, so 'encoder+decoder' is the closest to their transfer).
TRANSFERS = ('encoder', 'encoder+decoder')


class FinetuneTask(SemanticSegmentation):
    """Semantic segmentation fine-tuned from glcgeo, SimCLR, MoCo or random weights.

    TorchGeo's :class:`~torchgeo.tasks.SemanticSegmentation` (the same smp model,
    loss and steps), with:

    * *weights*: a checkpoint path loaded by :func:`~glcgeo.checkpoints.load_pretrained`
      (TorchGeo itself loads encoders only and finds nothing in its own
      SimCLR/MoCo checkpoints);
    * metrics: OA, Kappa, mIoU, mF1 and per-class F1/IoU from one global
      confusion matrix, logged as ``{train,val,test}_<score>``; checkpoints are
      selected on ``val_Kappa``;
    * the paper's optimiser: Adam at *lr*, multiplied by *lr_decay* every epoch;
    * metadata for ``glcgeo predict`` in the hyperparameters: *bands*,
      *band_mean*, *band_std*, *class_names*, *class_colors*, *ignore_index*
      (filled from :class:`~glcgeo.datamodules.SegmentationDataModule` at fit start
      when not given).

    .. versionadded:: 0.1
    """

    monitor = 'val_Kappa'
    mode = 'max'

    def __init__(
        self,
        model: Literal[
            'unet', 'deeplabv3+', 'fcn', 'upernet', 'segformer', 'dpt'
        ] = 'deeplabv3+',
        backbone: EncoderName = 'resnet50',
        weights: str | None = None,
        transfer: str = 'encoder',
        in_channels: PositiveInt = 4,
        num_classes: PositiveInt = 2,
        class_names: list[str] | None = None,
        class_colors: list[list[int]] | None = None,
        ignore_index: int | None = 255,
        loss: Literal['ce', 'jaccard', 'focal', 'dice'] = 'ce',
        class_weights: list[float] | None = None,
        lr: PositiveFloat = 1e-4,
        lr_decay: Annotated[float, Range(0, 1, low_open=True)] = 0.98,
        freeze_backbone: bool = False,
        freeze_decoder: bool = False,
        bands: list[int] | None = None,
        band_mean: list[float] | None = None,
        band_std: list[float] | None = None,
        band_dtype: str | None = None,
    ) -> None:
        """Initialize a new FinetuneTask.

        Args:
            model: smp architecture (DeepLabV3+ in the paper).
            backbone: smp encoder name (ResNet-50 in the paper).
            weights: start weights: None for random, or a checkpoint path (glcgeo
                export, GLCNet pretraining checkpoint such as
                ``runs/x/checkpoints/last.ckpt``, glcgeo or TorchGeo segmentation
                checkpoint such as a fine-tuning run's ``model.ckpt``, TorchGeo
                SimCLR/MoCo checkpoint). Not saved in the hyperparameters, as in
                TorchGeo: a fine-tuned checkpoint reloads without it.
            transfer: 'encoder' or 'encoder+decoder' (pretrained decoder too).
            in_channels: number of input bands.
            num_classes: number of classes K (ids 0..K-1).
            class_names: one name per class.
            class_colors: one [r, g, b] (0-255) per class, for maps.
            ignore_index: mask value left out of loss and scores (nodata,
                unlabelled).
            loss: TorchGeo loss name.
            class_weights: cross-entropy weight of each class.
            lr: Adam learning rate (1e-4 in the paper).
            lr_decay: factor applied to the learning rate after each epoch (0.98).
            freeze_backbone: train the decoder and head only.
            freeze_decoder: train the head only (with *freeze_backbone*: a linear
                probe).
            bands: 1-based band indexes of the input files (for prediction).
            band_mean: per-band mean of raw values used to normalise inputs.
            band_std: per-band standard deviation of raw values.
            band_dtype: dtype of the input files' raw values (``'uint16'`` ...).

        Raises:
            SettingError: naming an argument out of range (see the annotations)
                or an unknown backbone.
            GlcgeoError: for an unknown transfer, names or colours that do not
                match *num_classes*, or start weights that do not fit.

        """
        check_arguments(FinetuneTask.__init__, locals())
        if transfer not in TRANSFERS:
            raise GlcgeoError(
                f'unknown transfer {transfer!r}; choose one of {", ".join(TRANSFERS)}'
            )
        for what, values in (('class names', class_names), ('colours', class_colors)):
            if values is not None and len(values) != num_classes:
                raise GlcgeoError(
                    f'{len(values)} {what} given for {num_classes} classes'
                )
        # Loaded in configure_models by glcgeo, not by TorchGeo (see the class doc).
        self.start_weights = weights
        super().__init__(
            model=model,
            backbone=backbone,
            weights=None,
            in_channels=in_channels,
            task='multiclass',
            num_classes=num_classes,
            labels=class_names,
            loss=loss,
            class_weights=class_weights,
            ignore_index=ignore_index,
            lr=lr,
            freeze_backbone=freeze_backbone,
            freeze_decoder=freeze_decoder,
        )

    def configure_models(self) -> None:
        """Build TorchGeo's model, then load the start weights, if any."""
        # Under LightningCLI (torchgeo fit), Lightning saves the given arguments of
        # this class only: fill in the parent's, which TorchGeo's steps read.
        parent = inspect.signature(SemanticSegmentation.__init__).parameters
        for name, parameter in parent.items():
            if name == 'weights':
                continue  # never saved, as in TorchGeo
            if parameter.default is not inspect.Parameter.empty:
                self.hparams.setdefault(name, parameter.default)
        self.hparams['task'] = 'multiclass'
        self.hparams['labels'] = self.hparams['class_names']
        super().configure_models()
        if self.start_weights is not None:
            load_pretrained(
                self.model,
                self.start_weights,
                decoder=self.hparams['transfer'] == 'encoder+decoder',
            )

    def configure_metrics(self) -> None:
        """Scores from one global confusion matrix per split (see class doc)."""
        names = self.hparams['class_names']
        metrics = MetricCollection(
            {
                'seg': SegmentationMetrics(
                    self.hparams['num_classes'],
                    class_names=names,
                    ignore_index=self.hparams['ignore_index'],
                )
            }
        )
        self.train_metrics = metrics.clone(prefix='train_')
        self.val_metrics = metrics.clone(prefix='val_')
        self.test_metrics = metrics.clone(prefix='test_')

    def on_fit_start(self) -> None:
        """Check the data against the model and record its metadata.

        Raises:
            GlcgeoError: if the data's band or class count differs from the model's.

        """
        datamodule = getattr(self.trainer, 'datamodule', None)
        stats = getattr(datamodule, 'band_stats', None)
        if datamodule is None or stats is None:
            return
        hp = self.hparams
        check_band_count(
            'the images have',
            len(stats.mean),
            'the model expects in_channels =',
            hp['in_channels'],
        )
        names = getattr(datamodule, 'class_names', None)
        if names is not None and len(names) != hp['num_classes']:
            raise GlcgeoError(
                f'the masks have {len(names)} classes but the model expects '
                f'num_classes={hp["num_classes"]}'
            )
        if hp['band_mean'] is None:
            hp.update(datamodule.band_metadata.to_hyperparameters())
        if hp['class_names'] is None and names is not None:
            hp['class_names'] = list(names)
            hp['labels'] = list(names)

    def configure_optimizers(self) -> OptimizerLRScheduler:
        """Adam with the learning rate multiplied by *lr_decay* after each epoch.

        Returns:
            optimizer and per-epoch scheduler.

        """
        optimizer = Adam(self.parameters(), lr=self.hparams['lr'])
        scheduler = ExponentialLR(optimizer, gamma=self.hparams['lr_decay'])
        return {
            'optimizer': optimizer,
            'lr_scheduler': {'scheduler': scheduler, 'interval': 'epoch'},
        }
