"""``glcgeo export``: pretrained GLCNet weights for TorchGeo fine-tuning."""

import argparse
from typing import Any


def add_parser(subparsers: Any) -> None:
    """Register ``glcgeo export``.

    Args:
        subparsers: the sub-command group of the ``glcgeo`` parser.
    """
    parser = subparsers.add_parser(
        'export',
        help='export pretrained weights for TorchGeo fine-tuning',
        description=(
            'Write the pretrained encoder and decoder of a glcgeo pretrain checkpoint '
            'to a file that TorchGeo loads as SemanticSegmentation(model="deeplabv3+", '
            'weights=FILE) (encoder) and glcgeo.checkpoints.load_pretrained loads '
            '(encoder and decoder). The band statistics travel with the weights.'
        ),
    )
    parser.add_argument(
        '--checkpoint',
        required=True,
        help='pretraining checkpoint, e.g. RUN/checkpoints/last.ckpt',
    )
    parser.add_argument('--out', required=True, help='weights file to write (.ckpt)')
    parser.add_argument(
        '--overwrite', action='store_true', help='replace --out if it exists'
    )
    parser.add_argument('--quiet', action='store_true', help='no summary')
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    """Export the weights and say what was written.

    Args:
        args: parsed ``checkpoint``, ``out``, ``overwrite`` and ``quiet``.
    """
    from ..export import export_weights

    weights = export_weights(args.checkpoint, args.out, overwrite=args.overwrite)
    if args.quiet:
        return
    decoder = (
        'ASPP' if all(k.startswith('aspp.') for k in weights.decoder) else 'decoder'
    )
    print(
        f'wrote {args.out}: {weights.backbone} encoder '
        f'({len(weights.encoder)} tensors) and {decoder} '
        f'({len(weights.decoder)} tensors), {weights.in_channels} bands'
    )
