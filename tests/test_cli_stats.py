"""``glcgeo stats``: statistics JSON, table, overwrite protection, one-line errors."""

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import LANDSAT8, QUADRANT_DIR, S2_TILES

from glcgeo.cli import main
from glcgeo.datasets import GeoTiffMosaic
from glcgeo.stats import BandStats, compute_band_stats


def test_writes_statistics_and_prints_a_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / 'stats.json'
    args = ['stats', '--data', str(LANDSAT8), '--out', str(out), '--windows', '4']
    assert main([*args, '--bands', '7', 'B2']) == 0
    stats = BandStats.load(out)
    assert stats.bands == [7, 2]
    expected = compute_band_stats(GeoTiffMosaic(LANDSAT8, bands=[7, 2]), windows=4)
    np.testing.assert_allclose(stats.mean, expected.mean)
    np.testing.assert_allclose(stats.std, expected.std)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split() == ['band', 'name', 'mean', 'std']
    assert printed[1].split()[:3] == ['7', 'B7', f'{stats.mean[0]:.4f}']
    assert printed[2].split()[:2] == ['2', 'B2']
    assert str(out) in printed[-1]
    assert os.listdir(tmp_path) == ['stats.json']
    assert main([*args, '--overwrite', '--quiet']) == 0
    assert capsys.readouterr().out == ''


def test_globs_and_folders_and_nodata(tmp_path: Path) -> None:
    out = tmp_path / 'stats.json'
    data = [str(QUADRANT_DIR / 'rgb[12].tif'), str(QUADRANT_DIR / 'rgb[34].tif')]
    assert main(['stats', '--data', *data, '--out', str(out), '--windows', '4']) == 0
    stats = BandStats.load(out)
    assert len(stats.files) == 4 and stats.nodata == 0
    assert main(['stats', '--data', str(S2_TILES), '--out', str(out),
                 '--windows', '2', '--nodata', '0', '--overwrite']) == 0  # fmt: skip
    stats = BandStats.load(out)
    assert len(stats.files) == 2 and stats.nodata == 0 and len(stats.mean) == 4


def test_keeps_existing_output_unless_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / 'stats.json'
    out.write_text('keep me')
    args = ['stats', '--data', str(LANDSAT8), '--out', str(out), '--windows', '2']
    assert main(args) == 2
    error = capsys.readouterr().err
    assert error == f'glcgeo: {out}: output exists (use --overwrite to replace it)\n'
    assert out.read_text() == 'keep me'
    assert main([*args, '--overwrite']) == 0
    assert BandStats.load(out).bands == list(range(1, 8))


def _bad_cases(tmp_path: Path) -> dict[str, tuple[list[str], Path]]:
    """Arguments after ``stats`` and the file the error must name."""
    text = tmp_path / 'notes.tif'
    text.write_text('not a raster')
    missing = tmp_path / 'no.tif'
    out = ['--out', str(tmp_path / 'stats.json')]
    return {
        'missing file': (['--data', str(missing), *out], missing),
        'not a raster': (['--data', str(text), *out], text),
        'band out of range': (
            ['--data', str(LANDSAT8), '--bands', '8', *out],
            LANDSAT8,
        ),
        'output folder missing': (
            ['--data', str(LANDSAT8), '--out', str(tmp_path / 'no' / 's.json')],
            tmp_path / 'no',
        ),
    }


@pytest.mark.parametrize(
    'case',
    ['missing file', 'not a raster', 'band out of range', 'output folder missing'],
)
def test_bad_input_is_one_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    args, culprit = _bad_cases(tmp_path)[case]
    before = sorted(os.listdir(tmp_path))
    assert main(['stats', *args]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f'glcgeo: {culprit}: ')
    assert captured.err.count('\n') == 1
    assert sorted(os.listdir(tmp_path)) == before
