"""Views cut on device from union windows: cut_views, collate_unions, data module."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import S2_TILES
from torch import Tensor
from torch.utils.data import DataLoader

from glcgeo.datamodules import GLCNetDataModule, collate_unions
from glcgeo.datasets import GeoTiffMosaic
from glcgeo.geometry import ground_to_pixel_boxes
from glcgeo.samplers import PairedWindowSampler
from glcgeo.views import TwoViewAugmentation, cut_views, unpack_unions


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def union_batch(union: Tensor, window1: list[int], window2: list[int]) -> dict:
    """A one-pair batch of the union form."""
    return {
        'union': union[None],
        'window1': torch.tensor([window1]),
        'window2': torch.tensor([window2]),
    }


def smooth(height: int, width: int, bands: int = 3) -> Tensor:
    """Low-frequency test imagery: sums of sinusoids of 40 px and longer periods."""
    rows = torch.arange(height, dtype=torch.float64)[:, None]
    cols = torch.arange(width, dtype=torch.float64)[None]
    bands_ = [
        1000
        + 300 * torch.sin(2 * math.pi * (cols / (40 + 9 * b) + rows / (57 + 5 * b)))
        + 200 * torch.cos(2 * math.pi * rows / (45 + 7 * b))
        for b in range(bands)
    ]
    return torch.stack(bands_).float()


@pytest.mark.parametrize(
    'dtype', [torch.uint8, torch.int16, torch.uint16, torch.float32]
)
def test_scale_one_is_an_exact_crop(dtype: torch.dtype) -> None:
    generator = seeded(0)
    values = torch.randint(0, 250, (4, 90, 120), generator=generator)
    union = values.to(dtype)
    views = cut_views(union_batch(union, [7, 3, 71, 67], [50, 20, 114, 84]), 64)
    assert set(views) == {'image1', 'image2'}
    assert views['image1'].dtype == torch.float32
    assert torch.equal(views['image1'][0], values[:, 3:67, 7:71].float())
    assert torch.equal(views['image2'][0], values[:, 20:84, 50:114].float())


def test_nan_nodata_does_not_spread() -> None:
    values = smooth(90, 120, bands=2)
    values[0, 30:34, 40:45] = torch.nan  # a nodata hole in one band only
    batch = union_batch(values, [7, 3, 71, 67], [10, 10, 110, 90])
    views = cut_views(batch, 64)
    # At scale 1, exactly the source's NaN pixels, and its other values.
    expected = values[:, 3:67, 7:71]
    assert torch.equal(torch.isnan(views['image1'][0]), torch.isnan(expected))
    assert torch.equal(views['image1'][0].nan_to_num(-1), expected.nan_to_num(-1))
    # Resized: no NaN unless a pixel has no valid sample, band 2 untouched.
    resized = views['image2'][0]
    assert 0 < torch.isnan(resized[0]).sum() <= 4 * 5
    assert not torch.isnan(resized[1]).any()
    valid = cut_views(
        union_batch(values.nan_to_num(1000), [10, 10, 110, 90], [10, 10, 110, 90]), 64
    )
    far = ~torch.isnan(resized[0])
    far[10:40, 15:45] = False  # away from the hole, the same as without it
    assert torch.allclose(resized[0][far], valid['image1'][0, 0][far])


def test_augmented_views_never_hold_nan() -> None:
    image = smooth(64, 64, bands=3)[None].repeat(4, 1, 1, 1)
    image[:, :, 5:9, 5:9] = torch.nan
    augment = TwoViewAugmentation(mean=[1000.0] * 3, std=[300.0] * 3)
    boxes = torch.tensor([[0.0, 0.0, 16.0, 16.0]]).expand(4, 1, 4)
    batch = augment(
        {'image1': image, 'image2': image.clone(), 'boxes1': boxes, 'boxes2': boxes}
    )
    for key in ('image1', 'image2'):
        assert torch.isfinite(batch[key]).all()
    # A nodata pixel of view 1 is the band mean: 0 once normalised.
    assert torch.all(batch['image1'][:, :, 5:9, 5:9] == 0)


@pytest.mark.parametrize('side', [257, 300, 420, 160])
def test_resizing_matches_antialiased_interpolation_on_smooth_data(side: int) -> None:
    size, offset = 224, 5
    union = smooth(side + 2 * offset, side + 2 * offset)
    window = [offset, offset, offset + side, offset + side]
    view = cut_views(union_batch(union, window, window), size)['image1'][0]
    crop = union[None, :, offset:-offset, offset:-offset]
    expected = F.interpolate(
        crop, size=(size, size), mode='bilinear', antialias=True, align_corners=False
    )[0]
    # Away from the edges (where F.interpolate clamps to the crop and roi_align
    # reads the union's pixels next to it), the two filters agree to within their
    # difference in shape (triangle vs ceil(scale)^2 bilinear taps): < 1 % of
    # the signal's standard deviation on average.
    inner = (slice(None), slice(3, -3), slice(3, -3))
    error = (view - expected)[inner].abs()
    assert error.max() < 0.05 * union.std() and error.mean() < 0.01 * union.std()


def test_downscaling_is_antialiased() -> None:
    """A pixel-scale checkerboard averages out, as antialiasing must; one bilinear
    sample per output pixel would alias it into stripes."""
    rows, cols = torch.meshgrid(torch.arange(450), torch.arange(450), indexing='ij')
    checker = ((rows + cols) % 2).float()[None] * 100
    view = cut_views(union_batch(checker, [0, 0, 448, 448], [0, 0, 448, 448]), 224)
    inner = view['image1'][0, :, 2:-2, 2:-2]
    assert (inner - 50).abs().max() < 1e-3


def test_padding_never_enters_a_view() -> None:
    """Unions of several sizes collated into one batch: every view is what the
    same union alone gives, even views touching the union's far edges."""
    generator = seeded(1)
    shapes = [(70, 90), (96, 96), (81, 64)]
    samples = []
    for height, width in shapes:
        union = torch.randint(100, 200, (2, height, width), generator=generator)
        samples.append(
            {
                'union': union.to(torch.int16),
                # Views of scale 0.75 and 1.25 at the far corner and the near one.
                'window1': torch.tensor([width - 48, height - 48, width, height]),
                'window2': torch.tensor([0, 0, 60, 60]),
                'valid1': torch.tensor(1.0),
            }
        )
    batch = collate_unions(samples)
    assert batch['union'].shape == (sum(s['union'].numel() for s in samples),)
    assert batch['union'].dtype == torch.int16
    assert batch['union_shape'].tolist() == [[2, h, w] for h, w in shapes]
    assert unpack_unions(batch['union'], batch['union_shape']).shape == (3, 2, 96, 96)
    views = cut_views(batch, 64)
    for i, sample in enumerate(samples):
        alone = cut_views({k: v[None] for k, v in sample.items()}, 64)
        for k in (1, 2):
            torch.testing.assert_close(
                views[f'image{k}'][i], alone[f'image{k}'][0], rtol=0, atol=1e-4
            )
            # Bilinear samples of 100..199 stay in that range: no other value.
            assert views[f'image{k}'][i].min() >= 100
            assert views[f'image{k}'][i].max() <= 199


