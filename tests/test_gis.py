"""Outputs that explain themselves in GIS, as GDAL (and so QGIS) reads them: class
names and colours, plain-grey probabilities, provenance tags, and class polygons."""

import ctypes
import datetime
import hashlib
import json
import os
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
import torch
from affine import Affine
from conftest import LANDSAT8, S2_TILE_A, fcn_task, save_task_checkpoint
from torch import nn

import glcgeo
import glcgeo.inference.polygons as polygons_module
from glcgeo.cli import main
from glcgeo.errors import GlcgeoError
from glcgeo.inference import CheckpointMetadata, predict_raster
from glcgeo.inference.polygons import POLYGON_LAYER, vectorize
from glcgeo.provenance import Provenance

LABELS = Path(__file__).parent / 'data' / 'demo_labels' / 's2_pseudo_labels.tif'

#: Names that XML must escape, and a class GDAL would take for an alpha band.
NAMES = ('water', 'vegetation', 'other <land> & "sand"', 'cloud', 'snow')


def _gdal() -> Any:
    """The GDAL library rasterio runs on (``gdalinfo``'s own code, as a library)."""
    with open('/proc/self/maps') as maps:
        paths = {line.split()[-1] for line in maps if 'libgdal' in line}
    if not paths:
        pytest.skip('no GDAL library found in this process')
    gdal = ctypes.CDLL(paths.pop())
    gdal.GDALOpenEx.restype = ctypes.c_void_p
    gdal.GDALOpenEx.argtypes = [ctypes.c_char_p, ctypes.c_uint] + [ctypes.c_void_p] * 3
    gdal.GDALInfoOptionsNew.restype = ctypes.c_void_p
    gdal.GDALInfoOptionsNew.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    gdal.GDALInfo.restype = ctypes.c_void_p
    gdal.GDALInfo.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    gdal.GDALClose.argtypes = [ctypes.c_void_p]
    gdal.GDALInfoOptionsFree.argtypes = [ctypes.c_void_p]
    gdal.VSIFree.argtypes = [ctypes.c_void_p]
    return gdal


def gdalinfo(path: Path) -> dict[str, Any]:
    """``gdalinfo -json PATH``, as GDAL reports the file and its sidecars."""
    gdal = _gdal()
    argv = (ctypes.c_char_p * 2)(b'-json', None)
    options = gdal.GDALInfoOptionsNew(argv, None)
    dataset = gdal.GDALOpenEx(str(path).encode(), 0x02, None, None, None)  # raster
    assert dataset, path
    try:
        text = gdal.GDALInfo(dataset, options)
        report = json.loads(ctypes.string_at(text).decode())
        gdal.VSIFree(text)
    finally:
        gdal.GDALClose(dataset)
        gdal.GDALInfoOptionsFree(options)
    return report


def _pointwise(num_classes: int) -> tuple[nn.Module, CheckpointMetadata]:
    """A 1x1-convolution model of the 4-band Sentinel-2 tile."""
    torch.manual_seed(0)
    return nn.Conv2d(4, num_classes, kernel_size=1), CheckpointMetadata(
        model='pointwise',
        backbone='none',
        in_channels=4,
        num_classes=num_classes,
        class_names=NAMES[:num_classes],
        band_mean=(1000.0,) * 4,
        band_std=(500.0,) * 4,
    )


def _predict(tmp_path: Path, num_classes: int, **options: Any) -> Path:
    model, metadata = _pointwise(num_classes)
    out = tmp_path / 'map.tif'
    predict_raster(model, metadata, S2_TILE_A, out, tile_size=256, overlap=32,
                   progress=False, **options)  # fmt: skip
    return out


# Legends: class names and colours where GDAL and QGIS read them.


