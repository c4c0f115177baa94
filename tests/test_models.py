import pytest
import torch
from torch import Tensor
from torchgeo.tasks import SemanticSegmentation

from glcgeo.losses import GLCNetLoss
from glcgeo.models import (
    ABLATIONS,
    GLCNet,
    centre_matched_boxes,
    pool_regions,
    style_vector,
)

SIZE = 64


@pytest.fixture(scope='module')
def views() -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(1)
    image = torch.randn(2, 4, SIZE, SIZE, generator=generator)
    boxes = torch.tensor(
        [
            [[0.0, 0.0, 16.0, 16.0], [8.0, 10.0, 40.5, 30.0], [30.0, 30.0, 64.0, 64.0]],
            [[4.0, 4.0, 20.0, 28.0], [33.3, 2.0, 60.0, 20.0], [10.0, 40.0, 26.0, 56.0]],
        ]
    )
    return {'image1': image, 'image2': image.flip(-1), 'boxes1': boxes, 'boxes2': boxes}


def test_style_vector() -> None:
    features = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    features[1, 2] = torch.tensor([[1.0, 5.0], [2.0, 0.0]])
    style = style_vector(features, with_variance=True)
    assert style.shape == (2, 6)
    # Channel (1, 2): values 1, 5, 2, 0 -> mean 2, unbiased variance 14 / 3.
    assert style[1, 2].item() == pytest.approx(2.0)
    assert style[1, 5].item() == pytest.approx(14 / 3)
    # Channel (0, 0): values 0, 1, 2, 3 -> mean 1.5, unbiased variance 5 / 3.
    assert style[0, 0].item() == pytest.approx(1.5)
    assert style[0, 3].item() == pytest.approx(5 / 3)
    torch.testing.assert_close(
        style_vector(features, with_variance=False), style[:, :3]
    )


def test_pool_regions_is_the_crop_mean() -> None:
    generator = torch.Generator().manual_seed(2)
    feature_map = torch.randn(2, 3, 32, 32, generator=generator)
    # Sides that are multiples of the 7 bins put the samples on pixel centres,
    # so RoI-align's average is exactly the mean of the cropped pixels.
    boxes = torch.tensor([[[3.0, 5.0, 17.0, 26.0]], [[0.0, 0.0, 28.0, 7.0]]])
    pooled = pool_regions(feature_map, boxes)
    expected = torch.stack(
        [
            feature_map[0, :, 5:26, 3:17].mean((1, 2)),
            feature_map[1, :, 0:7, 0:28].mean((1, 2)),
        ]
    )
    torch.testing.assert_close(pooled, expected)


def ground_field(x: Tensor, y: Tensor) -> Tensor:
    """A smooth, non-linear 2-channel field of ground coordinates (metres)."""
    return torch.stack(
        [torch.sin(x / 9) * torch.cos(y / 13), (x - 20) ** 2 / 900 + y / 50]
    )


def render(origin: tuple[float, float], pixel: float, size: int, flip: bool) -> Tensor:
    """Sample the field at a view's pixel centres (rows along +y, maybe mirrored)."""
    centres = torch.arange(size, dtype=torch.float64) + 0.5
    x = origin[0] + centres * pixel
    y = origin[1] + centres * pixel
    image = ground_field(x[None, :], y[:, None]).float()
    return image.flip(-1) if flip else image


def ground_to_pixels(
    box: tuple[float, float, float, float],
    origin: tuple[float, float],
    pixel: float,
    size: int,
    flip: bool,
) -> list[float]:
    x1, y1, x2, y2 = ((c - o) / pixel for c, o in zip(box, origin * 2, strict=True))
    if flip:
        x1, x2 = size - x2, size - x1
    return [x1, y1, x2, y2]


