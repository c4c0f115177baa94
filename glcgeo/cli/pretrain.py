"""``glcgeo pretrain``: GLCNet pretraining on an unlabeled mosaic."""

import argparse
from typing import Any

from ..models import ABLATIONS
from .training import add_arguments, alias, parse_settings
from .types import SOURCES, OrderedPair, at_least, band, crs, fraction, positive


def add_parser(subparsers: Any) -> None:
    """Register ``glcgeo pretrain``.

    Args:
        subparsers: the sub-command group of the ``glcgeo`` parser.
    """
    parser = subparsers.add_parser(
        'pretrain',
        help='pretrain GLCNet on unlabeled GeoTIFF mosaics',
        description=(
            'Pretrain GLCNet (global style + local matching contrastive learning) '
            'on pairs of overlapping views drawn from georeferenced GeoTIFFs. '
            'Writes checkpoints/, logs/ (CSV and TensorBoard), stats.json and '
            'config.yaml under --out. Flags beat --config.'
        ),
    )
    parser.add_argument(
        '--resume',
        action='store_true',
        help='continue from OUT/checkpoints/last.ckpt with the settings of '
        'OUT/config.yaml (flags beat them)',
    )
    add_arguments(parser, epochs=1)
    # fmt: off
    alias(parser, '--data', 'data.paths', SOURCES, nargs='+', metavar='SOURCE')
    alias(parser, '--bands', 'data.bands', 'bands to read: 1-based indexes or names '
          '[all]', type=band, nargs='+', metavar='BAND')
    alias(parser, '--crs', 'data.crs', 'CRS to reproject every file to [each file '
          'read in its own]', type=crs)
    alias(parser, '--res', 'data.res', "pixel size in CRS units, on one grid [each "
          "file's own]", type=positive())
    alias(parser, '--nodata', 'data.nodata', "nodata value overriding the files' own",
          type=float)
    alias(parser, '--stats', 'data.stats', 'band statistics JSON, e.g. from glcgeo '
          'stats [computed]', metavar='JSON')
    alias(parser, '--patch-size', 'data.patch_size', 'view size in pixels [224]',
          type=positive(int))
    alias(parser, '--batch-size', 'data.batch_size', 'pairs per batch per process '
          '[32]', type=positive(int))
    alias(parser, '--length', 'data.length', 'pairs per epoch [1000]',
          type=positive(int))
    alias(parser, '--overlap', 'data.overlap', 'fraction of each view covered by the '
          'other [0.3 1.0]', type=fraction(low_open=True, high_open=False), nargs=2,
          action=OrderedPair, metavar=('MIN', 'MAX'))
    alias(parser, '--scale', 'data.scale', 'scale of each view relative to the mosaic '
          'pixels [0.7 1.15]', type=positive(), nargs=2, action=OrderedPair,
          metavar=('MIN', 'MAX'))
    alias(parser, '--regions', 'data.regions', 'matched regions per pair [4]',
          type=positive(int))
    alias(parser, '--max-nodata', 'data.max_nodata', 'largest nodata fraction of a '
          'view [0.1]', type=fraction(low_open=False, high_open=True))
    alias(parser, '--no-spectral-augmentation', 'data.spectral_augmentation',
          "leave out GLCNet's per-band jitter and band-to-all view (keeps flips, "
          'rotations, blur, salt): better features on multispectral land cover in '
          'our experiments', action='store_false')
    alias(parser, '--num-workers', 'data.num_workers', 'data loader workers [2]',
          type=at_least(0))
    alias(parser, '--backbone', 'model.backbone', 'smp encoder [resnet50]')
    alias(parser, '--ablation', 'model.ablation', 'GLCNet variant [full]',
          choices=ABLATIONS)
    alias(parser, '--matching', 'model.matching', 'local matching [ground]',
          choices=('ground', 'centre'))
    alias(parser, '--decoupled', 'model.decoupled', 'decoupled NT-Xent (positive out '
          'of the denominator)', action='store_true')
    alias(parser, '--lam', 'model.lam', 'weight of the global loss [0.5]',
          type=fraction(low_open=False, high_open=False))
    alias(parser, '--temperature', 'model.temperature', 'NT-Xent temperature [0.5]',
          type=positive())
    alias(parser, '--lr', 'model.lr', 'Adam learning rate per process [1e-3]',
          type=positive())
    alias(parser, '--seed', 'seed_everything', 'random seed [0]', type=at_least(0))
    # fmt: on
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    """Run ``glcgeo pretrain``.

    Args:
        args: the parsed command line.
    """
    from ..datamodules import GLCNetDataModule
    from ..pretrain import PATHS, pretrain
    from ..tasks import GLCNetTask

    settings = parse_settings(
        args,
        {'model': GLCNetTask, 'data': GLCNetDataModule},
        PATHS,
        {
            'data.paths': 'no input: give --data FILES or a config with data.paths',
        },
        derived=('model.in_channels', 'model.region_size'),
    )
    if settings is None:
        return
    out = settings['trainer'].pop('default_root_dir')
    last = pretrain(
        settings['data'],
        settings['model'],
        settings['trainer'],
        out,
        resume=args.resume,
        seed=settings['seed_everything'] or 0,
        quiet=args.quiet,
    )
    if not args.quiet:
        print(f'glcgeo: pretraining checkpoint written to {last}')
