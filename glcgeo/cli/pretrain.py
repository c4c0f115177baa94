"""``glcgeo pretrain``: GLCNet pretraining on an unlabeled mosaic."""

import argparse
import os
from typing import Any

from ..errors import GlcgeoError
from ..models import ABLATIONS
from . import HelpFormatter, add_trainer_options, config_sections
from .types import OrderedPair, at_least, crs, fraction, positive

#: Flags that set GLCNetDataModule arguments, as (flag destination, argument).
DATA_FLAGS = {
    'data': 'paths',
    'bands': 'bands',
    'crs': 'crs',
    'res': 'res',
    'nodata': 'nodata',
    'batch_size': 'batch_size',
    'patch_size': 'patch_size',
    'length': 'length',
    'overlap': 'overlap',
    'scale': 'scale',
    'regions': 'regions',
    'max_nodata': 'max_nodata',
    'spectral_augmentation': 'spectral_augmentation',
    'stats': 'stats',
    'num_workers': 'num_workers',
}
#: Flags that set GLCNetTask arguments.
MODEL_FLAGS = {
    'backbone': 'backbone',
    'ablation': 'ablation',
    'matching': 'matching',
    'decoupled': 'decoupled',
    'lam': 'lam',
    'temperature': 'temperature',
    'lr': 'lr',
}
#: Flags that set Lightning Trainer arguments.


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
        formatter_class=HelpFormatter,
    )
    # Defaults of None mean "not given": the config file or the API default holds.
    add = parser.add_argument
    add(
        '--data',
        nargs='+',
        help='GeoTIFF files, folders or globs; URLs (http(s)://, s3://, gs://, '
        '/vsi...), folder URLs ending in /, or @list.txt of them; a file per band '
        "('S2/*_{band}.tif' with --bands B02 B03 ...), STAC items (.json)",
    )
    add('--out', required=True, help='output folder')
    add('--config', help='LightningCLI YAML (trainer/model/data sections)')
    add(
        '--resume',
        action='store_true',
        help='continue from OUT/checkpoints/last.ckpt with the settings of '
        'OUT/config.yaml (flags override them)',
    )
    add('--bands', nargs='+', help='1-based band indexes or names (default: all)')
    add(
        '--crs',
        type=crs,
        help='CRS to reproject every file to (default: each file read in its own)',
    )
    add(
        '--res',
        type=positive(),
        help="pixel size in CRS units, on one grid (default: each file's own)",
    )
    add('--nodata', type=float, help="nodata value overriding the files' own")
    add('--patch-size', type=positive(int), help='view size in pixels [224]')
    add('--batch-size', type=positive(int), help='pairs per batch per process [32]')
    add('--length', type=positive(int), help='pairs per epoch [1000]')
    add(
        '--overlap',
        type=fraction(low_open=True, high_open=False),
        nargs=2,
        action=OrderedPair,
        metavar=('MIN', 'MAX'),
        help='fraction of each view covered by the other [0.3 1.0]',
    )
    add(
        '--scale',
        type=positive(),
        nargs=2,
        action=OrderedPair,
        metavar=('MIN', 'MAX'),
        help='scale of each view relative to the mosaic pixels [0.7 1.15]',
    )
    add('--regions', type=at_least(0), help='matched regions per pair [4]')
    add(
        '--max-nodata',
        type=fraction(low_open=False, high_open=True),
        help='largest nodata fraction of a view [0.1]',
    )
    add(
        '--no-spectral-augmentation',
        dest='spectral_augmentation',
        action='store_false',
        default=None,
        help="leave out GLCNet's per-band jitter and band-to-all view (keeps "
        'flips, rotations, blur, salt): better features on multispectral land '
        'cover in our experiments',
    )
    add('--stats', help='band statistics JSON (default: computed from the mosaic)')
    add('--num-workers', type=at_least(0), help='data loader workers [2]')
    add('--backbone', help='smp encoder [resnet50]')
    add('--ablation', choices=ABLATIONS, help='GLCNet variant [full]')
    add('--matching', choices=('ground', 'centre'), help='local matching [ground]')
    add(
        '--decoupled',
        action='store_true',
        default=None,
        help='decoupled NT-Xent (positive out of the denominator)',
    )
    add(
        '--lam',
        type=fraction(low_open=False, high_open=False),
        help='weight of the global loss [0.5]',
    )
    add('--temperature', type=positive(), help='NT-Xent temperature [0.5]')
    add('--lr', type=positive(), help='Adam learning rate per process [1e-3]')
    add_trainer_options(parser, epochs=1)
    add('--seed', type=at_least(0), default=None, help='random seed [0]')
    add('--quiet', action='store_true', help='no progress bar')
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    """Run ``glcgeo pretrain``.

    Args:
        args: the parsed command line.

    Raises:
        GlcgeoError: when no data is given, or nothing is there to resume.
    """
    from ..datamodules import GLCNetDataModule
    from ..pretrain import pretrain
    from ..runs import load_config
    from ..tasks import GLCNetTask

    config_file = args.config
    if config_file is None and args.resume:
        # A resumed run keeps the settings it started with (flags still override).
        saved = os.path.join(args.out, 'config.yaml')
        config_file = saved if os.path.exists(saved) else None
    config = (
        load_config(config_file, GLCNetDataModule, GLCNetTask) if config_file else {}
    )
    data, model, trainer = config_sections(config, args, DATA_FLAGS, MODEL_FLAGS)
    if 'paths' not in data and args.resume:
        raise GlcgeoError('nothing to resume in this folder (no config.yaml)', args.out)
    if 'paths' not in data:
        raise GlcgeoError('no input: give --data FILES or a config with data.paths')
    seed = (
        args.seed if args.seed is not None else int(config.get('seed_everything') or 0)
    )
    last = pretrain(
        data, model, trainer, args.out, resume=args.resume, seed=seed, quiet=args.quiet
    )
    if not args.quiet:
        print(f'glcgeo: pretraining checkpoint written to {last}')