def test_class_names_reach_gdal_and_qgis_with_their_colours(tmp_path: Path) -> None:
    out = _predict(tmp_path, 5)
    _, metadata = _pointwise(5)
    colours = [list(rgb) for rgb in metadata.class_colors]
    assert sorted(os.listdir(tmp_path)) == ['map.qml', 'map.tif', 'map.tif.aux.xml']
    band = gdalinfo(out)['bands'][0]
    assert band['colorInterpretation'] == 'Palette'
    assert band['categories'] == list(NAMES)  # in class order
    assert [entry[:3] for entry in band['colorTable']['entries'][:5]] == colours
    table = band['rat']
    assert table['tableType'] == 'thematic'
    assert [field['name'] for field in table['fieldDefn']] == [
        'value', 'class_name', 'red', 'green', 'blue'
    ]  # fmt: skip
    assert [row['f'] for row in table['row']] == [
        [value, name, *rgb]
        for value, (name, rgb) in enumerate(zip(NAMES, colours, strict=True))
    ]
    # QGIS's style: one legend entry per class, with its name and colour (the
    # colour table has 256 entries).
    palette = ET.parse(tmp_path / 'map.qml').getroot().find('.//colorPalette')
    assert palette is not None
    assert [
        (int(e.get('value', '')), e.get('label'), e.get('color'))
        for e in palette.iter('paletteEntry')
    ] == [
        (i, name, '#{:02x}{:02x}{:02x}'.format(*rgb))
        for i, (name, rgb) in enumerate(zip(NAMES, colours, strict=True))
    ]


