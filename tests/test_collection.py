"""Collections in several CRSs: each file read in its own CRS, never warped.

The collections are real shipped tiles: Sentinel-2 tile A in its UTM zone 18N,
beside a crop of tile B rewritten, same pixels, in another UTM zone with
coordinates of that zone.
"""

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.vrt
import torch
import torchgeo.datasets.geo
from conftest import NC_DIR, RGB1_3857, S2_TILE_A, S2_TILE_B, S2_TILES
from rasterio.transform import from_origin
from rasterio.windows import Window, from_bounds

import glcgeo.datasets.mask
from glcgeo.cli import main
from glcgeo.collection import (
    GeoTiffCollection,
    GroupedPairSampler,
    open_mosaic,
    pair_sampler,
    square_metres_per_unit,
)
from glcgeo.datamodules import GLCNetDataModule
from glcgeo.datasets import GeoTiffMosaic
from glcgeo.pairs import GeoTiffPairs
from glcgeo.stats import compute_band_stats

LABELS = S2_TILES.parent / 'demo_labels' / 's2_pseudo_labels.tif'


def other_zone(path: Path, crs: str, corner: tuple[float, float]) -> Path:
    """A 320 x 320 crop of Sentinel-2 tile B, same pixels, in *crs* at *corner*."""
    with rasterio.open(S2_TILE_B) as src:
        pixels = src.read(window=Window(0, 0, 320, 320))
        profile = src.profile | {
            'width': 320,
            'height': 320,
            'crs': crs,
            'transform': from_origin(*corner, 10.0, 10.0),
        }
    with rasterio.open(path, 'w', **profile) as dst:
        dst.write(pixels)
    return path


