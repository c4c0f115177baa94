"""``glcgeo finetune``: segmentation with few labels, from pretrained weights."""

import argparse
from typing import Any

from ..errors import GlcgeoError
from . import HelpFormatter, add_trainer_options, config_sections
from .types import at_least, crs, fraction, positive

#: Flags that set SegmentationDataModule arguments, as (flag destination, argument).
DATA_FLAGS = {
    'images': 'images',
    'masks': 'masks',
    'bands': 'bands',
    'crs': 'crs',
    'res': 'res',
    'nodata': 'nodata',
    'mask_nodata': 'mask_nodata',
    'class_values': 'class_values',
    'class_names': 'class_names',
    'ignore_index': 'ignore_index',
    'patch_size': 'patch_size',
    'block_size': 'block_size',
    'split': 'split',
    'split_seed': 'split_seed',
    'min_labelled': 'min_labelled',
    'label_fraction': 'label_fraction',
    'num_label_patches': 'num_label_patches',
    'seed': 'seed',
    'batch_size': 'batch_size',
    'eval_batch_size': 'eval_batch_size',
    'length': 'length',
    'stats': 'stats',
    'augment': 'augment',
    'num_workers': 'num_workers',
}
#: Flags that set FinetuneTask arguments.
MODEL_FLAGS = {
    'weights': 'weights',
    'transfer': 'transfer',
    'model': 'model',
    'backbone': 'backbone',
    'class_colors': 'class_colors',
    'loss': 'loss',
    'lr': 'lr',
    'lr_decay': 'lr_decay',
    'freeze_backbone': 'freeze_backbone',
    'freeze_decoder': 'freeze_decoder',
}
#: Flags that set Lightning Trainer arguments.


def _colour(text: str) -> list[int]:
    """Parse an ``r,g,b`` colour (0-255 each)."""
    try:
        colour = [int(part) for part in text.split(',')]
    except ValueError:
        colour = []
    if len(colour) != 3 or not all(0 <= c <= 255 for c in colour):
        raise argparse.ArgumentTypeError(f'not an r,g,b colour (0-255): {text!r}')
    return colour