def test_local_matching_takes_the_same_ground() -> None:
    # View 1: 1 m pixels from (0, 0); view 2: 2 m pixels from (-20, -10), mirrored.
    view1 = {'origin': (0.0, 0.0), 'pixel': 1.0, 'size': 64, 'flip': False}
    view2 = {'origin': (-20.0, -10.0), 'pixel': 2.0, 'size': 48, 'flip': True}
    ground_boxes = [
        (10.0, 20.0, 34.0, 44.0),
        (30.0, 5.0, 58.0, 25.0),
        (3.0, 31.0, 27.0, 61.0),
    ]
    maps = [render(**view1)[None], render(**view2)[None]]
    boxes = [
        torch.tensor([[ground_to_pixels(b, **view) for b in ground_boxes]])
        for view in (view1, view2)
    ]
    pooled1 = pool_regions(maps[0], boxes[0])
    pooled2 = pool_regions(maps[1], boxes[1])
    # The exact ground mean of each box, by dense sampling of the field.
    expected = []
    for x1, y1, x2, y2 in ground_boxes:
        x = torch.linspace(x1, x2, 401, dtype=torch.float64)
        y = torch.linspace(y1, y2, 401, dtype=torch.float64)
        expected.append(ground_field(x[None, :], y[:, None]).mean((1, 2)))
    expected = torch.stack(expected).float()
    torch.testing.assert_close(pooled1, expected, atol=2e-3, rtol=0)
    torch.testing.assert_close(pooled2, expected, atol=2e-3, rtol=0)
    # The authors' centre matching (48-pixel boxes in both views) covers 48 m in
    # view 1 and 96 m in view 2, and takes visibly different ground.
    centred1 = pool_regions(maps[0], centre_matched_boxes(boxes[0], 48.0))
    centred2 = pool_regions(maps[1], centre_matched_boxes(boxes[1], 48.0))
    assert (centred1 - centred2).abs().max() > 0.1


def test_centre_matched_boxes() -> None:
    boxes = torch.tensor([[[10.0, 20.0, 30.0, 60.0]]], dtype=torch.float64)
    result = centre_matched_boxes(boxes, 48.0)
    assert result.dtype == torch.float64
    torch.testing.assert_close(
        result, torch.tensor([[[-4.0, 16.0, 44.0, 64.0]]], dtype=torch.float64)
    )


def test_keys_match_torchgeo_semantic_segmentation() -> None:
    ours = GLCNet(backbone='resnet18', in_channels=4).model
    theirs = SemanticSegmentation(
        model='deeplabv3+', backbone='resnet18', in_channels=4, num_classes=5
    ).model
    assert ours.encoder.output_stride == theirs.encoder.output_stride == 16
    for part in ('encoder', 'decoder'):
        ours_shapes = {k: v.shape for k, v in getattr(ours, part).state_dict().items()}
        theirs_shapes = {
            k: v.shape for k, v in getattr(theirs, part).state_dict().items()
        }
        assert ours_shapes == theirs_shapes


@pytest.mark.parametrize('ablation', ABLATIONS)
def test_ablations_train_every_trainable_parameter(
    views: dict[str, Tensor], ablation: str
) -> None:
    torch.manual_seed(0)
    model = GLCNet(backbone='resnet18', in_channels=4, ablation=ablation)
    outputs = model(**views)
    expected = {
        'full': {'global1', 'global2', 'local1', 'local2'},
        'no_style': {'global1', 'global2', 'local1', 'local2'},
        'global_only': {'global1', 'global2'},
        'local_only': {'local1', 'local2'},
    }[ablation]
    assert set(outputs) == expected
    for name, tensor in outputs.items():
        rows = 2 if name.startswith('global') else 2 * 3
        assert tensor.shape == (rows, 64)
    GLCNetLoss()(outputs)['loss'].backward()
    # Every trainable parameter gets a gradient (DDP requires it), and frozen ones
    # are exactly the decoder parts a variant does not train.
    for name, parameter in model.named_parameters():
        assert (parameter.grad is not None) == parameter.requires_grad, name
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    if ablation == 'global_only':
        assert frozen and all(
            n.startswith(('model.decoder.block', 'model.segmentation_head'))
            for n in frozen
        )
        assert model.trained_decoder_prefix == 'decoder.aspp.'
    else:
        assert not frozen
        assert model.trained_decoder_prefix == 'decoder.'


def test_no_style_reads_the_mean_only() -> None:
    full = GLCNet(backbone='resnet18', ablation='full')
    no_style = GLCNet(backbone='resnet18', ablation='no_style')
    assert full.global_head[0].in_features == 512
    assert no_style.global_head[0].in_features == 256
    assert [m.out_features for m in full.global_head[::2]] == [256, 64]
    assert [(m.in_features, m.out_features) for m in full.local_head[::2]] == [
        (64, 64),
        (64, 64),
    ]


def test_one_pass_over_both_views(views: dict[str, Tensor]) -> None:
    model = GLCNet(backbone='resnet18', in_channels=4)
    batch_sizes: list[int] = []
    model.model.encoder.register_forward_pre_hook(
        lambda module, inputs: batch_sizes.append(inputs[0].shape[0])
    )
    model(**views)
    assert batch_sizes == [4]


