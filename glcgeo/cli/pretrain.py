"""``glcgeo pretrain``: GLCNet pretraining on an unlabeled mosaic."""

import argparse
from collections.abc import Sequence
from typing import Any

from ..models import ABLATIONS
from .flags import SOURCES, OrderedPair, add, at_least, fraction, positive
from .training import (
    OUT,
    TRAINER_ALIASES,
    Training,
    add_arguments,
    alias,
    parse_settings,
)

# fmt: off
#: The short flags of pretraining settings.
ALIASES = (
    alias('--data', 'data.paths', SOURCES, nargs='+', metavar='SOURCE'),
    OUT,
    *(alias(flag, f'data.{flag[2:]}') for flag in ('--bands', '--crs', '--res',
                                                   '--nodata', '--stats')),
    alias('--patch-size', 'data.patch_size', 'view size in pixels [224]',
          type=positive(int)),
    alias('--batch-size', 'data.batch_size', 'pairs per batch per process [32]'),
    alias('--length', 'data.length', 'pairs per epoch [1000]', type=positive(int)),
    alias('--overlap', 'data.overlap', 'fraction of each view covered by the other '
          '[0.3 1.0]', type=fraction(low_open=True, high_open=False), nargs=2,
          action=OrderedPair, metavar=('MIN', 'MAX')),
    alias('--scale', 'data.scale', 'scale of each view relative to the mosaic '
          'pixels [0.7 1.15]', type=positive(), nargs=2, action=OrderedPair,
          metavar=('MIN', 'MAX')),
    alias('--regions', 'data.regions', 'matched regions per pair [4]',
          type=at_least(0)),
    alias('--max-nodata', 'data.max_nodata', 'largest nodata fraction of a view '
          '[0.1]', type=fraction(low_open=False, high_open=True)),
    alias('--no-spectral-augmentation', 'data.spectral_augmentation', "leave out "
          "GLCNet's per-band jitter and band-to-all view (keeps flips, rotations, "
          'blur, salt): better features on multispectral land cover in our '
          'experiments', action='store_false'),
    alias('--num-workers', 'data.num_workers', 'data loader workers [2]'),
    alias('--backbone', 'model.backbone', 'smp encoder [resnet50]'),
    alias('--ablation', 'model.ablation', 'GLCNet variant [full]', choices=ABLATIONS),
    alias('--matching', 'model.matching', 'local matching [ground]',
          choices=('ground', 'centre')),
    alias('--decoupled', 'model.decoupled', 'decoupled NT-Xent (positive out of the '
          'denominator)', action='store_true'),
    alias('--lam', 'model.lam', 'weight of the global loss [0.5]',
          type=fraction(low_open=False, high_open=False)),
    alias('--temperature', 'model.temperature', 'NT-Xent temperature [0.5]',
          type=positive()),
    alias('--lr', 'model.lr', 'Adam learning rate per process [1e-3]',
          type=positive()),
    alias('--epochs', 'trainer.max_epochs', 'epochs [1, or as many as --max-steps '
          'takes]', type=positive(int)),
    *TRAINER_ALIASES,
    alias('--seed', 'seed_everything'),
)
# fmt: on

#: GLCNet pretraining: what it trains, its short flags, what it needs.
PRETRAIN = Training(
    name='pretrain',
    api='glcgeo.pretrain',
    model='glcgeo.tasks.GLCNetTask',
    data='glcgeo.datamodules.GLCNetDataModule',
    aliases=ALIASES,
    required={'data.paths': 'no input: give --data FILES or a config with data.paths'},
    derived=('model.in_channels', 'model.region_size'),
)


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
            'config.yaml under --out. Flags override --config.'
        ),
    )
    parser.add_argument(
        '--resume',
        action='store_true',
        help='continue from OUT/checkpoints/last.ckpt with the settings of '
        'OUT/config.yaml (flags override them)',
    )
    add_arguments(parser, PRETRAIN)
    add(parser, '--quiet')
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, extras: Sequence[str]) -> None:
    """Run ``glcgeo pretrain``.

    Args:
        args: the parsed command line.
        extras: config keys given as flags.
    """
    settings = parse_settings(args, extras)
    if settings is None:
        return
    from ..pretrain import pretrain

    out = settings.trainer.pop('default_root_dir')
    last = pretrain(
        settings.data,
        settings.model,
        settings.trainer,
        out,
        resume=args.resume,
        seed=settings.seed_everything or 0,
        quiet=args.quiet,
    )
    if not args.quiet:
        print(f'glcgeo: pretraining checkpoint written to {last}')
