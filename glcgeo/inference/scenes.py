"""Predicting many scenes: one map per scene, resumable, over several processes.

:func:`scene_jobs` names each scene's outputs (``OUT/<input stem>.tif``) and refuses
two scenes that would share one. :func:`predict_scenes` predicts one process's
share of them: a scene whose map already stands under its name is skipped (maps
are only ever renamed into place once complete, so a killed run resumes where it
stopped), and a scene that fails is reported while the others go on. Each
scene's maps are converted to COGs in a background thread while the next scene
is predicted. :func:`run_scenes` does this for any output made scene by scene
(:func:`predict_scenes` for class maps, :func:`~glcgeo.inference.embed.embed_scenes`
for embeddings).
:func:`start_processes` starts the processes with Lightning Fabric (as Lightning
launches DDP: itself, or under ``torchrun`` or SLURM), and :func:`gather_results`
brings every process's results to each. :func:`write_footprints` indexes the maps
in one GeoPackage layer and :func:`format_summary` tabulates the run.

Example::

    jobs = scene_jobs(expand(['scenes/']), 'maps/', folder=True)
    results = predict_scenes(model, metadata, jobs)
    write_footprints(results, 'maps/footprints.gpkg')
    print(format_summary(results))

Each scene is predicted whole by one process; scenes are dealt to processes in
turn (process *r* of *n* takes scenes *r*, *r + n*, ...).
"""

import os
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import rasterio
import rasterio.errors
from rasterio._err import CPLE_BaseError
from torch import nn

from ..bands import stack_of
from ..checkpoints import CheckpointMetadata
from ..errors import GlcgeoError, NoRoomError, given_name
from ..gdal_paths import stem
from ..outputs import atomic_write
from .predict import UnpublishedScene, predict_unpublished
from .writer import sidecar_paths

if TYPE_CHECKING:
    from lightning.fabric import Fabric

__all__ = [
    'FOOTPRINTS',
    'FOOTPRINT_CRS',
    'GATHER_TIMEOUT',
    'SceneJob',
    'SceneResult',
    'format_summary',
    'gather_results',
    'predict_scenes',
    'run_scenes',
    'scene_jobs',
    'start_processes',
    'write_footprints',
]

#: How long a process that has done its scenes waits for the others.
GATHER_TIMEOUT = timedelta(days=7)

#: File name of the footprint index in an output folder.
FOOTPRINTS = 'footprints.gpkg'
#: The one CRS of the footprint index: longitude and latitude (WGS 84).
FOOTPRINT_CRS = 'EPSG:4326'


@dataclass(frozen=True)
class SceneJob:
    """One scene to predict and where its outputs go.

    Attributes:
        source: the input raster, a local file or a URL.
        destination: the class map (or embeddings) to write.
        probabilities: the per-class percentages to write, if any.
        class_map: whether *destination* is a class map, with its sidecars.

    """

    source: str
    destination: str
    probabilities: str | None = None
    class_map: bool = True

    @property
    def outputs(self) -> list[str]:
        """The files the scene is written to, the main one and its sidecars first."""
        sidecars = sidecar_paths(self.destination) if self.class_map else []
        probabilities = [self.probabilities] if self.probabilities else []
        return [self.destination, *sidecars, *probabilities]


@dataclass(frozen=True)
class SceneResult:
    """What became of a scene.

    Attributes:
        job: the scene.
        status: ``'predicted'``, ``'skipped'`` (its outputs were complete) or
            ``'failed'``.
        width: map width in pixels (None when failed).
        height: map height in pixels (None when failed).
        seconds: wall-clock time spent on the scene.
        error: why it failed, in one line.

    """

    job: SceneJob
    status: str
    width: int | None = None
    height: int | None = None
    seconds: float = 0.0
    error: str | None = None


