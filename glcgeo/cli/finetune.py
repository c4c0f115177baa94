"""``glcgeo finetune``: segmentation with few labels, from pretrained weights."""

import argparse
from typing import Any

from .training import add_arguments, alias, parse_settings
from .types import at_least, band, colour, crs, fraction, positive

#: Budgets of labelled tiles: one kind replaces the other.
BUDGETS = ('data.label_fraction', 'data.num_label_patches')


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
            'checkpoints/ and logs/. Flags beat --config.'
        ),
    )
    parser.add_argument(
        '--overwrite', action='store_true', help='replace an earlier run in OUT'
    )
    add_arguments(parser, epochs=150)
    budget = parser.add_mutually_exclusive_group()
    # fmt: off
    alias(parser, '--images', 'data.images', "image GeoTIFF files, folders or globs; "
          "a file per band ('S2/*_{band}.tif' with --bands B02 B03 ...), STAC items "
          '(.json)', nargs='+', metavar='SOURCE')
    alias(parser, '--masks', 'data.masks', 'class mask GeoTIFF files, folders or '
          'globs', nargs='+', metavar='SOURCE')
    alias(parser, '--weights', 'model.weights', 'start checkpoint: glcgeo export, '
          'GLCNet pretraining (RUN/checkpoints/last.ckpt), fine-tuned model.ckpt, '
          'SimCLR or MoCo [random]', metavar='CKPT')
    alias(parser, '--transfer', 'model.transfer', 'pretrained parts to load '
          '[encoder]', choices=('encoder', 'encoder+decoder'))
    alias(parser, '--model', 'model.model', 'smp architecture [deeplabv3+]')
    alias(parser, '--backbone', 'model.backbone', 'smp encoder [resnet50]')
    alias(parser, '--bands', 'data.bands', 'image bands: 1-based indexes or names '
          '[all]', type=band, nargs='+', metavar='BAND')
    alias(parser, '--crs', 'data.crs', "CRS to work in [the images' own; images in "
          'several CRSs need one]', type=crs)
    alias(parser, '--res', 'data.res', "pixel size in CRS units [the first image's]",
          type=positive())
    alias(parser, '--nodata', 'data.nodata', "image nodata overriding the files' own",
          type=float)
    alias(parser, '--mask-nodata', 'data.mask_nodata', "mask nodata overriding the "
          "files' own", type=float)
    alias(parser, '--class-values', 'data.class_values', 'raw mask value of each '
          'class, in class order [all values found]', type=int, nargs='+')
    alias(parser, '--class-names', 'data.class_names', 'one name per class [the raw '
          'values]', nargs='+')
    alias(parser, '--class-colors', 'model.class_colors', 'one colour per class, for '
          'maps [a palette]', type=colour, nargs='+', metavar='R,G,B')
    alias(parser, '--ignore-index', 'data.ignore_index', 'class id of ignored pixels '
          '[255]', type=at_least(0))
    alias(parser, '--patch-size', 'data.patch_size', 'tile side in pixels [256]',
          type=positive(int))
    alias(parser, '--block-size', 'data.block_size', 'side of a split block, in '
          'tiles [4]', type=positive(int))
    alias(parser, '--split', 'data.split', 'shares of blocks per split [0.6 0.2 0.2]',
          type=fraction(low_open=True, high_open=True), nargs=3,
          metavar=('TRAIN', 'VAL', 'TEST'))
    alias(parser, '--split-seed', 'data.split_seed', 'seed of the block deal [0]',
          type=at_least(0))
    alias(parser, '--min-labelled', 'data.min_labelled', 'least labelled share of a '
          'tile [0.5]', type=fraction(low_open=False, high_open=False))
    alias(budget, '--label-fraction', BUDGETS[0], 'share of training tiles labelled '
          '[1.0]', type=fraction(low_open=True, high_open=False))
    alias(budget, '--num-label-patches', BUDGETS[1], 'number of labelled training '
          'tiles', type=positive(int))
    alias(parser, '--seed', 'seed_everything', 'seed of the label draw (data.seed) '
          'and of training [0]', type=at_least(0))
    alias(parser, '--batch-size', 'data.batch_size', 'training tiles per batch [16]',
          type=positive(int))
    alias(parser, '--eval-batch-size', 'data.eval_batch_size', 'validation/test '
          'tiles per batch [64]', type=positive(int))
    alias(parser, '--length', 'data.length', 'training tiles per epoch [labelled '
          'tiles]', type=positive(int))
    alias(parser, '--stats', 'data.stats', "band statistics JSON [the start "
          "weights', or computed]", metavar='JSON')
    alias(parser, '--no-augment', 'data.augment', 'no random flips and rotations',
          action='store_false')
    alias(parser, '--num-workers', 'data.num_workers', 'data loader workers [0]',
          type=at_least(0))
    alias(parser, '--loss', 'model.loss', 'loss [ce]',
          choices=('ce', 'jaccard', 'focal', 'dice'))
    alias(parser, '--lr', 'model.lr', 'Adam learning rate [1e-4]', type=positive())
    alias(parser, '--lr-decay', 'model.lr_decay', 'learning rate factor per epoch '
          '[0.98]', type=fraction(low_open=True, high_open=False))
    alias(parser, '--freeze-backbone', 'model.freeze_backbone', 'train decoder and '
          'head', action='store_true')
    alias(parser, '--freeze-decoder', 'model.freeze_decoder', 'train head',
          action='store_true')
    # fmt: on
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    """Run ``glcgeo finetune``.

    Args:
        args: the parsed command line.
    """
    from ..datamodules import SegmentationDataModule
    from ..finetune import PATHS, finetune
    from ..outputs import joins_a_run
    from ..tasks import FinetuneTask

    if hasattr(args, 'seed_everything'):  # --seed draws the labels too
        setattr(args, 'data.seed', args.seed_everything)
    for given, other in (BUDGETS, BUDGETS[::-1]):
        if hasattr(args, given):  # a budget flag replaces the config's
            setattr(args, other, None)
    settings = parse_settings(
        args,
        {'model': FinetuneTask, 'data': SegmentationDataModule},
        PATHS,
        {
            'data.images': 'no images: give --images FILES or a config with '
            'data.images',
            'data.masks': 'no masks: give --masks FILES or a config with data.masks',
        },
        derived=(
            'model.in_channels',
            'model.num_classes',
            'model.class_names',
            'model.ignore_index',
        ),
    )
    if settings is None:
        return
    out, seed = settings['trainer'].pop('default_root_dir'), settings['seed_everything']
    result = finetune(
        settings['data'],
        settings['model'],
        settings['trainer'],
        out,
        # The label draw's seed seeds training too, unless a seed is given.
        seed=settings['data'].get('seed') or 0 if seed is None else seed,
        quiet=args.quiet,
        overwrite=args.overwrite,
    )
    if args.quiet or joins_a_run():  # the first process speaks for the run
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
