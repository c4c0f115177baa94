import math

import pytest
import torch
from torchmetrics import MetricCollection
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_cohen_kappa,
)

from glcgeo.metrics import SegmentationMetrics, confusion_matrix_metrics

# Reference classes in rows, predictions in columns:
#            pred 0  pred 1  pred 2 | reference total
#   ref 0       8       1       1   |  10
#   ref 1       2       6       0   |   8
#   ref 2       0       2       0   |   2
#   predicted  10       9       1   |  20
CONFMAT = torch.tensor([[8, 1, 1], [2, 6, 0], [0, 2, 0]])
# Worked by hand:
#   OA = (8 + 6 + 0) / 20 = 0.7
#   chance = (10*10 + 8*9 + 2*1) / 20**2 = 174 / 400 = 0.435
#   Kappa = (0.7 - 0.435) / (1 - 0.435) = 0.265 / 0.565 = 53 / 113
#   IoU = 8 / (10 + 10 - 8), 6 / (8 + 9 - 6), 0 / (2 + 1 - 0) = 2/3, 6/11, 0
#   F1 = 2*8 / (10 + 10), 2*6 / (8 + 9), 0 = 4/5, 12/17, 0
EXPECTED = {
    'OA': 0.7,
    'Kappa': 53 / 113,
    'IoU_water': 2 / 3,
    'IoU_veg': 6 / 11,
    'IoU_bare': 0.0,
    'mIoU': (2 / 3 + 6 / 11 + 0) / 3,
    'F1_water': 4 / 5,
    'F1_veg': 12 / 17,
    'F1_bare': 0.0,
    'mF1': (4 / 5 + 12 / 17 + 0) / 3,
}
NAMES = ['water', 'veg', 'bare']


def pixels_from_confmat(confmat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference and predicted class ids whose confusion matrix is *confmat*."""
    reference, predicted = [], []
    for i in range(confmat.shape[0]):
        for j in range(confmat.shape[1]):
            reference += [i] * int(confmat[i, j])
            predicted += [j] * int(confmat[i, j])
    return torch.tensor(reference), torch.tensor(predicted)


def test_scores_match_hand_computed_matrix() -> None:
    scores = confusion_matrix_metrics(CONFMAT, NAMES)
    assert set(scores) == set(EXPECTED)
    for key, value in EXPECTED.items():
        assert scores[key].item() == pytest.approx(value, abs=1e-12), key


def test_metric_accumulates_pixels_over_batches_and_skips_ignored() -> None:
    reference, predicted = pixels_from_confmat(CONFMAT)
    # Two "images" of 2 x 5 pixels, plus ignored pixels predicted as anything.
    reference = torch.cat([reference, torch.full((4,), 255)]).reshape(2, 3, 4)
    predicted = torch.cat([predicted, torch.tensor([0, 1, 2, 0])]).reshape(2, 3, 4)
    logits = torch.nn.functional.one_hot(predicted, 3).permute(0, 3, 1, 2).float()
    metric = SegmentationMetrics(3, NAMES, ignore_index=255)
    metric.update(logits[:1], reference[:1])
    metric.update(logits[1:], reference[1:])
    assert torch.equal(metric.confmat, CONFMAT)
    scores = metric.compute()
    for key, value in EXPECTED.items():
        assert scores[key].item() == pytest.approx(value, abs=1e-12), key
    # The same OA and Kappa as torchmetrics' own implementations.
    kept = reference != 255
    target, preds = reference[kept], predicted[kept]
    kappa = multiclass_cohen_kappa(preds, target, 3)
    accuracy = multiclass_accuracy(preds, target, 3, average='micro')
    assert scores['Kappa'].item() == pytest.approx(kappa.item(), abs=1e-6)
    assert scores['OA'].item() == pytest.approx(accuracy.item(), abs=1e-6)


def test_class_absent_from_both_maps_is_left_out_of_means() -> None:
    confmat = torch.tensor([[5, 1, 0], [1, 3, 0], [0, 0, 0]])
    scores = confusion_matrix_metrics(confmat)
    assert math.isnan(scores['IoU_2'].item())
    assert math.isnan(scores['F1_2'].item())
    # Mean of the two defined classes only: 5/7 and 3/5.
    assert scores['mIoU'].item() == pytest.approx((5 / 7 + 3 / 5) / 2)


def test_perfect_single_class_map_has_kappa_one() -> None:
    scores = confusion_matrix_metrics(torch.tensor([[7, 0], [0, 0]]))
    assert scores['OA'].item() == 1.0
    assert scores['Kappa'].item() == 1.0


def test_collection_prefixes_every_score() -> None:
    metrics = MetricCollection({'seg': SegmentationMetrics(3, NAMES)}, prefix='val_')
    reference, predicted = pixels_from_confmat(CONFMAT)
    metrics.update(predicted[None], reference[None])
    scores = metrics.compute()
    assert scores['val_Kappa'].item() == pytest.approx(53 / 113)
    assert 'val_F1_bare' in scores


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match='square'):
        confusion_matrix_metrics(torch.zeros(2, 3))
    with pytest.raises(ValueError, match='2 class names given for 3 classes'):
        SegmentationMetrics(3, ['a', 'b'])
