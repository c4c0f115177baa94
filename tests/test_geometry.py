"""Pixel grids, ground boxes and their projection through recorded flips/rotations."""

import math

import numpy as np
import pytest
import torch
from affine import Affine
from conftest import S2_TILES
from rasterio.windows import Window
from torch.utils.data import DataLoader

from glcgeo.geometry import (
    PixelGrid,
    ground_to_pixel_boxes,
    project_ground_boxes,
    transform_pixel_boxes,
)
from glcgeo.pairs import GeoTiffPairs
from glcgeo.samplers import PairedWindowSampler
from glcgeo.transforms import TwoViewAugmentation

#: A grid at a UTM northing of ~4.17e6 m with an origin off the metre grid.
UTM_GRID = PixelGrid(x0=438730.123, y0=4176460.456, res=(0.3, 0.3))


def test_pixel_grid_maps_pixel_edges_in_float64() -> None:
    assert UTM_GRID.to_map(0, 0) == (438730.123, 4176460.456)
    x, y = UTM_GRID.to_map(1000, 2000)
    assert abs(x - (438730.123 + 300.0)) < 1e-6
    assert abs(y - (4176460.456 - 600.0)) < 1e-6
    assert UTM_GRID.affine @ (1000, 2000) == pytest.approx((x, y), abs=1e-6)


def test_windows_of_ground_boxes_read_as_rasterio_merge_or_whole_pixels() -> None:
    # A window's own bounds (float64 at a UTM northing) give it back exactly.
    for window in (Window(1000, 2000, 300, 224), Window(-3, -5, 7, 9)):
        box = UTM_GRID.window_bounds(window)
        assert UTM_GRID.window(*box) == UTM_GRID.inner_window(*box) == window
    # Off the grid: a read of the box (nearest edges, rasterio.merge's size), or
    # the whole pixels inside it.
    read = PixelGrid(x0=0.0, y0=100.0, res=(10.0, 10.0))
    assert read.window(0.0, 0.0, 1004.0, 100.0) == Window(0, 0, 100, 10)
    assert read.window(0.0, 0.0, 1006.0, 100.0) == Window(0, 0, 101, 10)
    assert read.window(4.0, 0.0, 1010.0, 94.0) == Window(0, 1, 101, 9)
    assert read.inner_window(0.0, 0.0, 1006.0, 100.0) == Window(0, 0, 100, 10)
    assert read.inner_window(4.0, 0.0, 1010.0, 94.0) == Window(1, 1, 100, 9)
    assert read.inner_window(4.0, 0.0, 9.0, 100.0).width == 0


def test_window_transform_covers_the_window_at_the_view_size() -> None:
    window = Window(1000, 2000, 300, 300)
    affine = UTM_GRID.window_transform(window, 224)
    # The view's corners are the window's corners; its pixel is 300/224 grid pixels.
    assert affine @ (0, 0) == pytest.approx(UTM_GRID.to_map(1000, 2000), abs=1e-6)
    assert affine @ (224, 224) == pytest.approx(UTM_GRID.to_map(1300, 2300), abs=1e-6)
    assert affine.a == pytest.approx(0.3 * 300 / 224, rel=1e-15)
    assert affine.e == pytest.approx(-0.3 * 300 / 224, rel=1e-15)


def test_ground_boxes_round_trip_through_any_view() -> None:
    pixel_boxes = np.array([[10, 20, 58, 68], [0, 0, 1, 1], [100, 7, 131, 90]])
    ground = UTM_GRID.boxes_to_map(pixel_boxes)
    assert ground.dtype == np.float64
    assert (ground[:, 0] < ground[:, 2]).all() and (ground[:, 1] < ground[:, 3]).all()
    assert ground_to_pixel_boxes(ground, UTM_GRID.affine) == pytest.approx(
        pixel_boxes, abs=1e-6
    )
    # In a view of a 300-pixel window resized to 200, boxes shrink by 2/3.
    view = UTM_GRID.window_transform(Window(0, 0, 300, 300), 200)
    assert ground_to_pixel_boxes(ground, view) == pytest.approx(
        pixel_boxes * 2 / 3, abs=1e-6
    )


