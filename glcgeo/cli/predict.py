"""``glcgeo predict``: georeferenced land-cover maps of scenes from a checkpoint."""

import argparse
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, override

from ..errors import GlcgeoError
from .scenes import SceneCommand, add_scene_options
from .vectorize import add_polygon_options

if TYPE_CHECKING:
    from torch import nn

    from ..checkpoints import CheckpointMetadata
    from ..inference.predict import UnpublishedScene
    from ..inference.scenes import SceneJob


def add_parser(subparsers: Any) -> None:
    """Register ``glcgeo predict``.

    Args:
        subparsers: the sub-command group of the ``glcgeo`` parser.
    """
    parser = subparsers.add_parser(
        'predict',
        help='predict land-cover maps of scenes (Cloud Optimized GeoTIFFs)',
        description=(
            'Run a segmentation checkpoint (glcgeo fine-tuning or TorchGeo '
            'SemanticSegmentation) over rasters of any size, tile by tile, and '
            "write Cloud Optimized GeoTIFFs of class ids with each input's size, "
            'CRS and transform, a colour map, class names (for GDAL and QGIS, in '
            '<map>.tif.aux.xml and the QGIS style <map>.qml beside it) and '
            'provenance tags. Bands, normalisation '
            'and class names come from the checkpoint; flags override them. With '
            'several scenes (or --out naming a folder), each map is written to '
            'OUT/<input stem>.tif, scenes whose map exists are skipped (a killed '
            'run resumes), a failed scene does not stop the others, and '
            'OUT/footprints.gpkg indexes the maps.'
        ),
    )
    add_scene_options(parser, 'class map')
    add = parser.add_argument
    add('--model', metavar='CKPT', required=True, help='Lightning checkpoint')
    add(
        '--probabilities',
        metavar='PATH',
        help='also write per-class percent here (a folder when --out is one)',
    )
    add(
        '--confidence',
        action='store_true',
        help='add a last band to --probabilities: the percent probability of the '
        'class mapped',
    )
    add(
        '--polygons',
        metavar='GPKG',
        help='also write the class polygons here (one scene; see glcgeo vectorize)',
    )
    add_polygon_options(parser)
    add(
        '--class-names',
        metavar='NAME',
        nargs='+',
        help="one name per class (default: the checkpoint's, or class_<i>)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    """Predict the maps described by the parsed arguments (see :class:`Predict`).

    Args:
        args: the parsed ``glcgeo predict`` arguments.
    """
    Predict(args).run()


class Predict(SceneCommand['CheckpointMetadata']):
    """``glcgeo predict``: a class map of each scene, and its polygons."""

    made = 'maps'
    instead = {'--polygons': 'run glcgeo vectorize on each map of several'}

    def __init__(self, args: argparse.Namespace) -> None:
        """Check the command's own flags (see :class:`SceneCommand`)."""
        from ..inference.polygons import check_geopackage_name
        from ..inference.writer import sidecar_paths

        super().__init__(args, args.model)
        if args.confidence and args.probabilities is None:
            raise GlcgeoError('--confidence is a band of --probabilities: give both')
        self.outputs['--probabilities'] = args.probabilities
        if args.polygons is not None:
            check_geopackage_name(args.polygons)
        self.extras['--polygons'] = args.polygons
        self.sidecars = sidecar_paths(args.out)

    @override
    def load_network(self) -> tuple['nn.Module', 'CheckpointMetadata']:
        from ..inference import load_segmentation_checkpoint

        model, metadata = load_segmentation_checkpoint(self.network)
        return model, metadata.replace(class_names=self.args.class_names)

    @override
    def options(self) -> dict[str, Any]:
        return {**super().options(), 'confidence': self.args.confidence}

    @override
    def jobs(self, sources: Sequence[str], folder: bool) -> list['SceneJob']:
        from ..inference.scenes import scene_jobs

        return scene_jobs(
            sources, self.args.out, self.args.probabilities, folder=folder
        )

    @override
    def unpublished(
        self,
        model: 'nn.Module',
        metadata: 'CheckpointMetadata',
        job: 'SceneJob',
        **options: Any,
    ) -> 'UnpublishedScene':
        from ..inference.predict import predict_unpublished

        return predict_unpublished(
            model,
            metadata,
            job.source,
            job.destination,
            probabilities=job.probabilities,
            **options,
        )

    @override
    def make_extras(self) -> None:
        from ..inference.polygons import vectorize

        args = self.args
        if args.polygons is not None:
            count = vectorize(
                args.out,
                args.polygons,
                min_area=args.min_area,
                overwrite=args.overwrite,
            )
            if not args.quiet:
                print(f'{args.polygons}: {count} polygons')
