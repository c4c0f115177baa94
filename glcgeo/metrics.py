"""Segmentation accuracy from one global confusion matrix.

Remote-sensing land-cover maps are scored on every evaluated pixel at once: the
confusion matrix is summed over all tiles of a split (and over processes under DDP)
before any ratio is taken. Averaging per-tile scores, or counting a class absent from
a tile as an IoU of 0 (both done in the GLCNet authors' code) would bias the result
towards tiles with few classes.

Example::

    metric = SegmentationMetrics(num_classes=3, class_names=['water', 'veg', 'bare'])
    metric.update(logits, mask)  # [B, K, H, W] logits or [B, H, W] class ids
    scores = metric.compute()  # {'OA': ..., 'Kappa': ..., 'mIoU': ..., 'F1_water': ...}
"""

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics.classification import MulticlassConfusionMatrix

__all__ = ['SegmentationMetrics', 'confusion_matrix_metrics']


def confusion_matrix_metrics(
    confmat: Tensor, class_names: Sequence[str] | None = None
) -> dict[str, Tensor]:
    """Overall accuracy, Cohen's Kappa, IoU and F1 from a confusion matrix.

    Classes that appear neither in the reference nor in the predictions have an
    undefined (NaN) IoU and F1, and are left out of the means; a class that is
    predicted but absent from the reference has IoU and F1 of 0.

    Args:
        confmat: [K, K] pixel counts, ``confmat[i, j]`` = reference class *i*
            predicted as class *j* (torchmetrics' convention).
        class_names: one name per class, used in the per-class keys (defaults to
            the class indexes).

    Returns:
        float64 scalars: ``OA`` (overall accuracy), ``Kappa`` (Cohen's), ``mIoU`` and
        ``mF1`` (means over the defined classes), and ``IoU_<name>``, ``F1_<name>``
        per class. All are NaN when the matrix is empty.

    Raises:
        ValueError: if the matrix is not square or *class_names* has the wrong length.

    """
    if confmat.ndim != 2 or confmat.shape[0] != confmat.shape[1]:
        raise ValueError(f'confusion matrix must be square, got {tuple(confmat.shape)}')
    num_classes = confmat.shape[0]
    names = [str(i) for i in range(num_classes)] if class_names is None else class_names
    if len(names) != num_classes:
        raise ValueError(f'{len(names)} class names given for {num_classes} classes')
    counts = confmat.double()
    total = counts.sum()
    true_positive = counts.diagonal()
    reference = counts.sum(dim=1)
    predicted = counts.sum(dim=0)
    overall = true_positive.sum() / total
    # Agreement expected by chance from the two marginal distributions.
    chance = (reference * predicted).sum() / total**2
    if chance == 1:
        # A single class everywhere in both maps: agreement is perfect.
        kappa = torch.ones((), dtype=torch.float64)
    else:
        kappa = (overall - chance) / (1 - chance)
    # 0 / 0 gives NaN for classes in neither map, which nanmean then skips.
    iou = true_positive / (reference + predicted - true_positive)
    f1 = 2 * true_positive / (reference + predicted)
    scores = {
        'OA': overall,
        'Kappa': kappa,
        'mIoU': iou.nanmean(),
        'mF1': f1.nanmean(),
    }
    for name, class_iou, class_f1 in zip(names, iou, f1, strict=True):
        scores[f'IoU_{name}'] = class_iou
        scores[f'F1_{name}'] = class_f1
    return scores


class SegmentationMetrics(MulticlassConfusionMatrix):
    """OA, Kappa, mIoU and per-class F1/IoU of a segmentation, from one matrix.

    A torchmetrics :class:`~torchmetrics.classification.MulticlassConfusionMatrix`
    accumulates the global confusion matrix (pixels of *ignore_index* skipped,
    summed across processes under DDP), and :meth:`compute` derives every score
    from it with :func:`confusion_matrix_metrics`. Put it in a
    :class:`~torchmetrics.MetricCollection` with a prefix (``val_``) to log the
    scores under ``val_OA``, ``val_Kappa`` ...

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        ignore_index: int | None = None,
        **kwargs: Any,
    ) -> None:
        """Initialize a new SegmentationMetrics.

        Args:
            num_classes: number of real classes K (class ids 0 to K - 1).
            class_names: one name per class, used in the per-class keys.
            ignore_index: reference value of pixels left out (nodata, unlabelled).
            **kwargs: further arguments of torchmetrics' ``Metric``.

        Raises:
            ValueError: if *class_names* does not have *num_classes* names.

        """
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(
                f'{len(class_names)} class names given for {num_classes} classes'
            )
        super().__init__(num_classes=num_classes, ignore_index=ignore_index, **kwargs)
        self.class_names = None if class_names is None else list(class_names)

    def compute(self) -> dict[str, Tensor]:  # type: ignore[override]
        """Compute the scores from the accumulated confusion matrix.

        Returns:
            the scores of :func:`confusion_matrix_metrics`.

        """
        return confusion_matrix_metrics(self.confmat, self.class_names)
