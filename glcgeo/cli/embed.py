"""``glcgeo embed``: per-pixel embeddings of scenes from a pretrained network."""

import argparse
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, override

from ..errors import GlcgeoError
from .scenes import SceneCommand, add_scene_options
from .types import at_least, positive

if TYPE_CHECKING:
    from torch import nn

    from ..checkpoints import ModelMetadata
    from ..inference.predict import UnpublishedScene
    from ..inference.scenes import SceneJob


def add_parser(subparsers: Any) -> None:
    """Register ``glcgeo embed``.

    Args:
        subparsers: the sub-command group of the ``glcgeo`` parser.
    """
    parser = subparsers.add_parser(
        'embed',
        help='write per-pixel embeddings of scenes (Cloud Optimized GeoTIFFs)',
        description=(
            'Run a pretrained network (a GLCNet pretraining checkpoint, or its '
            'weights from glcgeo export) over rasters of any size, tile by tile as '
            'glcgeo predict does, and write its DeepLabV3+ decoder features (256 '
            'channels at stride 4, upsampled to pixels) as float16 Cloud Optimized '
            "GeoTIFFs with each input's size, CRS and transform, NaN where the "
            'input has no data, and provenance tags. --dims keeps the first '
            'principal components (the PCA is stored in the tag "pca"). With '
            'several scenes (or --out naming a folder), each is written to '
            'OUT/<input stem>.tif, scenes whose output exists are skipped, and '
            'OUT/footprints.gpkg indexes them.'
        ),
    )
    add_scene_options(parser, 'embeddings')
    add = parser.add_argument
    add(
        '--weights',
        metavar='CKPT',
        required=True,
        help='GLCNet pretraining checkpoint or exported weights',
    )
    add(
        '--dims',
        metavar='N',
        type=positive(int),
        help='write the first N principal components, fitted on a seeded sample '
        "of each scene's pixels (default: all 256 channels)",
    )
    add(
        '--seed',
        metavar='SEED',
        type=at_least(0),
        default=0,
        help='seed of the pixels the PCA is fitted on (default: %(default)s)',
    )
    add(
        '--preview',
        metavar='PNG',
        help='also write a PNG of the first three principal components, as '
        'colour (one scene)',
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    """Embed the scenes described by the parsed arguments (see :class:`Embed`).

    Args:
        args: the parsed ``glcgeo embed`` arguments.
    """
    Embed(args).run()


class Embed(SceneCommand['ModelMetadata']):
    """``glcgeo embed``: per-pixel embeddings of each scene, and a preview."""

    made = 'embeddings'

    def __init__(self, args: argparse.Namespace) -> None:
        """Check the command's own flags (see :class:`SceneCommand`)."""
        super().__init__(args, args.weights)
        if args.preview is not None and not args.preview.lower().endswith('.png'):
            raise GlcgeoError('--preview must name a .png file', args.preview)
        self.extras['--preview'] = args.preview

    @override
    def load_network(self) -> tuple['nn.Module', 'ModelMetadata']:
        from ..inference.embed import load_embedding_network

        return load_embedding_network(self.network)

    @override
    def options(self) -> dict[str, Any]:
        return {**super().options(), 'dims': self.args.dims, 'seed': self.args.seed}

    @override
    def jobs(self, sources: Sequence[str], folder: bool) -> list['SceneJob']:
        from ..inference.scenes import scene_jobs

        return scene_jobs(sources, self.args.out, folder=folder, class_map=False)

    @override
    def unpublished(
        self,
        model: 'nn.Module',
        metadata: 'ModelMetadata',
        job: 'SceneJob',
        **options: Any,
    ) -> 'UnpublishedScene':
        from ..inference.embed import embed_unpublished

        return embed_unpublished(
            model, metadata, job.source, job.destination, **options
        )

    @override
    def make_extras(self) -> None:
        from ..inference.pca import write_preview

        args = self.args
        if args.preview is not None:
            write_preview(args.out, args.preview, overwrite=args.overwrite)
            if not args.quiet:
                print(f'{args.preview}: preview')
