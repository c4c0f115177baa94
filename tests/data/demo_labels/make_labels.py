"""Derive the demo's pseudo-labels from the shipped Sentinel-2 tiles.

These are NOT human annotations: each pixel's class comes from two spectral indices
of the CC0 Sentinel-2 L1C crops in ``tests/data/sentinel2_10m_tiles`` (bands B02,
B03, B04, B08, top-of-atmosphere reflectance x 10000):

* NDWI = (B03 - B08) / (B03 + B08)  (McFeeters 1996), NDVI = (B08 - B04) / (B08 + B04)
* class 0 ``water``:      NDWI > 0.1
* class 1 ``vegetation``: NDVI > 0.45 (and not water)
* class 2 ``other land``: NDVI < 0.25 and NDWI < -0.05 (bare soil, sand, built-up,
  sparse vegetation)
* 255 (nodata): outside both tiles, or between the thresholds (left unlabelled
  so that the demo's labels are not guesses).

The output is one uint8 GeoTIFF on the tiles' own 10 m grid (EPSG:32618) over the
union of both tiles: ``s2_pseudo_labels.tif``. Run from the repository root::

    .venv/bin/python tests/data/demo_labels/make_labels.py
"""

import os

import numpy as np
import rasterio
from rasterio.merge import merge

HERE = os.path.dirname(os.path.abspath(__file__))
TILES = os.path.join(HERE, '..', 'sentinel2_10m_tiles')
OUTPUT = os.path.join(HERE, 's2_pseudo_labels.tif')
CLASS_NAMES = ('water', 'vegetation', 'other land')
CLASS_COLORS = ((31, 120, 180), (51, 160, 44), (222, 184, 135))
NODATA = 255


def pseudo_labels(image: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Classes from NDWI and NDVI thresholds.

    Args:
        image: [4, H, W] B02, B03, B04, B08 reflectance (any scale).
        valid: [H, W] True where a tile covers the pixel.

    Returns:
        [H, W] uint8 class ids, NODATA where invalid or uncertain.
    """
    _, green, red, nir = image.astype(np.float64)
    with np.errstate(divide='ignore', invalid='ignore'):
        ndwi = (green - nir) / (green + nir)
        ndvi = (nir - red) / (nir + red)
    labels = np.full(valid.shape, NODATA, dtype=np.uint8)
    water = ndwi > 0.1
    vegetation = ~water & (ndvi > 0.45)
    other = ~water & (ndvi < 0.25) & (ndwi < -0.05)
    labels[other] = 2
    labels[vegetation] = 1
    labels[water] = 0
    labels[~valid] = NODATA
    return labels


def main() -> None:
    files = sorted(
        os.path.join(TILES, name) for name in os.listdir(TILES) if name.endswith('.tif')
    )
    sources = [rasterio.open(path) for path in files]
    try:
        # The tiles have no nodata tag: mark pixels outside them with a count band.
        image, transform = merge(sources, nodata=0)
        coverage, _ = merge(sources, indexes=[1], nodata=0, method='count')
        profile = sources[0].profile
    finally:
        for source in sources:
            source.close()
    labels = pseudo_labels(image, coverage[0] > 0)
    profile.update(
        count=1,
        dtype='uint8',
        nodata=NODATA,
        width=labels.shape[1],
        height=labels.shape[0],
        transform=transform,
        compress='deflate',
        tiled=True,
        blockxsize=256,
        blockysize=256,
    )
    with rasterio.open(OUTPUT, 'w', **profile) as dst:
        dst.write(labels, 1)
        dst.set_band_description(1, 'pseudo-label (NDWI/NDVI thresholds)')
        dst.write_colormap(
            1, {i: (*colour, 255) for i, colour in enumerate(CLASS_COLORS)}
        )
        dst.update_tags(
            1,
            **{f'class_{i}': name for i, name in enumerate(CLASS_NAMES)},
            source='index-derived pseudo-labels, not human annotation',
        )
    counts = {name: int((labels == i).sum()) for i, name in enumerate(CLASS_NAMES)}
    counts['unlabelled'] = int((labels == NODATA).sum())
    print(f'{OUTPUT}: {labels.shape[1]} x {labels.shape[0]} pixels, {counts}')


if __name__ == '__main__':
    main()