def test_batched_forms_are_bit_identical_to_affines_own() -> None:
    """The [B, ...] forms used for a batch of pairs, against affine's ~ and @."""
    windows = np.array([[1000, 2000, 300, 300], [7, 11, 150, 150], [0, 5, 97, 97]])
    sizes = np.array([224, 224, 64])
    affines = UTM_GRID.window_affines(windows, sizes)
    ground = UTM_GRID.boxes_to_map([[10, 20, 58, 68], [1003, 2010, 1040, 2047]])
    boxes = ground_to_pixel_boxes(np.broadcast_to(ground, (3, 2, 4)), affines)
    for window, size, row, view_boxes in zip(
        windows, sizes, affines, boxes, strict=True
    ):
        col, row_off, width, height = (int(v) for v in window)
        x, y = UTM_GRID.to_map(col, row_off)
        res = UTM_GRID.res
        affine = Affine(res[0] * width / size, 0, x, 0, -res[1] * height / size, y)
        assert row.tolist() == list(affine[:6])
        assert UTM_GRID.window_transform(Window(*window), int(size)) == affine
        inverse = ~affine
        x1, y1 = inverse @ (ground[:, 0], ground[:, 3])
        x2, y2 = inverse @ (ground[:, 2], ground[:, 1])
        assert view_boxes.tolist() == np.stack([x1, y1, x2, y2], axis=1).tolist()
        assert ground_to_pixel_boxes(ground, affine).tolist() == view_boxes.tolist()


def _flip_rotate_matrix(size: int, hflip: bool, vflip: bool, quarter_turns: int):
    """Kornia-convention (pixel centre) matrix of flips then counter-clockwise rot90s,
    and the same operation applied to a [C, H, W] image with torch."""
    last = size - 1
    flip = torch.tensor(
        [
            [-1.0 if hflip else 1.0, 0.0, last if hflip else 0.0],
            [0.0, -1.0 if vflip else 1.0, last if vflip else 0.0],
            [0.0, 0.0, 1.0],
        ]
    )
    # torch.rot90 over (H, W) turns counter-clockwise: (x, y) -> (y, last - x).
    rot = torch.tensor([[0.0, 1.0, 0.0], [-1.0, 0.0, last], [0.0, 0.0, 1.0]])
    matrix = torch.linalg.matrix_power(rot, quarter_turns) @ flip

    def apply(image: torch.Tensor) -> torch.Tensor:
        if hflip:
            image = image.flip(-1)
        if vflip:
            image = image.flip(-2)
        return torch.rot90(image, quarter_turns, dims=(-2, -1))

    return matrix, apply


@pytest.mark.parametrize('hflip', [False, True])
@pytest.mark.parametrize('vflip', [False, True])
@pytest.mark.parametrize('quarter_turns', [0, 1, 2, 3])
def test_boxes_follow_flips_and_rotations_pixel_for_pixel(
    hflip: bool, vflip: bool, quarter_turns: int
) -> None:
    size = 32
    ids = torch.arange(size * size, dtype=torch.float64).reshape(1, size, size)
    matrix, apply = _flip_rotate_matrix(size, hflip, vflip, quarter_turns)
    moved_ids = apply(ids)
    boxes = torch.tensor([[[3.0, 5.0, 11.0, 20.0], [0.0, 0.0, 32.0, 1.0]]])
    moved = transform_pixel_boxes(boxes, matrix[None])
    for box, moved_box in zip(boxes[0], moved[0], strict=True):
        x1, y1, x2, y2 = box.long().tolist()
        mx1, my1, mx2, my2 = moved_box.round().long().tolist()
        torch.testing.assert_close(moved_box, moved_box.round(), atol=1e-9, rtol=0)
        assert (mx2 - mx1) * (my2 - my1) == (x2 - x1) * (y2 - y1)
        before = ids[0, y1:y2, x1:x2].flatten().sort().values
        after = moved_ids[0, my1:my2, mx1:mx2].flatten().sort().values
        assert torch.equal(before, after)