@pytest.fixture(scope='module')
def two_zones(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Tile A in UTM 18N and a crop of tile B in UTM 17N (a quarter of its area)."""
    folder = tmp_path_factory.mktemp('two_zones')
    return [S2_TILE_A, other_zone(folder / 'tileB_17N.tif', 'EPSG:32617', (6e5, 4e6))]


@pytest.fixture(scope='module')
def far_zone(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Tile A beside a crop of tile B near the equator in UTM 33N: GDAL cannot
    place the crop in zone 18N (as for SPARCS scenes across the world)."""
    folder = tmp_path_factory.mktemp('far_zone')
    return [S2_TILE_A, other_zone(folder / 'tileB_33N.tif', 'EPSG:32633', (8.1e5, 9e4))]


class Warps:
    """Counts the warped VRTs opened, by glcgeo or by TorchGeo."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        real = rasterio.vrt.WarpedVRT
        warps = self

        class Counted(real):  # type: ignore[misc, valid-type]
            def __init__(self, *args: object, **kwargs: object) -> None:
                warps.count += 1
                super().__init__(*args, **kwargs)

        for module in (rasterio.vrt, torchgeo.datasets.geo, glcgeo.datasets.mask):
            monkeypatch.setattr(module, 'WarpedVRT', Counted)


def files_pixels(path: Path, transform: torch.Tensor, size: int) -> np.ndarray:
    """The pixels of a file under a view of *size* px with a float64 *transform*."""
    a, _, c, _, e, f = transform.tolist()
    with rasterio.open(path) as src:
        window = from_bounds(c, f + e * size, c + a * size, f, src.transform)
        return src.read(window=window.round_offsets().round_lengths())


def test_files_in_two_zones_are_read_in_their_own_crs_without_warping(
    two_zones: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    warps = Warps(monkeypatch)
    GeoTiffPairs(two_zones)  # one grid: the 17N crop is warped into 18N
    assert warps.count > 0
    warps.count = 0
    collection = open_mosaic(GeoTiffPairs, two_zones)
    assert isinstance(collection, GeoTiffCollection)
    for group in collection.groups:
        (path,) = group.files
        with rasterio.open(path) as src:
            assert group.crs == src.crs and group.res == src.res == (10.0, 10.0)
    assert sorted(collection.files) == sorted(str(path) for path in two_zones)
    sampler = pair_sampler(collection, size=64, length=24, scale=(1.0, 1.0), regions=2)
    groups = set()
    for pair in sampler:
        sample = collection[pair]
        groups.add(pair.group)
        assert int(sample['group']) == pair.group
        for k in (1, 2):
            # Both views: the file's own pixels, in its own CRS.
            (path,) = collection.groups[pair.group].files
            expected = files_pixels(path, sample[f'transform{k}'], 64)
            np.testing.assert_array_equal(sample[f'image{k}'].numpy(), expected)
    assert groups == {0, 1}
    assert warps.count == 0


def test_groups_are_drawn_by_valid_ground_area_not_by_file_count(
    two_zones: list[Path],
) -> None:
    """Tile A (640 x 640 px) against the 320 x 320 crop: 4 to 1."""
    collection = open_mosaic(GeoTiffPairs, two_zones)
    assert isinstance(collection, GeoTiffCollection)
    sampler = pair_sampler(collection, size=64, length=8)
    assert isinstance(sampler, GroupedPairSampler)
    crop = next(i for i, g in enumerate(collection.groups) if g.crs.to_epsg() == 32617)
    rng = np.random.default_rng(0)
    drawn = np.array([sampler.draw_group(rng) for _ in range(4000)])
    assert abs(np.mean(drawn == crop) - 0.2) < 0.02


def test_ranks_draw_disjoint_shares_of_the_one_process_stream(
    two_zones: list[Path],
) -> None:
    collection = open_mosaic(GeoTiffPairs, two_zones)
    assert isinstance(collection, GeoTiffCollection)

    def pairs(**ranks: int) -> list[tuple[int, int, int]]:
        sampler = pair_sampler(
            collection,
            size=64,
            length=16,
            generator=torch.Generator().manual_seed(3),
            **ranks,
        )
        return [(p.group, int(p.view1.col_off), int(p.view1.row_off)) for p in sampler]

    one = pairs()
    assert pairs(num_replicas=2, rank=0) == one[0::2]
    assert pairs(num_replicas=2, rank=1) == one[1::2]
    assert len({group for group, _, _ in one}) == 2


def test_ground_area_per_crs_unit() -> None:
    """About 1 in UTM; cos(latitude)^2 in Web Mercator."""
    assert math.isclose(
        square_metres_per_unit(GeoTiffMosaic(S2_TILE_A)), 1.0, rel_tol=1e-3
    )
    mercator = GeoTiffMosaic(RGB1_3857)
    x, y, _ = mercator.bounds
    with rasterio.Env():
        _, (lat,) = rasterio.warp.transform(
            mercator.crs,
            'EPSG:4326',
            [(x.start + x.stop) / 2],
            [(y.start + y.stop) / 2],
        )
    expected = math.cos(math.radians(lat)) ** 2
    assert math.isclose(square_metres_per_unit(mercator), expected, rel_tol=0.01)


def test_statistics_of_a_collection_are_its_files_pixel_statistics(
    two_zones: list[Path],
) -> None:
    collection = open_mosaic(GeoTiffMosaic, two_zones)
    stats = compute_band_stats(collection, windows=128)
    pixels = []
    for path in two_zones:
        with rasterio.open(path) as src:
            pixels.append(src.read().reshape(src.count, -1).astype(np.float64))
    values = np.concatenate(pixels, axis=1)
    np.testing.assert_allclose(stats.mean, values.mean(axis=1), rtol=0.03)
    np.testing.assert_allclose(stats.std, values.std(axis=1), rtol=0.05)
    assert stats.files == collection.files


def test_one_crs_or_a_forced_grid_is_one_mosaic_as_before(
    two_zones: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[str] = []
    real = rasterio.open
    monkeypatch.setattr(
        rasterio,
        'open',
        lambda path, *a, **k: opened.append(path) or real(path, *a, **k),
    )
    mosaic = open_mosaic(GeoTiffMosaic, S2_TILES)
    assert type(mosaic) is GeoTiffMosaic
    assert len(opened) == 2  # each file opened once, to index it
    monkeypatch.setattr(rasterio, 'open', real)
    reference = GeoTiffMosaic(S2_TILES)
    assert mosaic.files == reference.files and mosaic.bounds == reference.bounds
    forced = open_mosaic(GeoTiffMosaic, two_zones, crs='EPSG:32618')
    assert type(forced) is GeoTiffMosaic and forced.crs.to_epsg() == 32618
    resampled = open_mosaic(GeoTiffMosaic, two_zones, res=20.0)
    assert type(resampled) is GeoTiffMosaic and resampled.res == (20.0, 20.0)


def test_groups_read_files_named_with_glob_characters(
    two_zones: list[Path], tmp_path: Path
) -> None:
    for path, name in zip(two_zones, ['zone[18].tif', 'zone[17].tif'], strict=True):
        shutil.copy(path, tmp_path / name)
    collection = open_mosaic(GeoTiffMosaic, tmp_path)
    assert isinstance(collection, GeoTiffCollection)
    assert sorted(path for group in collection.groups for path in group.files) == [
        str(tmp_path / 'zone[17].tif'),
        str(tmp_path / 'zone[18].tif'),
    ]


def test_groups_are_kept_in_the_index_cache(
    two_zones: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = open_mosaic(GeoTiffPairs, two_zones, index_cache=tmp_path)
    opened: list[str] = []
    real = rasterio.open
    monkeypatch.setattr(
        rasterio,
        'open',
        lambda path, *a, **k: opened.append(path) or real(path, *a, **k),
    )
    again = open_mosaic(GeoTiffPairs, two_zones, index_cache=tmp_path)
    assert isinstance(first, GeoTiffCollection) and isinstance(again, GeoTiffCollection)
    assert [g.files for g in again.groups] == [g.files for g in first.groups]
    assert opened == []


def test_pretraining_batches_of_a_collection(two_zones: list[Path]) -> None:
    datamodule = GLCNetDataModule(
        [str(path) for path in two_zones],
        patch_size=64,
        batch_size=8,
        length=16,
        num_workers=0,
    )
    datamodule.setup('fit')
    assert isinstance(datamodule.train_dataset, GeoTiffCollection)
    assert isinstance(datamodule.train_sampler, GroupedPairSampler)
    batch = next(iter(datamodule.train_dataloader()))
    views = datamodule.on_after_batch_transfer(batch, 0)
    assert views['image1'].shape == views['image2'].shape == (8, 4, 64, 64)
    assert torch.isfinite(views['image1']).all()
    assert set(views['group'].tolist()) <= {0, 1}


def test_pretrain_runs_and_resumes_on_a_collection(
    two_zones: list[Path], tmp_path: Path
) -> None:
    # Before: an AssertionError traceback once training started (the band
    # metadata the checkpoint keeps was read from a single mosaic only).
    out = tmp_path / 'run'
    argv = ['pretrain', '--data', *map(str, two_zones), '--out', str(out),
            '--backbone', 'resnet18', '--patch-size', '64', '--batch-size', '4',
            '--quiet']  # fmt: skip
    assert main([*argv, '--max-steps', '1']) == 0
    assert main(['pretrain', '--out', str(out), '--resume', '--max-steps', '2',
                 '--quiet']) == 0  # fmt: skip
    saved = torch.load(out / 'checkpoints' / 'last.ckpt', weights_only=False)
    assert saved['global_step'] == 2
    with rasterio.open(two_zones[0]) as src:
        dtype = src.dtypes[0]
    assert saved['hyper_parameters']['band_dtype'] == dtype


def test_a_far_zone_is_one_line_naming_the_file_under_a_forced_crs(
    far_zone: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Each file in its own CRS: no transform between zones is needed.
    out = tmp_path / 'stats.json'
    argv = ['stats', '--data', *map(str, far_zone), '--out', str(out)]
    assert main([*argv, '--windows', '4']) == 0
    assert out.exists()
    capsys.readouterr()
    assert main([*argv, '--overwrite', '--crs', 'EPSG:32618']) == 2
    error = capsys.readouterr().err
    assert error.count('\n') == 1, error
    assert str(far_zone[1]) in error and 'cannot be reprojected' in error


def test_finetuning_on_several_crss_is_refused_in_one_line(
    two_zones: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ['finetune', '--images', *map(str, two_zones), '--masks', str(LABELS)]
    assert main([*argv, '--out', str(tmp_path / 'run'), '--quiet']) == 2
    error = capsys.readouterr().err
    assert error.count('\n') == 1, error
    assert 'in 2 CRSs' in error and '--crs' in error
    assert any(str(path) in error for path in two_zones)
    assert not (tmp_path / 'run' / 'checkpoints').exists()


#: SPARCS scenes in ../shared/data (used from there, never committed): 64
#: Landsat-8 scenes of 1000 x 1000 px at 30 m, each in its own UTM zone.
SPARCS = NC_DIR.parent / 'sparcs_landsat8'


@pytest.mark.skipif(not SPARCS.is_dir(), reason='../shared/data (SPARCS) is absent')
def test_statistics_of_sparcs_scenes_across_zones_are_their_pixels() -> None:
    """Warped into the first scene's zone, 16 scenes gave means ~40 % too low."""
    scenes = sorted(SPARCS.glob('*_img.tif'))[:16]
    collection = open_mosaic(GeoTiffMosaic, scenes)
    assert isinstance(collection, GeoTiffCollection)
    for group in collection.groups:
        for path in group.files:
            with rasterio.open(path) as src:
                assert group.crs == src.crs and group.res == src.res == (30.0, 30.0)
    # Small windows: little of each scene's edge is left out by their clamping.
    stats = compute_band_stats(collection, windows=1024, window_size=32)
    total = np.zeros(3)
    for path in scenes:
        with rasterio.open(path) as src:
            total += src.read().reshape(3, -1).mean(axis=1)
    np.testing.assert_allclose(stats.mean, total / len(scenes), rtol=0.05)