def scene_jobs(
    sources: Sequence[str],
    out: str | os.PathLike[str],
    probabilities: str | os.PathLike[str] | None = None,
    *,
    folder: bool,
    class_map: bool = True,
) -> list[SceneJob]:
    """Name the outputs of each scene.

    Args:
        sources: the input rasters (see :func:`glcgeo.sources.expand`).
        out: the class map of the one scene, or (*folder*) the folder that
            receives ``<input stem>.tif`` of each scene.
        probabilities: as *out*, for per-class percentages; None for none.
        folder: whether *out* and *probabilities* are folders.
        class_map: whether the outputs are class maps (see :class:`SceneJob`).

    Returns:
        one job per source, in the order of *sources*.

    Raises:
        GlcgeoError: for several sources without *folder*, or two sources with
            the same stem (they would share an output).
    """
    if not folder:
        if len(sources) != 1:
            raise GlcgeoError(f'{len(sources)} input scenes need an output folder')
        extra = os.fspath(probabilities) if probabilities is not None else None
        return [SceneJob(sources[0], os.fspath(out), extra, class_map)]
    by_stem: dict[str, str] = {}
    jobs = []
    for source in sources:
        name = stem(source)
        if name in by_stem:
            raise GlcgeoError(
                f'{by_stem[name]} and {source} would both be written to '
                f'{name}.tif: predict them into different folders'
            )
        by_stem[name] = source
        jobs.append(
            SceneJob(
                source,
                os.path.join(out, f'{name}.tif'),
                None
                if probabilities is None
                else os.path.join(probabilities, f'{name}.tif'),
                class_map,
            )
        )
    return jobs


def _size(path: str) -> tuple[int, int]:
    """(width, height) of a raster file."""
    with rasterio.open(path) as src:
        return src.width, src.height


def _failure(job: SceneJob, error: BaseException, seconds: float) -> SceneResult:
    """The result of a scene that failed, its error in one line naming it."""
    message = str(error).splitlines()[0] if str(error) else repr(error)
    if not isinstance(error, GlcgeoError):
        message = f'{given_name(job.source)}: {message}'
    return SceneResult(job, 'failed', seconds=seconds, error=message)


def _timed(call: Callable[[], None]) -> float:
    """Seconds *call* takes."""
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


#: What a scene's prediction or publication may fail with; the others go on.
_SCENE_ERRORS = (GlcgeoError, rasterio.errors.RasterioError, CPLE_BaseError, OSError)


def predict_scenes(
    model: nn.Module,
    metadata: CheckpointMetadata,
    jobs: Sequence[SceneJob],
    *,
    rank: int = 0,
    world_size: int = 1,
    skip_complete: bool = True,
    overwrite: bool = False,
    report: Callable[[SceneResult], None] | None = None,
    **options: Any,
) -> list[SceneResult]:
    """Predict one process's share of the scenes, each into its own map.

    See :func:`run_scenes`.

    Args:
        model: the segmentation model (see
            :func:`~glcgeo.inference.predict_raster`).
        metadata: the model's bands, normalisation and classes.
        jobs: all the scenes, in the same order in every process.
        rank: see :func:`run_scenes`.
        world_size: see :func:`run_scenes`.
        skip_complete: see :func:`run_scenes`.
        overwrite: see :func:`run_scenes`.
        report: see :func:`run_scenes`.
        options: keyword arguments of :func:`~glcgeo.inference.predict_raster`
            (``tile_size``, ``overlap``, ``batch_size``, ``device``, ``nodata``,
            ``progress``, ``confidence``, ``provenance``).

    Returns:
        the results of this process's scenes, in job order.
    """

    def predict(job: SceneJob, replace: bool) -> UnpublishedScene:
        return predict_unpublished(
            model,
            metadata,
            job.source,
            job.destination,
            probabilities=job.probabilities,
            overwrite=replace,
            **options,
        )

    return run_scenes(
        jobs,
        predict,
        rank=rank,
        world_size=world_size,
        skip_complete=skip_complete,
        overwrite=overwrite,
        report=report,
    )