def test_projection_without_augmentation_is_the_view_affine() -> None:
    ground = UTM_GRID.boxes_to_map([[10, 20, 58, 68]])
    view = UTM_GRID.window_transform(Window(0, 0, 224, 224), 224)
    projected = project_ground_boxes(ground, view)
    assert projected.dtype == torch.float64
    np.testing.assert_allclose(projected.numpy(), [[10, 20, 58, 68]], atol=1e-6)


def test_ground_boxes_land_on_the_same_pixels_through_recorded_augmentation() -> None:
    """Real pairs, kornia's recorded flips/rot90: each region's pixels, tagged with
    their index in the un-augmented view, are found inside the projected box, each
    exactly where the recorded matrix sends it."""
    mosaic = GeoTiffPairs(S2_TILES)
    size, count = 64, 16
    sampler = PairedWindowSampler(
        mosaic,
        size=size,
        length=count,
        region_size=12,
        generator=torch.Generator().manual_seed(3),
    )
    batch = next(iter(DataLoader(mosaic, batch_size=count, sampler=sampler)))
    ids = torch.arange(size * size, dtype=torch.float32).reshape(1, 1, size, size)
    tagged = {**batch, 'image2': ids.expand(count, mosaic.num_bands, -1, -1).clone()}
    torch.manual_seed(0)
    geometric_only = TwoViewAugmentation(
        mean=[0.0] * mosaic.num_bands,
        std=[1.0] * mosaic.num_bands,
        jitter_p=0.0,
        band_to_all_p=0.0,
        blur_p=0.0,
        salt=0.0,
    )
    out = geometric_only(tagged)
    matrices = out['matrix2']
    # The draw must exercise flips and rotations, not only the identity.
    assert len({tuple(m.flatten().tolist()) for m in matrices}) >= 4
    moved_ids = out['image2'][:, 0].round().long()
    for i in range(count):
        affine = Affine(*batch['transform2'][i].tolist())
        projected = project_ground_boxes(
            batch['regions'][i].numpy(), affine, matrices[i]
        )
        torch.testing.assert_close(
            projected.float(), out['boxes2'][i], atol=1e-4, rtol=0
        )
        for region, box in zip(batch['boxes2'][i], projected, strict=True):
            x1, y1, x2, y2 = region.round().long().tolist()
            cols, rows = torch.meshgrid(
                torch.arange(x1, x2), torch.arange(y1, y2), indexing='xy'
            )
            centres = torch.stack(
                [cols.flatten(), rows.flatten(), torch.ones(cols.numel())]
            ).double()
            landed = (matrices[i].double() @ centres)[:2].round().long()
            bx1, by1, bx2, by2 = box.round().long().tolist()
            assert (landed[0] >= bx1).all() and (landed[0] < bx2).all()
            assert (landed[1] >= by1).all() and (landed[1] < by2).all()
            assert (bx2 - bx1) * (by2 - by1) == cols.numel()
            found = moved_ids[i, landed[1], landed[0]]
            assert torch.equal(found, (rows * size + cols).flatten())


def test_region_boxes_cover_whole_pixels_at_scale_one() -> None:
    grid = PixelGrid(x0=0.0, y0=0.0, res=(10.0, 10.0))
    view = grid.window_transform(Window(5, 5, 64, 64), 64)
    ground = grid.boxes_to_map([[7, 9, 19, 21]])
    box = ground_to_pixel_boxes(ground, view)[0]
    assert box == pytest.approx([2, 4, 14, 16], abs=1e-9)
    assert all(math.isclose(v, round(v), abs_tol=1e-9) for v in box)
