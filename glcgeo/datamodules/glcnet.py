"""GLCNet pretraining data: pairs of overlapping views from an unlabeled mosaic."""

import dataclasses
from typing import Annotated, Any

import torch
from torch import Tensor
from torchgeo.datamodules import GeoDataModule

from ..arguments import (
    CRSName,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Range,
    check_arguments,
)
from ..checkpoints import BandMetadata
from ..collection import GeoTiffCollection, open_mosaic, pair_sampler
from ..datasets import GeoTiffMosaic
from ..pairs import GeoTiffUnions, collate_unions, cut_views
from ..samplers import PairStream
from ..stats import BandStats, resolve_band_stats
from ..transforms import TwoViewAugmentation

__all__ = ['GLCNetDataModule']


class GLCNetDataModule(GeoDataModule):
    """Pairs of overlapping views from an unlabeled mosaic, for GLCNet pretraining.

    Reads pairs with :class:`~glcgeo.samplers.PairedWindowSampler` from a
    :class:`~glcgeo.pairs.GeoTiffUnions` (workers only read each pair's union
    window, in the files' dtype; :func:`~glcgeo.pairs.collate_unions`), then,
    after transfer, cuts both views on the device (:func:`~glcgeo.pairs.cut_views`)
    and augments them there with :class:`~glcgeo.transforms.TwoViewAugmentation`.
    Normalisation statistics are read from *stats* or computed from the mosaic by
    sampling. Files in several CRSs, with no *crs* or *res* given, are read each
    in its own CRS (:func:`~glcgeo.collection.open_mosaic`): every pair comes
    from one CRS group, the groups drawn in proportion to their valid area.

    Under DDP, each rank draws its own share of pairs (the sampler is rank-aware),
    so Lightning must not wrap it: train with ``use_distributed_sampler=False``.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        paths: str | list[str],
        bands: list[int | str] | None = None,
        crs: CRSName | None = None,
        res: PositiveFloat | None = None,
        nodata: float | None = None,
        batch_size: PositiveInt = 32,
        patch_size: PositiveInt = 224,
        length: PositiveInt = 1000,
        overlap: Annotated[
            tuple[float, float], Range(0, 1, low_open=True, ordered=True)
        ] = (0.3, 1.0),
        scale: Annotated[tuple[float, float], Range(0, low_open=True, ordered=True)] = (
            0.7,
            1.15,
        ),
        regions: PositiveInt = 4,
        region_size: PositiveFloat = 48.0,
        max_nodata: Annotated[float, Range(0, 1, high_open=True)] = 0.1,
        spectral_augmentation: bool = True,
        stats: str | None = None,
        seed: NonNegativeInt = 0,
        num_workers: NonNegativeInt = 2,
        index_cache: str | None = None,
    ) -> None:
        """Initialize a new GLCNetDataModule.

        Args:
            paths: GeoTIFF files, folders or glob patterns of the mosaic.
            bands: 1-based band indexes or band names (defaults to all).
            crs: CRS to reproject every file to (defaults to none: each file is
                read in its own CRS, one group per CRS).
            res: pixel size in CRS units, on one grid (defaults to each file's
                own).
            nodata: nodata value overriding the files' own.
            batch_size: pairs per batch, per process.
            patch_size: side of each view, in pixels.
            length: pairs per epoch, over all processes.
            overlap: (min, max) fraction of each view covered by the other.
            scale: (min, max) scale of each view relative to the mosaic pixels.
            regions: matched regions per pair (GLCNet's local matching needs
                at least one).
            region_size: side of a region in pixels of a view at scale 1.
            max_nodata: largest nodata fraction accepted in a view.
            spectral_augmentation: the authors' per-band brightness/contrast
                jitter and copy of one band to all in the second view (GLCNet's
                colour jitter and grey view). False keeps flips, rotations, blur
                and salt noise only: on multispectral land cover the spectral ops
                teach invariance to what separates the classes
                (``experiments/results/findings.md``).
            stats: JSON of band statistics (:class:`~glcgeo.stats.BandStats`);
                computed from the mosaic when None.
            seed: seed of the pair sampler (the same on every rank).
            num_workers: data loader worker processes.
            index_cache: a folder where the mosaic's index and coverage are kept
                for the run's other processes (DDP ranks, resuming); see
                :mod:`glcgeo.index_cache` (defaults to none).

        Raises:
            SettingError: naming an argument out of range (see the annotations).
        """
        check_arguments(GLCNetDataModule.__init__, locals())
        super().__init__(
            GeoTiffUnions,
            batch_size=batch_size,
            patch_size=patch_size,
            length=length,
            num_workers=num_workers,
            paths=paths,
            bands=bands,
            crs=crs,
            res=res,
            nodata=nodata,
            index_cache=index_cache,
        )
        # The task records the bands resolved (indexes of the files); Lightning
        # refuses to log a data module and a task whose hyperparameters differ.
        self.save_hyperparameters(ignore=['bands'])
        self.band_stats: BandStats | None = None
        self.collate_fn = collate_unions

    def setup(self, stage: str) -> None:
        """Build the mosaic, its statistics, the pair sampler and the augmentation.

        Args:
            stage: Lightning stage; only 'fit' is supported (pretraining has no
                labels to validate or test on).
        """
        if stage != 'fit' or self.train_sampler is not None:
            return
        hp = self.hparams
        # Built once, here, before the workers start: they receive the index
        # with the dataset, and only read. Other ranks find it in index_cache.
        # Workers only read: the views are cut on the device, after transfer.
        dataset = open_mosaic(GeoTiffUnions, **self.kwargs)
        self.band_stats = resolve_band_stats(hp['stats'], dataset)
        self.train_dataset = dataset
        # A collection's sampler is no GeoSampler (no one CRS); the loader only
        # iterates it.
        self.train_sampler = pair_sampler(  # type: ignore[assignment]
            dataset,
            size=hp['patch_size'],
            length=hp['length'],
            overlap=tuple(hp['overlap']),
            scale=tuple(hp['scale']),
            regions=hp['regions'],
            region_size=hp['region_size'],
            max_nodata=hp['max_nodata'],
            generator=torch.Generator().manual_seed(hp['seed']),
        )
        spectral_off = {'jitter_p': 0.0, 'band_to_all_p': 0.0}
        self.train_aug = TwoViewAugmentation(
            self.band_stats.mean,
            self.band_stats.std,
            **({} if hp['spectral_augmentation'] else spectral_off),
        )

    @property
    def num_bands(self) -> int:
        """Number of bands of each view (after :meth:`setup`)."""
        assert isinstance(self.train_dataset, GeoTiffMosaic | GeoTiffCollection)
        return self.train_dataset.num_bands

    @property
    def band_metadata(self) -> BandMetadata:
        """The bands and statistics of the views, as checkpoints keep them.

        Without ``bands`` every band is read, and the checkpoint says so (None):
        a scene is then read whole and must have as many bands.
        """
        assert self.band_stats is not None
        assert isinstance(self.train_dataset, GeoTiffMosaic | GeoTiffCollection)
        metadata = self.band_stats.metadata()
        return dataclasses.replace(
            metadata,
            bands=None if self.kwargs.get('bands') is None else metadata.bands,
            band_dtype=self.train_dataset.source_dtype,
        )

    def on_after_batch_transfer(
        self, batch: dict[str, Tensor], dataloader_idx: int
    ) -> dict[str, Tensor]:
        """Cut both views on the device the batch was moved to, then augment them.

        Args:
            batch: a batch of pairs in the union form
                (:func:`~glcgeo.pairs.collate_unions`).
            dataloader_idx: index of the data loader.

        Returns:
            the batch with views ``image1``, ``image2`` [B, C, patch_size,
            patch_size] (see :func:`~glcgeo.pairs.cut_views`), augmented when
            training.
        """
        assert isinstance(self.train_dataset, GeoTiffMosaic | GeoTiffCollection)
        batch = cut_views(
            batch, self.hparams['patch_size'], self.train_dataset.file_nodata
        )
        if self.trainer is not None and self.trainer.training:
            assert self.train_aug is not None
            return self.train_aug(batch)  # type: ignore[operator]
        return batch

    def state_dict(self) -> dict[str, Any]:
        """Keep the sampler's random state in checkpoints, so resuming continues it.

        Returns:
            the generator state and statistics.
        """
        if self.train_sampler is None or self.band_stats is None:
            return {}
        assert isinstance(self.train_sampler, PairStream)
        return {
            'generator': self.train_sampler.generator.get_state(),
            'band_stats': self.band_stats.__dict__,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved.

        Args:
            state_dict: the saved state.
        """
        if not state_dict:
            return
        self.setup('fit')
        assert isinstance(self.train_sampler, PairStream)
        self.train_sampler.generator.set_state(state_dict['generator'])
        self.band_stats = BandStats(**state_dict['band_stats'])