def run_scenes(
    jobs: Sequence[SceneJob],
    unpublished: Callable[[SceneJob, bool], UnpublishedScene],
    *,
    rank: int = 0,
    world_size: int = 1,
    skip_complete: bool = True,
    overwrite: bool = False,
    report: Callable[[SceneResult], None] | None = None,
) -> list[SceneResult]:
    """Make one process's share of the scenes' outputs, scene by scene.

    Each scene's outputs are published (converted to COGs, renamed onto their
    names) in a background thread while the next scene is made, one scene
    at a time: the model does not wait for GDAL's compression.

    A scene whose output finds no room fails, its temporary files removed; where
    the device (or quota) is full, the scenes left then fail at once, unread,
    and a rerun resumes with them once there is room (a file size limit fails
    the scenes whose outputs exceed it, and the others go on).

    Args:
        jobs: all the scenes, in the same order in every process.
        unpublished: makes a scene's outputs into temporary files (e.g.
            :func:`~glcgeo.inference.predict.predict_unpublished`), given the
            job and whether existing outputs may be replaced.
        rank: this process's rank; it takes scenes ``rank``, ``rank +
            world_size``, ...
        world_size: number of processes.
        skip_complete: skip a scene whose outputs all exist (unless
            *overwrite*): a file under an output's name is complete; the outputs
            of a scene that lacks some (a map without its sidecars) are
            replaced.
        overwrite: make every scene again, replacing existing outputs.
        report: called with each scene's result as soon as it is known, in job
            order.

    Returns:
        the results of this process's scenes, in job order.
    """
    results: list[SceneResult] = []
    # The scene being published: its job, seconds of prediction, and future.
    publishing: tuple[SceneJob, UnpublishedScene, float, Future[float]] | None = None
    # Why the device took no more, once it did.
    full: NoRoomError | None = None

    def add(result: SceneResult) -> None:
        results.append(result)
        if report is not None:
            report(result)

    def fail(job: SceneJob, error: BaseException, seconds: float) -> None:
        nonlocal full
        if isinstance(error, NoRoomError) and error.lasting:
            full = error
        add(_failure(job, error, seconds))

    def settle() -> None:
        """Wait for the scene being published, and add its result."""
        nonlocal publishing
        if publishing is None:
            return
        job, scene, seconds, future = publishing
        publishing = None
        try:
            seconds += future.result()
        except _SCENE_ERRORS as error:
            fail(job, error, seconds)
            return
        summary = scene.summary
        add(SceneResult(job, 'predicted', summary.width, summary.height, seconds))

    # Not a with block: an interrupted run must not wait for a conversion.
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix='glcgeo-publish')
    try:
        for job in jobs[rank::world_size]:
            start = time.perf_counter()
            if (
                skip_complete
                and not overwrite
                and all(map(os.path.exists, job.outputs))
            ):
                settle()
                add(SceneResult(job, 'skipped', *_size(job.destination)))
                continue
            if full is not None:
                settle()
                reason = f'not predicted: {full.reason}'
                fail(job, GlcgeoError(reason, job.destination), 0.0)
                continue
            try:
                # What an incomplete scene left is replaced.
                scene = unpublished(job, overwrite or skip_complete)
            except _SCENE_ERRORS as error:
                settle()
                fail(job, error, time.perf_counter() - start)
                continue
            try:
                settle()
            except BaseException:
                scene.discard()
                raise
            future = executor.submit(_timed, scene.publish)
            publishing = (job, scene, time.perf_counter() - start, future)
        settle()
    except BaseException:
        # Interrupted (or a bug): the scene being published leaves nothing.
        if publishing is not None:
            publishing[1].discard()
        raise
    finally:
        executor.shutdown(wait=False)
    return results


def start_processes(
    accelerator: str = 'auto',
    devices: int | str = 'auto',
    num_nodes: int = 1,
) -> 'Fabric':
    """Start the prediction processes, as Lightning starts DDP training.

    Run as a script, the calling process re-runs its own command line once per
    other device (so every process reaches this call); under ``torchrun`` or
    SLURM the launcher has started them. Processes on CPU talk through gloo; they
    meet only in :func:`gather_results`, waiting up to :data:`GATHER_TIMEOUT`.

    Args:
        accelerator: ``cpu``, ``gpu``, ``cuda`` or ``auto``.
        devices: devices (processes) per node, or ``auto``.
        num_nodes: machines.

    Returns:
        this process's Fabric: ``global_rank``, ``world_size`` and ``device``.

    Raises:
        GlcgeoError: if Lightning cannot use the accelerator or devices.
    """
    from lightning.fabric import Fabric
    from lightning.fabric.strategies import DDPStrategy
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    several = devices != 1 or num_nodes != 1
    try:
        fabric = Fabric(
            accelerator=accelerator,
            devices=devices,
            num_nodes=num_nodes,
            # The processes meet once, when all their scenes are done: the one
            # that finishes first may wait for hours, not DDP's 30 minutes.
            strategy=DDPStrategy(timeout=GATHER_TIMEOUT) if several else 'auto',
        )
    except (MisconfigurationException, ValueError, RuntimeError) as error:
        reason = str(error).splitlines()[0]
        raise GlcgeoError(f'cannot start the processes ({reason})') from None
    fabric.launch()
    return fabric