@pytest.mark.parametrize('dtype', ['uint8', 'int16', 'uint16', 'float32'])
def test_collate_packs_and_unpacking_pads_by_repeating_edges(dtype: str) -> None:
    small = torch.from_numpy(np.arange(24).reshape(2, 3, 4).astype(dtype))
    large = torch.from_numpy(np.full((2, 5, 6), 7).astype(dtype))
    geometry = {'window1': torch.tensor([0, 0, 2, 2]), 'valid1': torch.tensor(0.5)}
    batch = collate_unions([{'union': small, **geometry}, {'union': large, **geometry}])
    # Shipped packed, in the samples' dtype: no padding in the batch.
    assert batch['union'].dtype == small.dtype
    assert torch.equal(batch['union'], torch.cat([small.ravel(), large.ravel()]))
    assert batch['union_shape'].tolist() == [[2, 3, 4], [2, 5, 6]]
    assert torch.equal(batch['window1'], torch.tensor([[0, 0, 2, 2]] * 2))
    assert batch['valid1'].shape == (2,)
    unions = unpack_unions(batch['union'], batch['union_shape'])
    assert unions.dtype == torch.float32
    assert unions.shape == (2, 2, 5, 6)
    padded = unions[0].numpy()
    expected = small.float().numpy()
    np.testing.assert_array_equal(padded[:, :3, :4], expected)
    np.testing.assert_array_equal(
        padded[:, 3:, :4], np.repeat(expected[:, -1:], 2, axis=1)
    )
    np.testing.assert_array_equal(
        padded[:, :, 4:], np.repeat(padded[:, :, 3:4], 2, axis=2)
    )
    assert torch.equal(unions[1], large.float())