def test_sidecars_are_published_before_their_map(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    published: list[str] = []
    replace = os.replace

    def recording(source: str, destination: str) -> None:
        published.append(os.path.basename(destination))
        replace(source, destination)

    monkeypatch.setattr(os, 'replace', recording)
    _predict(tmp_path, 3)
    # Under its name, a map always has its sidecars.
    assert published[-1] == 'map.tif'
    assert sorted(published[:-1]) == ['map.qml', 'map.tif.aux.xml']


# Probabilities: plain grey bands, named after their classes.


@pytest.mark.parametrize('num_classes', [1, 3, 4, 5])
def test_probability_bands_are_plain_grey_for_any_class_count(
    tmp_path: Path, num_classes: int
) -> None:
    scores = tmp_path / 'scores.tif'
    out = _predict(tmp_path, num_classes, probabilities=scores, confidence=True)
    report = gdalinfo(scores)
    assert report['metadata']['IMAGE_STRUCTURE']['LAYOUT'] == 'COG'
    interpretations = [band['colorInterpretation'] for band in report['bands']]
    # Gray, then undefined: never RGB(A), so no class becomes a transparency mask.
    assert interpretations == ['Gray'] + ['Undefined'] * num_classes
    assert [band.get('description') for band in report['bands']] == [
        *NAMES[:num_classes],
        'confidence',
    ]
    with rasterio.open(scores) as src, rasterio.open(out) as classes:
        assert src.colorinterp[0].name == 'gray' and src.nodata == 255
        percent, ids = src.read(), classes.read(1)
    valid = ids != 255
    # The confidence band is the mapped class's percentage, the highest here.
    np.testing.assert_array_equal(
        percent[-1][valid],
        np.take_along_axis(percent[:-1], ids[None].astype(int), 0)[0][valid],
    )
    np.testing.assert_array_equal(percent[-1][valid], percent[:-1].max(0)[valid])


# Provenance on every output.


@pytest.fixture(scope='module')
def glcgeo_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-band FCN with band statistics, as glcgeo's fine-tuning writes them."""
    task = fcn_task(4, 3)
    task.hparams.update(
        {
            'bands': [3, 2, 1, 4],
            'band_mean': [1000.0, 900.0, 800.0, 2000.0],
            'band_std': [300.0, 250.0, 350.0, 700.0],
            'class_names': ['water', 'vegetation', 'other land'],
        }
    )
    return save_task_checkpoint(task, tmp_path_factory.mktemp('model') / 'ft.ckpt')


def test_every_output_carries_its_provenance(
    tmp_path: Path, glcgeo_checkpoint: Path
) -> None:
    out, scores = tmp_path / 'map.tif', tmp_path / 'scores.tif'
    before = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    assert main(['predict', '--in', str(LANDSAT8), '--out', str(out), '--model',
                 str(glcgeo_checkpoint), '--probabilities', str(scores),
                 '--tile-size', '128', '--overlap', '32', '--batch-size', '3',
                 '--quiet']) == 0  # fmt: skip
    digest = hashlib.sha256(glcgeo_checkpoint.read_bytes()).hexdigest()
    for path in (out, scores):
        with rasterio.open(path) as src:
            tags = src.tags()
        assert tags['glcgeo_version'] == glcgeo.__version__
        assert tags['checkpoint'] == 'ft.ckpt'
        assert tags['checkpoint_sha256'] == digest
        assert tags['source'] == str(LANDSAT8.resolve())
        assert tags['model'] == 'fcn resnet50'
        assert json.loads(tags['bands']) == [3, 2, 1, 4]
        assert json.loads(tags['band_mean']) == [1000.0, 900.0, 800.0, 2000.0]
        assert json.loads(tags['band_std']) == [300.0, 250.0, 350.0, 700.0]
        assert json.loads(tags['settings']) == {
            'tile_size': 128, 'overlap': 32, 'batch_size': 3, 'device': 'cpu',
            'nodata': None,
        }  # fmt: skip
        created = datetime.datetime.fromisoformat(tags['created'])
        assert created.utcoffset() == datetime.timedelta(0)
        assert before <= created <= datetime.datetime.now(datetime.UTC)


def test_provenance_keeps_no_url_query_and_takes_a_fixed_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, metadata = _pointwise(3)
    monkeypatch.setenv('SOURCE_DATE_EPOCH', '1796256000')
    tags = Provenance().tags('https://host/a/scene.tif?sig=secret#x', metadata, {})
    assert tags['source'] == 'https://host/a/scene.tif'
    assert 'checkpoint' not in tags
    assert tags['created'] == '2026-12-03T00:00:00+00:00'
    monkeypatch.setenv('SOURCE_DATE_EPOCH', 'yesterday')
    with pytest.raises(GlcgeoError, match='SOURCE_DATE_EPOCH must be whole seconds'):
        Provenance().tags('scene.tif', metadata, {})


# Polygons.


def _pixel_counts(path: Path) -> dict[int, int]:
    with rasterio.open(path) as src:
        classes, nodata = src.read(1), src.nodata
    values, counts = np.unique(classes[classes != nodata], return_counts=True)
    return dict(zip(values.tolist(), counts.tolist(), strict=True))


def _areas(path: Path) -> tuple[dict[int, float], list[tuple[int, float]]]:
    """(area per class, sorted (class, area) of each polygon) of a GeoPackage."""
    frame = pyogrio.read_dataframe(path, layer=POLYGON_LAYER)
    per_class = frame.groupby('class_id')['area_m2'].sum().to_dict()
    return per_class, sorted(zip(frame['class_id'], frame['area_m2'], strict=True))


def test_polygons_cover_each_class_whatever_the_row_bands(tmp_path: Path) -> None:
    # 10 m pixels: 100 m^2 each.
    expected = {value: count * 100.0 for value, count in _pixel_counts(LABELS).items()}
    results = []
    for rows in (None, 100, 37):
        out = tmp_path / f'rows{rows}.gpkg'
        count = vectorize(LABELS, out, band_rows=rows)
        per_class, polygons = _areas(out)
        assert per_class == expected
        assert count == len(polygons)
        results.append(polygons)
    # Regions cut by band edges are merged back: the same polygons in every case.
    assert results[1] == results[0] and results[2] == results[0]
    assert len(results[0]) > 1000


def test_small_polygons_are_left_out(tmp_path: Path) -> None:
    out = tmp_path / 'large.gpkg'
    assert vectorize(LABELS, out, min_area=50, band_rows=64) > 0
    _, polygons = _areas(out)
    assert min(area for _, area in polygons) >= 50 * 100.0


def test_areas_in_degrees_are_geodesic() -> None:
    from rasterio.crs import CRS

    # A 0.001-degree pixel at the equator: 111.32 m x 110.57 m.
    area_m2 = polygons_module._area_m2(
        CRS.from_epsg(4326), Affine(0.001, 0, 0, 0, -0.001, 0.001)
    )
    pixel = shapely.box(0, 0, 0.001, 0.001)
    (area,) = area_m2(np.array([1.0]), np.array([pixel]))
    assert area == pytest.approx(111_319.5 * 110_574.4 * 1e-6, rel=1e-3)


def test_predict_polygons_open_as_one_layer_named_by_class(
    tmp_path: Path, glcgeo_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, polygons = tmp_path / 'map.tif', tmp_path / 'map.gpkg'
    arguments = ['predict', '--in', str(S2_TILE_A), '--out', str(out),
                 '--model', str(glcgeo_checkpoint), '--polygons', str(polygons),
                 '--tile-size', '256', '--overlap', '32']  # fmt: skip
    assert main(arguments) == 0
    assert f'{polygons}: ' in capsys.readouterr().out
    assert pyogrio.list_layers(polygons).tolist() == [[POLYGON_LAYER, 'Polygon']]
    frame = pyogrio.read_dataframe(polygons)
    assert frame.crs.to_epsg() == 32618
    names = ['water', 'vegetation', 'other land']
    assert set(zip(frame['class_id'], frame['class_name'], strict=True)) <= set(
        enumerate(names)
    )
    per_class, _ = _areas(polygons)
    assert per_class == {v: c * 100.0 for v, c in _pixel_counts(out).items()}
    with rasterio.open(out) as src:
        provenance = src.tags()
    layer = pyogrio.read_info(polygons)['layer_metadata']
    assert layer['checkpoint_sha256'] == provenance['checkpoint_sha256']
    assert layer['map'] == str(out)
    # A second run keeps both unless --overwrite.
    assert main(arguments) == 2
    assert 'map.tif: output exists' in capsys.readouterr().err
    assert main([*arguments, '--overwrite']) == 0


def test_vectorize_command_keeps_what_exists_and_leaves_nothing_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / 'labels.gpkg'
    out.write_bytes(b'precious')
    assert main(['vectorize', '--in', str(LABELS), '--out', str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f'glcgeo: {out}: output exists (use --overwrite to replace it)\n'
    assert out.read_bytes() == b'precious'
    assert (
        main(
            [
                'vectorize',
                '--in',
                str(tmp_path / 'missing.tif'),
                '--out',
                str(tmp_path / 'a.gpkg'),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith('glcgeo: ') and err.count('\n') == 1 and 'missing.tif' in err
    assert (
        main(['vectorize', '--in', str(S2_TILE_A), '--out', str(tmp_path / 'a.gpkg')])
        == 2
    )
    assert 'not a class map: 4 uint16 bands' in capsys.readouterr().err
    assert (
        main(['vectorize', '--in', str(LABELS), '--out', str(out), '--min-area', '0'])
        == 2
    )
    assert '--min-area: must be > 0' in capsys.readouterr().err
    # A failure part-way (a full disk, Ctrl-C) leaves the old file, no partial one.
    monkeypatch.setattr(polygons_module, '_WRITE_BATCH', 100)
    write = polygons_module._write
    calls = []

    def failing(*args: Any) -> None:
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        write(*args)

    monkeypatch.setattr(polygons_module, '_write', failing)
    with pytest.raises(KeyboardInterrupt):
        vectorize(LABELS, out, overwrite=True)
    assert os.listdir(tmp_path) == ['labels.gpkg']
    assert out.read_bytes() == b'precious'
    monkeypatch.setattr(polygons_module, '_write', write)
    assert (
        main(['vectorize', '--in', str(LABELS), '--out', str(out), '--overwrite']) == 0
    )
    assert capsys.readouterr().out.startswith(f'{out}: ')
    assert len(pyogrio.read_dataframe(out)) > 1000
    assert main(['vectorize', '--in', str(LABELS), '--out', str(out), '--overwrite',
                 '--quiet']) == 0  # fmt: skip
    assert capsys.readouterr().out == ''


def test_polygons_go_to_a_geopackage_named_so(
    tmp_path: Path, glcgeo_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: vectorize wrote a GeoPackage under a .shp name; predict --polygons
    # failed only once its map was written, and the rerun found the map there.
    shapefile = tmp_path / 'map.shp'
    assert main(['vectorize', '--in', str(LABELS), '--out', str(shapefile)]) == 2
    assert capsys.readouterr().err == (
        f'glcgeo: {shapefile}: polygons are written as a GeoPackage: name the file '
        '.gpkg\n'
    )
    model = str(glcgeo_checkpoint)
    arguments = ['predict', '--in', str(S2_TILE_A), '--out', str(tmp_path / 'm.tif'),
                 '--model', model, '--polygons', str(shapefile)]  # fmt: skip
    assert main(arguments) == 2
    assert 'name the file .gpkg' in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_a_map_without_crs_is_vectorized_without_warnings(tmp_path: Path) -> None:
    # Its polygons are in pixel-grid units, as documented; pyogrio warned of it.
    with rasterio.open(LABELS) as src:
        profile, ids = src.profile, src.read()
    profile.pop('crs')
    no_crs = tmp_path / 'no_crs.tif'
    with rasterio.open(no_crs, 'w', **profile) as dst:
        dst.write(ids)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert vectorize(no_crs, tmp_path / 'no_crs.gpkg') > 0
    assert pyogrio.read_dataframe(tmp_path / 'no_crs.gpkg').crs is None
