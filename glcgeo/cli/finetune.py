"""``glcgeo finetune``: segmentation with few labels, from pretrained weights."""

import argparse
from collections.abc import Sequence
from typing import Any

from .flags import add, at_least, colour, fraction, positive
from .training import (
    OUT,
    TRAINER_ALIASES,
    Training,
    add_arguments,
    alias,
    parse_settings,
)

#: Budgets of labelled tiles: one kind replaces the other.
BUDGETS = ('data.label_fraction', 'data.num_label_patches')

# fmt: off
#: The short flags of fine-tuning settings.
ALIASES = (
    alias('--images', 'data.images', "image GeoTIFF files, folders or globs; a file "
          "per band ('S2/*_{band}.tif' with --bands B02 B03 ...), STAC items "
          '(.json)', nargs='+', metavar='SOURCE'),
    alias('--masks', 'data.masks', 'class mask GeoTIFF files, folders or globs',
          nargs='+', metavar='SOURCE'),
    OUT,
    alias('--weights', 'model.weights', 'start checkpoint: glcgeo export, GLCNet '
          'pretraining (RUN/checkpoints/last.ckpt), fine-tuned model.ckpt, SimCLR '
          'or MoCo [random]', metavar='CKPT'),
    alias('--transfer', 'model.transfer', 'pretrained parts to load [encoder]',
          choices=('encoder', 'encoder+decoder')),
    alias('--model', 'model.model', 'smp architecture [deeplabv3+]'),
    alias('--backbone', 'model.backbone', 'smp encoder [resnet50]'),
    alias('--bands', 'data.bands'),
    alias('--crs', 'data.crs', "CRS to work in [the images' own; images in several "
          'CRSs need one]'),
    alias('--res', 'data.res', "pixel size in CRS units [the first image's]"),
    alias('--nodata', 'data.nodata', "image nodata overriding the files' own"),
    alias('--mask-nodata', 'data.mask_nodata', "mask nodata overriding the files' "
          'own', type=float),
    alias('--class-values', 'data.class_values', 'raw mask value of each class, in '
          'class order [all values found]', type=int, nargs='+'),
    alias('--class-names', 'data.class_names', 'one name per class [the raw values]',
          nargs='+'),
    alias('--class-colors', 'model.class_colors', 'one colour per class, for maps '
          '[a palette]', type=colour, nargs='+', metavar='R,G,B'),
    alias('--ignore-index', 'data.ignore_index', 'class id of ignored pixels [255]',
          type=at_least(0)),
    alias('--patch-size', 'data.patch_size', 'tile side in pixels [256]',
          type=positive(int)),
    alias('--block-size', 'data.block_size', 'side of a split block, in tiles [4]',
          type=positive(int)),
    alias('--split', 'data.split', 'shares of blocks per split [0.6 0.2 0.2]',
          type=fraction(low_open=True, high_open=True), nargs=3,
          metavar=('TRAIN', 'VAL', 'TEST')),
    alias('--split-seed', 'data.split_seed', 'seed of the block deal [0]',
          type=at_least(0)),
    alias('--min-labelled', 'data.min_labelled', 'least labelled share of a tile '
          '[0.5]', type=fraction(low_open=False, high_open=False)),
    alias('--label-fraction', BUDGETS[0], 'share of training tiles labelled [1.0]',
          BUDGETS[1:], type=fraction(low_open=True, high_open=False), group='budget'),
    alias('--num-label-patches', BUDGETS[1], 'number of labelled training tiles',
          BUDGETS[:1], type=positive(int), group='budget'),
    alias('--seed', ('seed_everything', 'data.seed'), 'seed of the label draw and '
          'of training [0]'),
    alias('--batch-size', 'data.batch_size', 'training tiles per batch [16]'),
    alias('--eval-batch-size', 'data.eval_batch_size', 'validation/test tiles per '
          'batch [64]', type=positive(int)),
    alias('--length', 'data.length', 'training tiles per epoch [labelled tiles]',
          type=positive(int)),
    alias('--stats', 'data.stats', "band statistics JSON [the start weights', or "
          'computed]'),
    alias('--no-augment', 'data.augment', 'no random flips and rotations',
          action='store_false'),
    alias('--num-workers', 'data.num_workers', 'data loader workers [0]'),
    alias('--loss', 'model.loss', 'loss [ce]', choices=('ce', 'jaccard', 'focal',
                                                        'dice')),
    alias('--lr', 'model.lr', 'Adam learning rate [1e-4]', type=positive()),
    alias('--lr-decay', 'model.lr_decay', 'learning rate factor per epoch [0.98]',
          type=fraction(low_open=True, high_open=False)),
    alias('--freeze-backbone', 'model.freeze_backbone', 'train decoder and head',
          action='store_true'),
    alias('--freeze-decoder', 'model.freeze_decoder', 'train head',
          action='store_true'),
    alias('--epochs', 'trainer.max_epochs', 'epochs [150]', type=positive(int)),
    *TRAINER_ALIASES,
)
# fmt: on

#: Fine-tuning: what it trains, its short flags, what it needs.
FINETUNE = Training(
    name='finetune',
    api='glcgeo.finetune',
    model='glcgeo.tasks.FinetuneTask',
    data='glcgeo.datamodules.SegmentationDataModule',
    aliases=ALIASES,
    required={
        'data.images': 'no images: give --images FILES or a config with data.images',
        'data.masks': 'no masks: give --masks FILES or a config with data.masks',
    },
    derived=(
        'model.in_channels',
        'model.num_classes',
        'model.class_names',
        'model.ignore_index',
    ),
)


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
    )
    add(parser, '--overwrite', help='replace an earlier run in OUT')
    add_arguments(parser, FINETUNE)
    add(parser, '--quiet')
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, extras: Sequence[str]) -> None:
    """Run ``glcgeo finetune``.

    Args:
        args: the parsed command line.
        extras: config keys given as flags.
    """
    settings = parse_settings(args, extras)
    if settings is None:
        return
    from ..finetune import finetune

    out, seed = settings.trainer.pop('default_root_dir'), settings.seed_everything
    result = finetune(
        settings.data,
        settings.model,
        settings.trainer,
        out,
        # The label draw's seed seeds training too, unless a seed is given.
        seed=settings.data.get('seed') or 0 if seed is None else seed,
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