def test_rows_pair_up_across_views(views: dict[str, Tensor]) -> None:
    torch.manual_seed(0)
    model = GLCNet(backbone='resnet18', in_channels=4).eval()
    image, boxes = views['image1'], views['boxes1']
    with torch.no_grad():
        same = model(image, image, boxes, boxes)
        permuted = model(image, image, boxes, boxes[:, [2, 0, 1]])
    torch.testing.assert_close(same['global1'], same['global2'])
    torch.testing.assert_close(same['local1'], same['local2'])
    # Regions are image-major: row i * R + r is region r of image i.
    order = torch.tensor([2, 0, 1, 5, 3, 4])
    torch.testing.assert_close(permuted['local2'], same['local1'][order])


def test_centre_matching_replaces_the_extent(views: dict[str, Tensor]) -> None:
    torch.manual_seed(0)
    image, boxes = views['image1'], views['boxes1']
    shrunk = (centre_matched_boxes(boxes, 8.0) + boxes) / 2  # same centres, other size
    outputs = {}
    for matching in ('ground', 'centre'):
        torch.manual_seed(0)
        model = GLCNet(backbone='resnet18', matching=matching, region_size=16.0).eval()
        with torch.no_grad():
            outputs[matching] = model(image, image, boxes, shrunk)
    torch.testing.assert_close(outputs['centre']['local1'], outputs['centre']['local2'])
    assert not torch.allclose(outputs['ground']['local1'], outputs['ground']['local2'])


@pytest.mark.parametrize(
    ('kwargs', 'message'),
    [
        ({'ablation': 'no_local'}, 'full, no_style, global_only, local_only'),
        ({'matching': 'centroid'}, 'ground, centre'),
        ({'region_size': 0.0}, 'region_size'),
    ],
)
def test_invalid_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GLCNet(backbone='resnet18', **kwargs)


def test_region_features_equal_pooling_the_full_size_map(
    views: dict[str, Tensor],
) -> None:
    torch.manual_seed(0)
    model = GLCNet(backbone='resnet18', in_channels=4).eval()
    image, boxes = views['image1'], views['boxes1']
    with torch.no_grad():
        decoded = model.model.decoder(model.model.encoder(image))
        fast = model.region_features(decoded, boxes, image.shape[-2:])
        reference = pool_regions(model.model(image), boxes)
    # Both are means of a bilinear interpolant of the same stride-4 map; they
    # differ by the interpolation of the upsampled pixels: well under 1 %.
    scale = reference.abs().max()
    torch.testing.assert_close(fast / scale, reference / scale, atol=1e-2, rtol=0)
    assert ((fast - reference).abs().mean() / scale) < 2e-3


def test_weighted_style_leaves_out_nodata_positions() -> None:
    features = torch.randn(2, 8, 4, 4)
    ones = torch.ones(2, 1, 4, 4)
    # All weights 1: the authors' statistics (unbiased variance).
    torch.testing.assert_close(
        style_vector(features, weights=ones), style_vector(features)
    )
    # Weight 0: as if the position were not there.
    weights = ones.clone()
    weights[:, :, :, 3] = 0
    torch.testing.assert_close(
        style_vector(features, weights=weights),
        style_vector(features[..., :3]),
    )
    torch.testing.assert_close(
        style_vector(features, with_variance=False, weights=weights),
        style_vector(features[..., :3], with_variance=False),
    )


def test_valid_masks_weight_the_style_of_both_views() -> None:
    torch.manual_seed(0)
    model = GLCNet(backbone='resnet18', in_channels=3, ablation='global_only').eval()
    image = torch.randn(2, 3, 64, 64)
    boxes = torch.tensor([[0.0, 0.0, 16.0, 16.0]]).expand(2, 1, 4)
    valid = torch.ones(2, 64, 64, dtype=torch.bool)
    with torch.no_grad():
        plain = model(image, image, boxes, boxes)
        all_data = model(image, image, boxes, boxes, valid, valid)
        valid[:, :, 48:] = False  # a column of ASPP positions without data
        masked = model(image, image, boxes, boxes, valid, valid)
    torch.testing.assert_close(all_data['global1'], plain['global1'])
    assert not torch.allclose(masked['global1'], plain['global1'])
    assert not torch.allclose(masked['global2'], plain['global2'])
