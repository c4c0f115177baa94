"""Window pairs, end to end: what a pair is, how it is read, batched and cut.

A :class:`WindowPair` (drawn by :class:`~glcgeo.samplers.PairedWindowSampler`) is
two overlapping windows of a mosaic's pixel grid and the ground regions they
share. Its path to the network:

1. :class:`GeoTiffUnions` (a DataLoader worker) reads the pair's *union*
   window once, in the files' dtype, with both views' windows in union pixels,
   their float64 transforms, valid fractions and the matched regions' boxes:
   the *union form* (:meth:`GeoTiffUnions.read_union`).
2. :func:`collate_unions` packs a batch's unions, unpadded, into one buffer.
3. :func:`cut_views`, after the batch reaches the device, pads the unions
   (:func:`unpack_unions`) and cuts and resizes both views of every pair in one
   :func:`torchvision.ops.roi_align` call.

:class:`GeoTiffPairs` does the three at once on the CPU, pair by pair, for use
outside training: ``pairs[pair]`` holds the two cut views.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from rasterio.windows import Window
from torch import Tensor
from torch.utils.data import default_collate, get_worker_info
from torchgeo.datasets.utils import GeoSlice, Sample
from torchvision.ops import roi_align

from .datasets import GeoTiffMosaic
from .geometry import PixelBox, PixelGrid, ground_to_pixel_boxes
from .rasters import valid_pixels

__all__ = [
    'UNION_KEYS',
    'GeoTiffPairs',
    'GeoTiffUnions',
    'WindowPair',
    'collate_unions',
    'cut_views',
    'unpack_unions',
]

#: Keys of the union form (GeoTiffUnions.read_union, collate_unions) that
#: cut_views replaces.
UNION_KEYS = ('union', 'union_shape', 'window1', 'window2')


@dataclass(frozen=True)
class WindowPair:
    """Two overlapping windows of a mosaic's pixel grid, and where they match.

    All windows and boxes are in pixels of the mosaic's grid
    (:attr:`glcgeo.datasets.GeoTiffMosaic.grid`; in a collection of several
    CRSs, that of the pair's group).

    Attributes:
        view1: the first view's window (read pixels; resized to *size*).
        view2: the second view's window.
        union: the smallest window holding both views: the one window read.
        overlap: the intersection of the two views.
        regions: ground regions inside the overlap, matched across the views.
        size: width and height of each view after resizing, in pixels.
        group: the CRS group of a :class:`~glcgeo.collection.GeoTiffCollection`
            whose grid the windows are of (0 for a mosaic of one CRS).

    """

    view1: Window
    view2: Window
    union: Window
    overlap: PixelBox
    regions: tuple[PixelBox, ...]
    size: int
    group: int = 0


def _union_geometry(
    grid: PixelGrid, pairs: Sequence[WindowPair]
) -> dict[str, np.ndarray]:
    """The geometry of pairs in the union form, computed for all of them at once.

    Args:
        grid: the mosaic's pixel grid.
        pairs: the pairs, all with the same number of regions.

    Returns:
        [B, ...] arrays of the keys of
        :meth:`GeoTiffUnions.read_union` but ``union`` and ``valid{k}``.
    """
    count = len(pairs)
    # [B, 2 views, 4] (col, row, width, height) in grid pixels, and the unions.
    views = np.array(
        [
            [(w.col_off, w.row_off, w.width, w.height) for w in (p.view1, p.view2)]
            for p in pairs
        ],
        dtype=np.int64,
    )
    origin = np.array([(p.union.col_off, p.union.row_off) for p in pairs], np.int64)
    sizes = np.array([p.size for p in pairs], dtype=np.float64)
    regions = grid.boxes_to_map(
        np.array([p.regions for p in pairs], dtype=np.float64).reshape(-1, 4)
    ).reshape(count, -1, 4)
    geometry = {
        'regions': regions,
        'overlap': grid.boxes_to_map([p.overlap for p in pairs]),
    }
    for k in (1, 2):
        col, row, width, height = views[:, k - 1].T
        c0, r0 = col - origin[:, 0], row - origin[:, 1]
        geometry[f'window{k}'] = np.stack([c0, r0, c0 + width, r0 + height], axis=1)
        affines = grid.window_affines(views[:, k - 1], sizes)
        geometry[f'transform{k}'] = affines
        boxes = ground_to_pixel_boxes(regions, affines)
        geometry[f'boxes{k}'] = boxes.astype(np.float32)
    return geometry


def _regions_on_data(pair: WindowPair, valid: np.ndarray) -> WindowPair:
    """Move each region whose centre pixel holds no data onto the nearest that does.

    The sampler draws regions from a coarse coverage grid; the reader holds the
    pixels. A region whose centre pixel (the one holding its centre point, or
    below and right of it for an even side) has no data is shifted so that its
    centre is the nearest pixel with data among the centres that keep it inside
    the overlap; where no such centre exists (a region as wide as the overlap),
    it is shrunk a pixel at a time until one does. A region is centred on
    nodata only when the overlap holds no data at all.

    Args:
        pair: the pair, its boxes in pixels of the mosaic grid.
        valid: [H, W] True where the pair's union window holds data.

    Returns:
        the pair, with its regions moved where needed.
    """
    col0, row0 = int(pair.union.col_off), int(pair.union.row_off)
    x1, y1, x2, y2 = pair.overlap
    moved: list[PixelBox] = []
    for box in pair.regions:
        cx, cy = (box[0] + box[2]) // 2, (box[1] + box[3]) // 2
        found = box if valid[cy - row0, cx - col0] else None
        width, height = box[2] - box[0], box[3] - box[1]
        while found is None and min(width, height) >= 1:
            # The centres that keep a width x height box inside the overlap.
            lo_x, lo_y = x1 + width // 2, y1 + height // 2
            hi_x, hi_y = x2 - (width - width // 2), y2 - (height - height // 2)
            rows, cols = np.nonzero(
                valid[lo_y - row0 : hi_y - row0 + 1, lo_x - col0 : hi_x - col0 + 1]
            )
            if len(rows):
                nearest = np.argmin((rows + lo_y - cy) ** 2 + (cols + lo_x - cx) ** 2)
                col = int(cols[nearest]) + lo_x - width // 2
                row = int(rows[nearest]) + lo_y - height // 2
                found = (col, row, col + width, row + height)
            width, height = width - 1, height - 1
        moved.append(box if found is None else found)
    return replace(pair, regions=tuple(moved))


class GeoTiffUnions(GeoTiffMosaic):
    """A GeoTIFF mosaic read by window pairs in the union form, for data loaders.

    Indexing with a :class:`WindowPair` reads the pair's union window once,
    uncut (:meth:`read_union`); a batch of pairs (a DataLoader's
    ``__getitems__``) computes their geometry at once (:meth:`read_unions`).
    What a pair reads as is :meth:`read_pairs`, which subclasses change.
    TorchGeo slices read as from any :class:`~glcgeo.datasets.GeoTiffMosaic`.

    Example::

        unions = GeoTiffUnions('tiles/*.tif')
        sampler = PairedWindowSampler(unions, size=224)
        loader = DataLoader(unions, sampler=sampler, batch_size=32,
                            collate_fn=collate_unions)
        views = cut_views(next(iter(loader)), 224)

    .. versionadded:: 0.1
    """

    def __getitem__(self, index: GeoSlice | WindowPair) -> Sample:  # type: ignore[override]
        """Read a window pair, or a TorchGeo slice.

        Args:
            index: a :class:`WindowPair`, or ``[xmin:xmax:xres, ymin:ymax:yres]``
                in the dataset CRS.

        Returns:
            see :meth:`read_pairs`, or, for a slice,
            :meth:`glcgeo.datasets.GeoTiffMosaic.__getitem__`.
        """
        if isinstance(index, WindowPair):
            return self.read_pairs([index])[0]
        return super().__getitem__(index)

    def __getitems__(self, indices: Sequence[GeoSlice | WindowPair]) -> list[Sample]:
        """Read a batch of samples (as a DataLoader does, when a dataset has this).

        Args:
            indices: what :meth:`__getitem__` takes, one per sample.

        Returns:
            ``[self[index] for index in indices]``, window pairs read together
            (:meth:`read_pairs`).
        """
        if all(isinstance(i, WindowPair) for i in indices):
            return self.read_pairs(indices)  # type: ignore[arg-type]
        return [self[index] for index in indices]

    def read_pairs(self, pairs: Sequence[WindowPair]) -> list[Sample]:
        """The samples of window pairs: here, their union form.

        Args:
            pairs: the pairs, in pixels of :attr:`grid`.

        Returns:
            :meth:`read_unions`, whose geometry is computed once for all pairs.
        """
        return self.read_unions(pairs)

    def read_union(self, pair: WindowPair) -> Sample:
        """Read a pair's union window once, uncut, with both views' geometry.

        Cheap enough for DataLoader workers: one read in the files' dtype (no
        conversion, no resizing) and the valid fractions on those raw values. The
        views are cut later, by :func:`cut_views` on a batch.

        Args:
            pair: the two windows, in pixels of :attr:`grid`.

        Returns:
            a sample with ``union`` [C, H, W] raw values of the union window in
            the files' dtype (see :meth:`read_raw`) and, for view ``k`` in 1, 2:
            ``window{k}`` int64 [4] its window in union pixels (x1, y1, x2, y2;
            pixel-edge convention), ``transform{k}`` float64 [6] (rasterio affine,
            view pixel -> dataset CRS, once resized to ``pair.size``),
            ``valid{k}`` the fraction of its pixels with data; and ``regions``
            float64 [R, 4] ground boxes (xmin, ymin, xmax, ymax in the dataset CRS)
            inside the overlap, ``boxes{k}`` float32 [R, 4] the same boxes in
            view-``k`` pixels (x1, y1, x2, y2; pixel-edge convention), ``overlap``
            float64 [4] the overlap as a ground box.
        """
        return self.read_unions([pair])[0]

    def read_unions(self, pairs: Sequence[WindowPair]) -> list[Sample]:
        """Read pairs' union windows, each once, uncut, with both views' geometry.

        The samples of :meth:`read_union`, for pairs drawn by one sampler (the
        same number of regions each). The geometry of all pairs is computed at
        once, in float64 arrays, of which each sample's tensors are views: a
        batch of pairs costs the DataLoader workers little more than their reads.

        Args:
            pairs: the pairs, in pixels of :attr:`grid`.

        Returns:
            one sample per pair, as :meth:`read_union` returns it.
        """
        grid = self.grid
        raws = [self.read_raw(*grid.window_bounds(pair.union)) for pair in pairs]
        # One mask per union: both views' valid fractions are cut from it, and
        # the regions are moved onto data with it.
        valids = [self.valid_mask(raw) for raw in raws]
        pairs = [
            _regions_on_data(pair, valid.numpy())
            for pair, valid in zip(pairs, valids, strict=True)
        ]
        arrays = _union_geometry(grid, pairs)
        geometry = {key: torch.from_numpy(value) for key, value in arrays.items()}
        samples = []
        for i, (raw, valid) in enumerate(zip(raws, valids, strict=True)):
            sample: Sample = {'union': raw}
            # Counted by numpy, all at once where the union is all data: torch's
            # sums of small slices cost as much as a view's read.
            holds_data = valid.numpy()
            full = bool(holds_data.all())
            for k in (1, 2):
                sample[f'window{k}'] = geometry[f'window{k}'][i]
                c0, r0, c1, r1 = arrays[f'window{k}'][i].tolist()
                area = (c1 - c0) * (r1 - r0)
                count = area if full else np.count_nonzero(holds_data[r0:r1, c0:c1])
                sample[f'valid{k}'] = torch.tensor(np.float32(count) / np.float32(area))
            for key in ('transform1', 'transform2', 'boxes1', 'boxes2'):
                sample[key] = geometry[key][i]
            sample['regions'] = geometry['regions'][i]
            sample['overlap'] = geometry['overlap'][i]
            samples.append(sample)
        return samples


class GeoTiffPairs(GeoTiffUnions):
    """A GeoTIFF mosaic read by window pairs as their two views, cut on the CPU.

    The views of the training path (:func:`cut_views`), pair by pair, for use
    outside training: indexing with a :class:`WindowPair` returns both views
    (:meth:`read_pair`), passed through *transforms*, instead of the union form.

    Example::

        pairs = GeoTiffPairs('tiles/*.tif')
        sample = pairs[next(iter(PairedWindowSampler(pairs, size=224)))]
        sample['image1'], sample['image2']  # [C, 224, 224] float32 raw values

    .. versionadded:: 0.1
    """

    def read_pairs(self, pairs: Sequence[WindowPair]) -> list[Sample]:
        """The samples of window pairs: here, both views of each.

        Args:
            pairs: the pairs, in pixels of :attr:`grid`.

        Returns:
            :meth:`read_pair` of each pair.
        """
        return [self.read_pair(pair) for pair in pairs]

    def read_pair(self, pair: WindowPair) -> Sample:
        """Read a pair's union window once and cut both views from it.

        The views are cut by :func:`cut_views`, as the data module cuts them on
        the device: each view is the pair's window of the read grid, resized
        (antialiased bilinear) to ``pair.size`` pixels when its scale differs
        from 1.

        Args:
            pair: the two windows, in pixels of :attr:`grid`.

        Returns:
            the sample of :meth:`read_union` with ``union``, ``window1`` and
            ``window2`` replaced by, for view ``k`` in 1, 2, ``image{k}``
            [C, size, size] float32 raw values; then passed through *transforms*.
        """
        sample = self.read_union(pair)
        batch = cut_views(
            {key: value[None] for key, value in sample.items()},
            pair.size,
            self.file_nodata,
        )
        sample = {key: value[0] for key, value in batch.items()}
        if self.transforms is not None:
            sample = self.transforms(sample)
        return sample


def collate_unions(samples: Iterable[Sample]) -> dict[str, Tensor]:
    """Collate pairs in the union form, packing the union windows into one buffer.

    The unions of a batch differ in size. Padding them to the largest in the
    workers would ship nearly twice their bytes (and fill as much fresh shared
    memory); instead they are packed end to end, unpadded, in one flat buffer,
    with their shapes, and :func:`cut_views` pads them on the device
    (:func:`unpack_unions`).

    Args:
        samples: :meth:`GeoTiffUnions.read_union` samples, whose unions may
            differ in height and width.

    Returns:
        ``union`` [N] the unions' raw values, flattened (C, H, W order) and
        concatenated, in the samples' dtype; ``union_shape`` int64 [B, 3] each
        union's (C, H, W); and every other key stacked
        (:func:`torch.utils.data.default_collate`).
    """
    pairs = list(samples)
    unions = [pair['union'] for pair in pairs]
    total = sum(union.numel() for union in unions)
    if get_worker_info() is None:
        flat = unions[0].new_empty(total)
    else:
        # Filled in shared memory, a worker's batch reaches the main process
        # without the copy into it that sending a tensor makes, as in
        # default_collate (whose way this is).
        storage = unions[0]._typed_storage()._new_shared(total)
        flat = unions[0].new(storage)
    # Copied by numpy: torch's copies of uint16 are ~3x slower (2.x).
    packed, start = flat.numpy(), 0
    for union in unions:
        end = start + union.numel()
        packed[start:end] = union.numpy().reshape(-1)
        start = end
    rest = [{k: v for k, v in pair.items() if k != 'union'} for pair in pairs]
    collated: dict[str, Tensor] = default_collate(rest)
    collated['union'] = flat
    collated['union_shape'] = torch.tensor([union.shape for union in unions])
    return collated


def unpack_unions(union: Tensor, shape: Tensor) -> Tensor:
    """Unpack unions packed end to end into one batch, padded to the largest.

    Each union is padded at its bottom and right by repeating its last row and
    column: :func:`cut_views` samples at most half a pixel past a view's edge,
    where roi_align clamps to an unpadded union's edge pixels, so a padded union
    gives the same views as the unpadded one and the padding brings no value of
    its own into a view.

    Args:
        union: [N] the unions' values, each flattened in (C, H, W) order, end to
            end (:func:`collate_unions`), of any dtype.
        shape: int64 [B, 3] each union's (C, H, W); C is the same for all.

    Returns:
        [B, C, H, W] float32 unions, with H and W the largest, top-left aligned.
    """
    # Converted before unpacking, as roi_align needs: fewer values to convert
    # than the padded batch holds.
    values = union.float()
    # The shapes set the output's: read once (a sync on a device).
    shapes = shape.tolist()
    height = max(rows for _, rows, _ in shapes)
    width = max(cols for _, _, cols in shapes)
    batch = values.new_empty((len(shapes), shapes[0][0], height, width))
    # Three copies a union: one gather of all (its index as large as the batch,
    # in int64) costs ~10x more on a CPU, and more memory on a device.
    start = 0
    for padded, (bands, rows, cols) in zip(batch, shapes, strict=True):
        end = start + bands * rows * cols
        padded[:, :rows, :cols] = values[start:end].view(bands, rows, cols)
        padded[:, rows:, :cols] = padded[:, rows - 1 : rows, :cols]
        padded[:, :, cols:] = padded[:, :, cols - 1 : cols]
        start = end
    return batch


def cut_views(
    batch: dict[str, Tensor], size: int, nodata: float | None = None
) -> dict[str, Tensor]:
    """Cut both views of each pair from its union window and resize them.

    One :func:`torchvision.ops.roi_align` call over the batch (``aligned=True``:
    a window's edges are pixel edges). Each output pixel averages
    ``ceil(scale)`` x ``ceil(scale)`` bilinear samples spread over the
    ``scale``-pixel wide bin it covers (roi_align's adaptive sampling ratio),
    so a downscaled view is antialiased much as
    ``F.interpolate(..., antialias=True)`` would, and a view at scale 1 with
    whole-pixel offsets is an exact crop. Bilinear samples at a view's edge
    (scale not 1) take up to half a pixel of the union just outside it: the
    ground there, or, at the union's edge, its edge pixels (roi_align clamps, and
    :func:`unpack_unions` pads by replicating them). Nodata does not spread:
    pixels without data (:func:`~glcgeo.rasters.valid_pixels`: every band equal
    to *nodata*, or a band NaN) are set to NaN in every band, and each output
    pixel is the weighted mean of its valid samples only, NaN where it has none,
    so a view at scale 1 keeps exactly the source's nodata pixels, as NaN.

    Args:
        batch: the union form (:meth:`GeoTiffUnions.read_union`) collated:
            ``union`` [B, C, H, W] raw values of any dtype, or packed as
            :func:`collate_unions` ships them (``union`` [N] and ``union_shape``
            [B, 3]; see :func:`unpack_unions`), ``window1``, ``window2`` [B, 4]
            each view's window in union pixels (x1, y1, x2, y2; pixel-edge
            convention), and any other keys.
        size: width and height of each view, in pixels.
        nodata: the mosaic's nodata value (:attr:`GeoTiffMosaic.file_nodata`);
            NaN is nodata whatever it is.

    Returns:
        the other keys of *batch*, with ``image1`` and ``image2``
        [B, C, size, size] float32 raw values, NaN where there is no data.
    """
    if 'union_shape' in batch:
        union = unpack_unions(batch['union'], batch['union_shape'])
    else:
        union = batch['union'].float()
    index = torch.arange(len(union), device=union.device, dtype=union.dtype)[:, None]
    rois = torch.cat(
        [torch.cat([index, batch[f'window{k}'].to(union)], dim=1) for k in (1, 2)]
    )
    # An integer raster without a nodata value holds no nodata: skip the scan
    # of the batch (and its sync).
    missing = None
    if nodata is not None or batch['union'].is_floating_point():
        missing = ~valid_pixels(union, nodata)[:, None]
        if not missing.any():
            missing = None
    if missing is not None:
        # Bilinear weights of 0 still multiply a NaN or a fill value: resample
        # the valid values and their weights, and divide (a normalised
        # convolution).
        valid = (~missing).to(union)
        union = torch.cat([torch.where(missing, 0.0, union), valid], dim=1)
    images = roi_align(union, rois, output_size=size, sampling_ratio=0, aligned=True)
    if missing is not None:
        values, total = images.split([images.shape[1] - 1, 1], dim=1)
        images = torch.where(total > 1e-6, values / total, torch.nan)
    views = {key: value for key, value in batch.items() if key not in UNION_KEYS}
    views['image1'], views['image2'] = images.split(len(union))
    return views
