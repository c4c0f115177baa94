"""The protocol runner: its statistics, data sets of many scenes, label budgets."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from conftest import DATA, S2_TILE_A
from rasterio.windows import Window

sys.path.insert(0, str(Path(__file__).parents[1] / 'experiments'))
from protocol.datasets import (
    LabelledSet,
    image_mask_pair,
    lay_out_scenes,
    pair_files,
)
from protocol.finetuning import IGNORE, TiledSet, Tiles, read_scenes
from protocol.report import Comparison, compare, sign_flip_p

from glcgeo.stats import BandStats

S2_LABELS = DATA / 'demo_labels' / 's2_pseudo_labels.tif'

#: Scenes cut from the shipped Sentinel-2 tile, each given its own UTM zone
#: (the pixels are the tile's; only the declared CRS differs, as between SPARCS
#: scenes): (name, column offset, row offset, EPSG code).
SCENES = [
    ('a', 0, 0, 32618),
    ('b', 320, 0, 32617),
    ('c', 0, 320, 32619),
    ('d', 320, 320, 32733),
]


@pytest.fixture
def scene_folder(tmp_path: Path) -> Path:
    """Four 256 px scenes in four CRSs: ``<name>_img.tif`` and ``<name>_lbl.tif``."""
    folder = tmp_path / 'scenes'
    folder.mkdir()
    with rasterio.open(S2_TILE_A) as image, rasterio.open(S2_LABELS) as labels:
        for name, col, row, epsg in SCENES:
            window = Window(col, row, 256, 256)
            transform = image.window_transform(window)
            for suffix, src in (('img', image), ('lbl', labels)):
                # The labels' grid starts at the image's corner: the same window.
                profile = src.profile | {
                    'width': 256,
                    'height': 256,
                    'transform': transform,
                    'crs': f'EPSG:{epsg}',
                }
                with rasterio.open(
                    folder / f'{name}_{suffix}.tif', 'w', **profile
                ) as f:
                    f.write(src.read(window=window))
    return folder


RUNNER = Path(__file__).parents[1] / 'experiments' / 'run_protocol.py'


def test_sign_flip_test_is_exact() -> None:
    # All four differences positive: only all-plus and all-minus are as extreme.
    assert sign_flip_p([1.0, 2.0, 3.0, 4.0]) == pytest.approx(2 / 16)
    # Symmetric differences: every assignment is as extreme as the observed 0.
    assert sign_flip_p([1.0, -1.0]) == 1.0
    assert sign_flip_p([0.5] * 8) == pytest.approx(2 / 256)


def test_comparison_is_mean_se_wins_and_p() -> None:
    found = Comparison.of([1.0, 3.0, -1.0, 5.0])
    assert found.mean == pytest.approx(2.0)
    assert found.se == pytest.approx(2.5819888974716 / 2)
    assert found.wins == 3
    assert found.cell().startswith('+2.0 ± 1.3 (3/4, p=')


def test_compare_pairs_runs_seed_by_seed() -> None:
    def row(method: str, p: int, s: int, kappa: float) -> dict[str, object]:
        return {
            'dataset': 'd',
            'evaluation': 'probe',
            'budget': '4',
            'pretrain_seed': p,
            'seed': s,
            'method': method,
            'test_Kappa': kappa,
        }

    rows = [
        row('random', 0, 0, 0.30),
        row('random', 0, 1, 0.50),
        row('glcnet', 0, 0, 0.35),
        row('glcnet', 0, 1, 0.52),
        row('glcnet', 1, 0, 0.99),  # no random run with these seeds: unpaired
    ]
    found = compare(rows, 'glcnet', 'random')[('d', 'probe', '4')]
    assert found.differences == pytest.approx([5.0, 2.0])


def test_protocol_runs_on_a_pair_it_has_never_seen(tmp_path: Path) -> None:
    """NAME=IMAGES:MASKS, any band count, classes read from the mask."""
    labels = DATA / 'demo_labels' / 's2_pseudo_labels.tif'
    results, work = tmp_path / 'results', tmp_path / 'work'
    command = [
        sys.executable,
        str(RUNNER),
        '--quick',
        '--jobs',
        '1',
        '--datasets',
        f's2={S2_TILE_A}:{labels}',
        '--primary',
        's2',
        '--methods',
        'random',
        'zero_step',
        'glcnet',
        '--pretrain-seeds',
        '0',
        '--seeds',
        '0',
        '--budgets',
        '2',
        '--results',
        str(results),
        '--work',
        str(work),
    ]
    subprocess.run(command, check=True, capture_output=True, env=os.environ)
    with open(results / 'protocol_runs.csv') as f:
        rows = list(csv.DictReader(f))
    required = {
        'dataset',
        'method',
        'evaluation',
        'label_tiles',
        'pretrain_seed',
        'seed',
        'test_Kappa',
        'test_OA',
        'test_mIoU',
    }
    assert required <= set(rows[0])
    assert {r['method'] for r in rows} == {'random', 'zero_step', 'glcnet'}
    assert {r['evaluation'] for r in rows} == {'probe', 'finetune'}
    assert len(rows) == 3 * 2
    page = (results / 'protocol.md').read_text()
    assert '## s2' in page and 'vs random' in page


def test_pair_files_pairs_globs_by_their_star_and_folders_by_name(
    scene_folder: Path, tmp_path: Path
) -> None:
    pairs = pair_files(f'{scene_folder}/*_img.tif', f'{scene_folder}/*_lbl.tif')
    assert [(Path(i).name, Path(m).name) for i, m in pairs] == [
        (f'{n}_img.tif', f'{n}_lbl.tif') for n, *_ in SCENES
    ]
    images, masks = tmp_path / 'images', tmp_path / 'masks'
    images.mkdir()
    masks.mkdir()
    for name in ('x.tif', 'y.tif'):
        (images / name).write_bytes(b'')
        (masks / name).write_bytes(b'')
    assert [Path(i).name for i, _ in pair_files(str(images), str(masks))] == [
        'x.tif',
        'y.tif',
    ]
    os.remove(scene_folder / 'c_lbl.tif')
    with pytest.raises(ValueError, match=r'c_img\.tif: no mask'):
        pair_files(f'{scene_folder}/*_img.tif', f'{scene_folder}/*_lbl.tif')
    with pytest.raises(ValueError, match='numbers of'):
        pair_files(f'{scene_folder}/*_img.tif', f'{scene_folder}/lbl.tif')


def test_scenes_are_split_by_scene_whatever_their_order() -> None:
    names = [f'/data/scene{i:02d}_img.tif' for i in range(64)]

    def split(images: list[str]) -> dict[str, list[str]]:
        data = LabelledSet('s', images, images, None, None, None, 1, '')
        data.split_by_scene(seed=3)
        return data.scenes

    scenes = split(names)
    assert [len(scenes[p]) for p in ('train', 'val', 'test')] == [44, 10, 10]
    every = scenes['train'] + scenes['val'] + scenes['test']
    assert sorted(every) == sorted(Path(n).stem for n in names)
    assert split(names[::-1]) == scenes
    data = LabelledSet('s', names[:3], names[:3], None, None, None, 1, '')
    data.split_by_scene()
    assert all(len(v) == 1 for v in data.scenes.values())


def test_a_glob_spec_of_many_scenes_is_split_by_scene(scene_folder: Path) -> None:
    spec = f'mine={scene_folder}/*_img.tif:{scene_folder}/*_lbl.tif'
    data = image_mask_pair(spec)
    assert isinstance(data, LabelledSet) and data.by_scene
    assert sum(len(v) for v in data.scenes.values()) == 4
    train = data.scene_files('train')
    assert [Path(i).stem for i, _ in train] == data.scenes['train']
    single = image_mask_pair(f'one={S2_TILE_A}:{S2_LABELS}')
    assert isinstance(single, LabelledSet) and not single.by_scene


def test_scenes_are_tiled_on_their_own_grids_without_resampling(
    scene_folder: Path,
) -> None:
    stats = BandStats(mean=[1000.0] * 4, std=[500.0] * 4, bands=[1, 2, 3, 4])
    scenes = {
        part: [(str(scene_folder / f'{n}_img.tif'), str(scene_folder / f'{n}_lbl.tif'))]
        for part, n in (('train', 'a'), ('val', 'b'), ('test', 'd'))
    }
    scenes['train'].append(
        (str(scene_folder / 'c_img.tif'), str(scene_folder / 'c_lbl.tif'))
    )
    tiled = read_scenes('s', scenes, [0, 1, 2], ['0', '1', '2'], stats, 64, {'val': 3})

    # Every tile of the two training scenes (4 x 4 each) at least half labelled,
    # 3 drawn from the validation scene, every such tile of the test scene.
    def labelled_tiles(mask_path: str) -> int:
        with rasterio.open(mask_path) as src:
            labelled = np.isin(src.read(1), [0, 1, 2]).reshape(4, 64, 4, 64)
        return int((labelled.mean(axis=(1, 3)) >= 0.5).sum())

    assert (
        len(tiled.train_tiles)
        == len(tiled.train.images)
        == sum(labelled_tiles(mask) for _, mask in scenes['train'])
    )
    assert {t[0] for t in tiled.train_tiles} == {0, 1}
    assert len(tiled.val.images) == 3
    assert len(tiled.test.images) == labelled_tiles(scenes['test'][0][1]) < 16
    # A training tile is the file's own pixels, normalised: nothing resampled.
    scene, row, col = tiled.train_tiles[-1]
    path = scenes['train'][scene][0]
    with rasterio.open(path) as src:
        raw = src.read(window=Window(col * 64, row * 64, 64, 64)).astype(np.float32)
    expected = (torch.from_numpy(raw) - 1000.0) / 500.0
    torch.testing.assert_close(tiled.train.images[-1], expected)
    with rasterio.open(scenes['train'][scene][1]) as src:
        raw_mask = src.read(1, window=Window(col * 64, row * 64, 64, 64))
    expected_mask = np.where(np.isin(raw_mask, [0, 1, 2]), raw_mask, IGNORE)
    assert np.array_equal(tiled.train.masks[-1].numpy(), expected_mask)
    # Percentages count against the whole training scenes' labelled pixels.
    with (
        rasterio.open(scenes['train'][0][1]) as a,
        rasterio.open(scenes['train'][1][1]) as c,
    ):
        labelled = sum(int(np.isin(f.read(1), [0, 1, 2]).sum()) for f in (a, c))
    assert tiled.labelled_pixels == labelled


def test_percentage_budgets_count_labelled_pixels_and_nest() -> None:
    masks = torch.zeros(100, 8, 8, dtype=torch.uint8)
    masks[50:, :4] = IGNORE  # half the tiles half labelled
    tiles = Tiles(torch.zeros(100, 1, 8, 8), masks)
    data = TiledSet(
        name='t',
        class_names=['a'],
        train_tiles=[(0, i // 10, i % 10) for i in range(100)],
        train=tiles,
        val=tiles[:1],
        test=tiles[:1],
        labelled_pixels=2 * int((masks != IGNORE).sum()),  # half the area tiled
    )
    for seed in range(3):
        one, ten = data.budget('1%', seed), data.budget('10%', seed)
        assert ten[: len(one)] == one
        for budget, share in (('1%', 0.01), ('10%', 0.1)):
            chosen = data.budget(budget, seed)
            got = int((masks[chosen] != IGNORE).sum())
            # The first tiles whose labelled pixels reach the share, no more.
            assert got >= share * data.labelled_pixels
            assert got - int((masks[chosen[-1]] != IGNORE).sum()) < (
                share * data.labelled_pixels
            )
        assert data.budget('7', seed) == data.budget('50%', seed)[:7]
    assert len(data.budget('50%', 0)) == 100  # every tile: half the area's labels
    with pytest.raises(ValueError, match='needs'):
        data.budget('51%', 0)


def test_scenes_are_laid_out_for_pretraining_with_their_pixels(
    scene_folder: Path, tmp_path: Path
) -> None:
    images = [str(scene_folder / f'{n}_img.tif') for n, *_ in SCENES]
    copies = lay_out_scenes(images, str(tmp_path / 'laid'))
    boxes = []
    for image, copy in zip(images, copies, strict=True):
        with rasterio.open(image) as src, rasterio.open(copy) as dst:
            assert np.array_equal(src.read(), dst.read())
            assert dst.res == src.res and dst.crs == 'EPSG:32633'
            boxes.append(dst.bounds)
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:  # apart: a view never spans two scenes
            assert (
                a.right < b.left
                or b.right < a.left
                or a.top < b.bottom
                or b.top < a.bottom
            )


def test_protocol_runs_on_scenes_in_many_crss(
    scene_folder: Path, tmp_path: Path
) -> None:
    """Globs of scenes: split by scene, pretraining on training scenes, % budgets."""
    results, work = tmp_path / 'results', tmp_path / 'work'
    spec = f'mine={scene_folder}/*_img.tif:{scene_folder}/*_lbl.tif'
    command = [
        sys.executable,
        str(RUNNER),
        '--quick',
        '--jobs',
        '1',
        '--datasets',
        spec,
        '--primary',
        'mine',
        '--methods',
        'random',
        'glcnet',
        '--evaluations',
        'probe',
        '--pretrain-seeds',
        '0',
        '--seeds',
        '0',
        '--budgets',
        '20%',
        '--results',
        str(results),
        '--work',
        str(work),
    ]
    subprocess.run(command, check=True, capture_output=True, env=os.environ)
    settings = json.loads((results / 'protocol_settings.json').read_text())
    (data,) = settings['datasets']
    train = data['scenes']['train']
    assert len(train) == 2 and len(data['scenes']['test']) == 1
    laid = sorted(os.listdir(work / 'mine' / 'pretrain_scenes'))
    assert laid == sorted(f'{name}.tif' for name in train)
    with open(results / 'protocol_runs.csv') as f:
        rows = list(csv.DictReader(f))
    assert {r['budget'] for r in rows} == {'20%'}
    assert {r['method'] for r in rows} == {'random', 'glcnet'}
    assert all(int(r['label_tiles']) >= 1 for r in rows)
    page = (results / 'protocol.md').read_text()
    assert 'Split by scene' in page and 'Per-class test F1' in page