def add_parser(subparsers: Any) -> None:
    """Register ``glcgeo finetune``.

    Args:
        subparsers: the sub-command group of the ``glcgeo`` parser.
    """
    parser = subparsers.add_parser(
        'finetune',
        help='fine-tune a segmentation model on labelled GeoTIFFs (few labels)',
        description=(
            "Fine-tune TorchGeo's SemanticSegmentation (DeepLabV3+) from glcgeo, "
            'SimCLR, MoCo or random weights on images and class masks (masks may '
            "be in another CRS: they are warped onto the images' grid). The area "
            'is cut into tiles dealt block-wise to train/val/test, so labelled '
            'tiles never touch the evaluation area; the label budget is drawn from '
            'the training tiles with --seed. The model with the best validation '
            'Kappa is scored on the test area and written to OUT/model.ckpt (for '
            'glcgeo predict), with metrics.json, split.geojson, config.yaml, '
            'checkpoints/ and logs/. Flags override --config.'
        ),
        formatter_class=HelpFormatter,
    )
    # Defaults of None mean "not given": the config file or the API default holds.
    add = parser.add_argument
    add(
        '--images',
        nargs='+',
        help='image GeoTIFF files, folders or glob patterns; a file per band '
        "('S2/*_{band}.tif' with --bands B02 B03 ...), STAC items (.json)",
    )
    add('--masks', nargs='+', help='class mask GeoTIFF files, folders or globs')
    add('--out', required=True, help='output folder')
    add('--config', help='LightningCLI YAML (trainer/model/data sections)')
    add('--overwrite', action='store_true', help='replace an earlier run in OUT')
    add(
        '--weights',
        help='start checkpoint: glcgeo export, GLCNet pretraining (RUN/checkpoints/'
        'last.ckpt), fine-tuned model.ckpt, SimCLR or MoCo [random]',
    )
    add(
        '--transfer',
        choices=('encoder', 'encoder+decoder'),
        help='pretrained parts to load [encoder]',
    )
    add('--model', help='smp architecture [deeplabv3+]')
    add('--backbone', help='smp encoder [resnet50]')
    add('--bands', nargs='+', help='1-based image bands or names [all]')
    add(
        '--crs',
        type=crs,
        help="CRS to work in [the images' own; images in several CRSs need one]",
    )
    add('--res', type=positive(), help="pixel size in CRS units [the first image's]")
    add('--nodata', type=float, help="image nodata overriding the files' own")
    add('--mask-nodata', type=float, help="mask nodata overriding the files' own")
    add(
        '--class-values',
        type=int,
        nargs='+',
        help='raw mask value of each class, in class order [all values found]',
    )
    add('--class-names', nargs='+', help='one name per class [the raw values]')
    add(
        '--class-colors',
        type=_colour,
        nargs='+',
        metavar='R,G,B',
        help='one colour per class, for maps [a default palette]',
    )
    add('--ignore-index', type=at_least(0), help='class id of ignored pixels [255]')
    add('--patch-size', type=positive(int), help='tile side in pixels [256]')
    add('--block-size', type=positive(int), help='side of a split block, in tiles [4]')
    add(
        '--split',
        type=fraction(low_open=True, high_open=True),
        nargs=3,
        metavar=('TRAIN', 'VAL', 'TEST'),
        help='shares of blocks per split [0.6 0.2 0.2]',
    )
    add('--split-seed', type=at_least(0), help='seed of the block deal [0]')
    add(
        '--min-labelled',
        type=fraction(low_open=False, high_open=False),
        help='least labelled share of a tile [0.5]',
    )
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument(
        '--label-fraction',
        type=fraction(low_open=True, high_open=False),
        help='share of training tiles labelled [1.0]',
    )
    budget.add_argument(
        '--num-label-patches',
        type=positive(int),
        help='number of labelled training tiles',
    )
    add('--seed', type=at_least(0), help='seed of the label draw and of training [0]')
    add('--batch-size', type=positive(int), help='training tiles per batch [16]')
    add(
        '--eval-batch-size',
        type=positive(int),
        help='validation/test tiles per batch [64]',
    )
    add(
        '--length', type=positive(int), help='training tiles per epoch [labelled tiles]'
    )
    add('--stats', help="band statistics JSON [the start weights', or computed]")
    add(
        '--no-augment',
        dest='augment',
        action='store_false',
        default=None,
        help='no random flips and rotations',
    )
    add('--num-workers', type=at_least(0), help='data loader workers [0]')
    add('--loss', choices=('ce', 'jaccard', 'focal', 'dice'), help='loss [ce]')
    add('--lr', type=positive(), help='Adam learning rate [1e-4]')
    add(
        '--lr-decay',
        type=fraction(low_open=True, high_open=False),
        help='learning rate factor per epoch [0.98]',
    )
    add('--freeze-backbone', action='store_true', default=None, help='train decoder')
    add('--freeze-decoder', action='store_true', default=None, help='train head')
    add_trainer_options(parser, epochs=150)
    add('--quiet', action='store_true', help='no progress bar nor summary')
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    """Run ``glcgeo finetune``.

    Args:
        args: the parsed command line.

    Raises:
        GlcgeoError: when images or masks are missing.
    """
    from ..datamodules import SegmentationDataModule
    from ..finetune import finetune
    from ..runs import load_config
    from ..tasks import FinetuneTask

    config = (
        load_config(args.config, SegmentationDataModule, FinetuneTask)
        if args.config
        else {}
    )
    data, model, trainer = config_sections(config, args, DATA_FLAGS, MODEL_FLAGS)
    # A budget on the command line replaces the config's, whichever kind it is.
    for given, other in (
        ('label_fraction', 'num_label_patches'),
        ('num_label_patches', 'label_fraction'),
    ):
        if getattr(args, given) is not None:
            data.pop(other, None)
    for key in ('images', 'masks'):
        if key not in data:
            raise GlcgeoError(
                f'no {key}: give --{key} FILES or a config with data.{key}'
            )
    seed = int(config.get('seed_everything') or data.get('seed') or 0)
    result = finetune(
        data,
        model,
        trainer,
        args.out,
        seed=seed,
        quiet=args.quiet,
        overwrite=args.overwrite,
    )
    if args.quiet:
        return
    test = ', '.join(
        f'{key.removeprefix("test_")} {value:.3f}'
        for key, value in result.test.items()
        if key in ('test_OA', 'test_Kappa', 'test_mIoU', 'test_mF1')
    )
    print(
        f'glcgeo: {result.label_tiles} labelled tiles; test {test}; model written '
        f'to {result.checkpoint}'
    )