def gather_results(results: list[SceneResult]) -> list[SceneResult]:
    """Every process's results, in job order (all processes must call it).

    Args:
        results: this process's results.

    Returns:
        the results of all processes (*results* itself in one process).
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return results
    shares: list[list[SceneResult] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(shares, results)
    world_size = len(shares)
    # Process r predicted jobs r, r + n, ...: deal them back in turn.
    ordered: list[SceneResult] = []
    for index in range(sum(len(share or []) for share in shares)):
        share = shares[index % world_size]
        assert share is not None
        ordered.append(share[index // world_size])
    return ordered


def _footprint(path: str) -> Any:
    """The outline of a raster's extent in :data:`FOOTPRINT_CRS`, or None."""
    import geopandas as gpd
    import shapely

    try:
        with rasterio.open(path) as src:
            bounds, crs = src.bounds, src.crs
    except rasterio.errors.RasterioIOError:
        return None
    # 16 vertices along each side follow the sides' curvature in longitude and
    # latitude.
    side = max(bounds.right - bounds.left, bounds.top - bounds.bottom)
    outline = shapely.segmentize(shapely.box(*bounds), side / 16)
    return gpd.GeoSeries([outline], crs=crs).to_crs(FOOTPRINT_CRS).iloc[0]


def _item_id(source: str) -> str | None:
    """The STAC item a source is a band stack of, if any."""
    stack = stack_of(source)
    return None if stack is None else stack.item


def write_footprints(results: Sequence[SceneResult], path: str) -> None:
    """Write a GeoPackage layer of the maps' footprints, for GIS (e.g. QGIS).

    One feature per scene: the outline of its map's extent in
    :data:`FOOTPRINT_CRS`, with ``scene`` (the input, as the user named it),
    ``item`` (the STAC item's id, for a scene that is one), ``location`` (the
    map file), ``status``, ``width``, ``height``, ``seconds`` and ``error``; a
    failed scene has no geometry. The file is written whole (temporary name, rename).

    Args:
        results: the scenes' results.
        path: the ``.gpkg`` file (layer ``footprints``).
    """
    import geopandas as gpd

    rows = [
        {
            'scene': given_name(result.job.source),
            'item': _item_id(result.job.source),
            'location': os.path.abspath(result.job.destination),
            'status': result.status,
            'width': result.width,
            'height': result.height,
            'seconds': round(result.seconds, 3),
            'error': result.error,
            'geometry': None
            if result.status == 'failed'
            else _footprint(result.job.destination),
        }
        for result in results
    ]
    frame = gpd.GeoDataFrame(rows, geometry='geometry', crs=FOOTPRINT_CRS)
    with atomic_write(path) as temporary, warnings.catch_warnings():
        # The temporary name lacks the .gpkg extension the final name has.
        warnings.filterwarnings('ignore', message='The filename extension should be')
        frame.to_file(temporary, driver='GPKG', layer='footprints')


def format_summary(results: Sequence[SceneResult]) -> str:
    """Tabulate a run: scene, pixels, seconds and status, one scene per line.

    Args:
        results: the scenes' results.

    Returns:
        the table, with a total line and without a trailing newline.
    """
    rows = [
        (
            given_name(result.job.source),
            '-' if result.width is None else f'{result.width} x {result.height}',
            f'{result.seconds:.1f}',
            result.status,
        )
        for result in results
    ]
    counts = {s: sum(r.status == s for r in results) for s in ('predicted', 'skipped')}
    failed = len(results) - sum(counts.values())
    pixels = sum((r.width or 0) * (r.height or 0) for r in results)
    seconds = sum(r.seconds for r in results)
    total = (
        f'{len(results)} scenes',
        f'{pixels / 1e6:.1f} Mpx',
        f'{seconds:.1f}',
        f'{counts["predicted"]} predicted, {counts["skipped"]} skipped, '
        f'{failed} failed',
    )
    header = ('scene', 'pixels', 'seconds', 'status')
    widths = [max(len(row[i]) for row in (header, *rows, total)) for i in range(3)]

    def line(row: tuple[str, str, str, str]) -> str:
        return (
            f'{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  '
            f'{row[2]:>{widths[2]}}  {row[3]}'
        )

    return '\n'.join(line(row) for row in (header, *rows, total))