def test_collated_unions_cut_the_views_of_read_pair(s2_mosaic: GeoTiffMosaic) -> None:
    """The data module's path (union form, workers, collate_unions, cut_views)
    gives the views and geometry of mosaic[pair], for unions of mixed sizes."""
    size = 48

    def pairs() -> PairedWindowSampler:
        return PairedWindowSampler(
            s2_mosaic, size=size, length=12, scale=(0.6, 1.6), generator=seeded(3)
        )

    unions = GeoTiffMosaic(s2_mosaic.files)
    unions.cut_pairs = False
    loader = DataLoader(
        unions, batch_size=6, sampler=pairs(), num_workers=2, collate_fn=collate_unions
    )
    batches = list(loader)
    assert all(b['union'].dtype == torch.uint16 for b in batches)
    assert all(b['union_shape'].unique(dim=0).shape[0] > 1 for b in batches)
    expected = [s2_mosaic.read_pair(pair) for pair in pairs()]
    shapes = {
        tuple(u.shape) for u in (s2_mosaic.read_union(p)['union'] for p in pairs())
    }
    assert len(shapes) > 1  # mixed union sizes, padded in each batch
    for b, batch in enumerate(batches):
        views = cut_views(batch, size)
        for i in range(6):
            sample = expected[6 * b + i]
            assert views.keys() == sample.keys()
            for key, value in sample.items():
                torch.testing.assert_close(views[key][i], value, rtol=0, atol=1e-3)


def test_union_form_overlap_identical_through_the_data_module_path(
    shipped_mosaic: GeoTiffMosaic,
) -> None:
    """At scale 1, each view cut on device holds the overlap's very pixels, and
    its valid fraction (computed on raw values in the worker) is the view's."""
    size = 64
    sampler = PairedWindowSampler(
        shipped_mosaic, size=size, length=8, scale=(1.0, 1.0), generator=seeded(5)
    )
    pairs = list(sampler)
    batch = collate_unions([shipped_mosaic.read_union(pair) for pair in pairs])
    views = cut_views(batch, size)
    for i, pair in enumerate(pairs):
        x1, y1, x2, y2 = pair.overlap
        cut = []
        for k, window in ((1, pair.view1), (2, pair.view2)):
            col, row = int(window.col_off), int(window.row_off)
            image = views[f'image{k}'][i]
            cut.append(image[:, y1 - row : y2 - row, x1 - col : x2 - col])
            valid = shipped_mosaic.valid_mask(image).float().mean()
            assert views[f'valid{k}'][i] == pytest.approx(valid.item(), abs=1e-6)
        assert cut[0].numel() > 0
        assert torch.equal(cut[0], cut[1])


def test_data_module_yields_unions_and_cuts_them_after_transfer() -> None:
    datamodule = GLCNetDataModule(
        str(S2_TILES),
        patch_size=32,
        batch_size=4,
        length=4,
        num_workers=0,
    )
    datamodule.setup('fit')
    batch = next(iter(datamodule.train_dataloader()))
    assert 'image1' not in batch and batch['union'].dtype == torch.uint16
    views = datamodule.on_after_batch_transfer(batch, 0)
    assert 'union' not in views
    assert views['image1'].shape == views['image2'].shape == (4, 4, 32, 32)
    assert views['boxes1'].shape == (4, 4, 4)


def test_batched_union_geometry_is_each_pairs_own(s2_mosaic: GeoTiffMosaic) -> None:
    """The geometry computed for a batch of pairs at once (what a DataLoader's
    __getitems__ reads) is, to the bit, what each pair's own affine gives."""
    mosaic = GeoTiffMosaic(s2_mosaic.files)
    mosaic.cut_pairs = False
    sampler = PairedWindowSampler(
        mosaic, size=48, length=16, scale=(0.6, 1.6), generator=seeded(4)
    )
    pairs = list(sampler)
    samples = mosaic.__getitems__(pairs)
    grid = mosaic.grid
    for pair, sample in zip(pairs, samples, strict=True):
        alone = mosaic.read_union(pair)
        assert sample.keys() == alone.keys()
        for key, value in alone.items():
            assert value.dtype == sample[key].dtype and torch.equal(value, sample[key])
        regions = grid.boxes_to_map(pair.regions)
        assert torch.equal(sample['regions'], torch.from_numpy(regions))
        for k, window in ((1, pair.view1), (2, pair.view2)):
            affine = grid.window_transform(window, pair.size)
            assert sample[f'transform{k}'].tolist() == list(affine[:6])
            boxes = ground_to_pixel_boxes(regions, affine).astype(np.float32)
            assert torch.equal(sample[f'boxes{k}'], torch.from_numpy(boxes))
            x1, y1 = (
                window.col_off - pair.union.col_off,
                window.row_off - pair.union.row_off,
            )
            assert sample[f'window{k}'].tolist() == [
                x1,
                y1,
                x1 + window.width,
                y1 + window.height,
            ]
