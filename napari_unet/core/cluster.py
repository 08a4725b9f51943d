"""A volume predicted on a dask cluster: blocks of whole slices, written into one zarr store.

Slices too large for one worker's memory (montages, `core.blocks`) are spread over the
workers block by block instead: each block is whole chunks of the stores, its slice's
levels come from one task before it, and its cells are labelled once the slice's mask is
whole, so they equal one process's too.

dask.distributed schedules the blocks (a local cluster, or an HPC / cloud one given by
its scheduler address); nothing here is a scheduler. Why it is safe and resumable:

* a block is a run of whole slices and the store is chunked one slice deep, so no two
  blocks ever write the same chunk, and the 2D model needs no halo between slices;
* a block's result depends only on its slices, the model and the settings (the same
  `Pipeline` as a single process), so a block rewritten after a worker died gives the
  same bytes;
* cell ids are written per slice from 1, and numbered once every block is in (each
  slice's ids moved by the cells of the slices before it), so they equal a single
  process's;
* the client writes a marker for each block once its slices are stored (``<out>.blocks/``,
  with the job's description); a rerun of the same job skips the marked blocks.

The model goes to every worker once, as a worker plugin: dask sends it to each worker
when it joins, a worker restarted after a crash included, and the tasks take it from there.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .blocks import SliceOf, block_grid, in_blocks, label_cells_in_blocks, prediction_edge, refuse_whole
from .checkpoint import Checkpoint
from .data import DataError
from .pipeline import Pipeline
from .settings import PredictSettings
from .volume import create_output, open_volume

try:
    from distributed import WorkerPlugin
except ImportError:  # dask.distributed is optional (napari-unet[all]); predict_on_cluster says so
    WorkerPlugin = object


@dataclass
class ClusterReport:
    """What a cluster prediction did: slices predicted now, skipped (done before), blank."""

    done: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    blank: list[int] = field(default_factory=list)
    seconds: float = 0.0


def record_folder(out: str | Path) -> Path:
    """The completion record of a store: ``<out>.blocks`` beside it."""
    out = Path(out)
    return out.with_name(out.name + ".blocks")


def _job(checkpoint: Checkpoint, source: str, shape: tuple, settings: PredictSettings) -> dict:
    """What makes two runs the same job (a rerun may then reuse the other's blocks): the
    data, the weights and every setting that changes a pixel (not where it runs)."""
    weights = hashlib.sha256()
    for name, tensor in sorted(checkpoint.model.state_dict().items()):
        weights.update(name.encode())
        weights.update(tensor.detach().cpu().numpy().tobytes())
    levels = settings.levels
    chosen = {name: value for name, value in asdict(settings).items() if name not in ("model", "device", "levels")}
    return {"source": str(Path(source).resolve()), "shape": list(shape), "model": weights.hexdigest()[:16],
            "levels": [np.asarray(level).tolist() for level in levels] if levels is not None else None, **chosen}


class _ModelOnWorkers(WorkerPlugin):
    """A worker plugin that holds the model."""

    def __init__(self, name: str, checkpoint: Checkpoint) -> None:
        self.name, self.checkpoint = name, checkpoint


def _predict_block(model: str, source: str, outs: dict, slices: list[int], settings: PredictSettings,
                   threads: int | None) -> dict:
    """Runs on a worker: predict some whole slices of the volume into the stores, with the
    model held by the worker plugin named ``model``. Cell ids are each slice's own (from 1)."""
    import zarr

    from .stream import VolumeOutputs, predict_volume

    stores = {name: zarr.open_array(path, mode="r+") for name, path in outs.items()}
    pipeline = _worker_pipeline(model, settings.but(instances="instances" in stores), threads)
    report = predict_volume(pipeline, open_volume(source).data, VolumeOutputs(**stores), slices, global_ids=False)
    return {"slices": slices, "blank": report.blank, "cells": {str(z): n for z, n in report.cells.items()}}


def _worker_pipeline(model: str, settings: PredictSettings, threads: int | None = None) -> Pipeline:
    """On a worker: the `Pipeline` of the job's settings (the client's, so every worker cuts
    the same blocks), with the model held by the worker plugin named ``model``."""
    import torch
    from distributed import get_worker

    if threads:
        torch.set_num_threads(threads)
    return Pipeline(get_worker().plugins[model].checkpoint, settings)


def _montage_levels(model: str, source: str, z: int, settings: PredictSettings) -> list | None:
    """On a worker: slice ``z``'s own intensity levels (`blocks.slice_levels`), read block
    by block; None for a slice without image."""
    from .blocks import slice_levels

    pipeline = _worker_pipeline(model, settings)
    try:
        return [level.tolist() for level in slice_levels(SliceOf(open_volume(source).data, z),
                                                         pipeline.info.normalization, edge=settings.block)]
    except DataError:
        return None


def _predict_region(model: str, source: str, outs: dict, z: int, region: tuple, own, settings: PredictSettings,
                    threads: int | None) -> bool:
    """On a worker: one block of a montage slice (whole chunks of the stores), with the
    volume's ``levels`` or else the slice's ``own``. Returns True for a slice without image
    (the block is written empty)."""
    import zarr

    from .blocks import predict_block_into
    from .stream import VolumeOutputs

    stores = {name: zarr.open_array(path, mode="r+") for name, path in outs.items() if name != "instances"}
    y0, y1, x0, x1 = region
    if own is None:
        for store in stores.values():
            store[z, y0:y1, x0:x1] = 0
        return True
    pipeline = _worker_pipeline(model, settings, threads)
    chosen = pipeline.levels if pipeline.levels is not None else tuple(np.asarray(level, np.float32) for level in own)
    predict_block_into(pipeline, SliceOf(open_volume(source).data, z), VolumeOutputs(**stores), z, region, chosen)
    return False


def _montage_cells(model: str, mask: str, local: str, z: int, settings: PredictSettings) -> int:
    """On a worker: the cells of a montage slice, block by block, numbered from 1."""
    import zarr

    method = _worker_pipeline(model, settings).info.instance_method
    return label_cells_in_blocks(zarr.open_array(mask, mode="r"), z, zarr.open_array(local, mode="r+"), method,
                                 edge=settings.block)


def _number_cells(local: str, path: str, slices: list[int], offsets: dict, edge: int) -> None:
    """Runs on a worker: each slice's own cell ids (store ``local``) moved by its offset
    into ``path``, so ids are unique in the volume and equal to a single process's
    (`stream.predict_volume`). Reading one store and writing another makes a rerun safe."""
    import zarr

    source, target = zarr.open_array(local, mode="r"), zarr.open_array(path, mode="r+")
    for z in slices:
        for y0, y1, x0, x1 in block_grid(*source.shape[1:], edge):  # a montage slice would not fit in memory
            cells = np.asarray(source[z, y0:y1, x0:x1])
            target[z, y0:y1, x0:x1] = np.where(cells > 0, cells + np.uint32(offsets[str(z)]), 0).astype(np.uint32)


def predict_on_cluster(
    client,
    checkpoint: Checkpoint,
    source: str | Path,
    out: str | Path,
    settings: PredictSettings | None = None,
    block: int = 4,
    probabilities: str | Path | None = None,
    instances: str | Path | None = None,
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ClusterReport:
    """Predict a volume's mask (and probability, cells) into zarr stores, ``block``
    slices per task, each slice through the same `Pipeline` as a single process.

    Args:
        client: a ``dask.distributed.Client`` (local or remote cluster); its workers
            must read ``source`` and write the stores at the same paths (a shared disk).
        checkpoint: the model, sent to each worker once.
        out: the mask's ``.zarr`` store; created, or resumed when it holds this job's blocks.
        settings: the user's choices, as a single process takes them (their ``device``:
            "cpu" keeps the workers on their CPU, anything else lets each pick its own).
        block: slices per task.
        probabilities, instances: ``.zarr`` stores for them too, or None.
        threads: torch threads per worker (default: torch's own choice).
        progress: called with (slices done, slices in the volume).

    Raises:
        DataError: ``out`` holds another job's result, or is not a store this job made.
    """
    try:
        from distributed import as_completed
    except ImportError:
        raise DataError("Predicting on a cluster needs dask.distributed: pip install 'napari-unet[all]'.") from None
    start = time.perf_counter()
    source, out = str(source), Path(out)
    volume = open_volume(source).data
    shape = tuple(volume.shape[:3])
    settings = settings or PredictSettings()
    settings = settings.but(device="cpu" if settings.device == "cpu" else "auto", instances=False)
    outs = {"mask": str(out)}
    if probabilities is not None:
        outs["probabilities"] = str(probabilities)
    if instances is not None:  # each slice's own ids first, numbered through the volume at the end
        outs["instances"] = str(Path(instances).with_name(f".{Path(instances).name}.local.zarr"))
    # Montage slices go to the workers block by block, each block whole chunks of the stores.
    probe = Pipeline(checkpoint, settings.but(device="cpu"))
    # The threshold in use (the model's unless one was chosen) belongs to the job: a rerun
    # with another one must not reuse its blocks. The pipeline says which it is.
    settings = settings.but(threshold=probe.threshold)
    refuse_whole(probe, shape[1:3])
    edge = prediction_edge(probe, shape[1:3]) if in_blocks(probe, shape[1:3]) else None
    job = _job(checkpoint, source, shape, settings)
    job["outputs"] = sorted(outs)
    records = record_folder(out)
    done = _resume(out, records, job)
    if not done:
        dtypes = {"mask": np.uint8, "probabilities": np.float32, "instances": np.uint32}
        chunk = {"chunk": edge} if edge else {}
        for name, path in outs.items():
            create_output(path, shape, dtypes[name], **chunk)
        if instances is not None:
            create_output(instances, shape, np.uint32, **chunk)
        records.mkdir(parents=True, exist_ok=True)
        (records / "job.json").write_text(json.dumps(job, indent=1))
    runs = [list(range(z, min(z + block, shape[0]))) for z in range(0, shape[0], block)]
    todo = [] if edge else [b for b in runs if f"{b[0]}-{b[-1]}" not in done]  # montages: by block, below
    report = ClusterReport(skipped=[] if edge else [z for b in runs if b not in todo for z in b])
    counts: dict[str, int] = {}
    for name in done:  # what the earlier run's blocks recorded
        counts.update(json.loads((records / name).read_text() or "{}").get("cells", {}))
    model = f"napari-unet-model-{job['model']}"
    client.register_plugin(_ModelOnWorkers(model, checkpoint), name=model)
    try:
        if edge:
            _montage_on_cluster(client, model, source, outs, shape, edge, settings, threads, records, done, report,
                                counts, progress)
        futures = [client.submit(_predict_block, model, source, outs, b, settings, threads, pure=False,
                                 retries=3) for b in todo]
        finished = len(report.skipped)
        for future in as_completed(futures):
            result = future.result()
            slices = result["slices"]
            counts.update(result["cells"])
            # Only once the block is stored; its cell counts number the cells at the end.
            (records / f"{slices[0]}-{slices[-1]}").write_text(json.dumps({"cells": result["cells"]}))
            report.done.extend(slices)
            report.blank.extend(result["blank"])
            finished += len(slices)
            if progress is not None:
                progress(finished, shape[0])
        if instances is not None and Path(outs["instances"]).exists():
            offsets, total = {}, 0
            for z in range(shape[0]):
                offsets[str(z)] = total
                total += int(counts.get(str(z), 0))
            client.gather([client.submit(_number_cells, outs["instances"], str(instances), b, offsets,
                                         settings.block, pure=False, retries=3) for b in runs])
            shutil.rmtree(outs["instances"], ignore_errors=True)
    finally:
        client.unregister_worker_plugin(model)
    report.done.sort()
    report.seconds = time.perf_counter() - start
    return report


def _resume(out: Path, records: Path, job: dict) -> set[str]:
    """Names of the blocks an earlier run of this job finished; empty when starting anew.

    Raises:
        DataError: ``out`` exists but was not made by this job.
    """
    if not out.exists():
        return set()
    try:
        earlier = json.loads((records / "job.json").read_text())
    except (OSError, ValueError):
        earlier = None
    if earlier != job:
        raise DataError(f"{out} exists and holds another result (other data, model or settings): choose another "
                        "--out, or remove it (and its .blocks folder beside it) to start again.")
    return {p.name for p in records.iterdir() if p.name != "job.json"}


def _montage_on_cluster(client, model: str, source: str, outs: dict, shape: tuple, edge: int,
                        settings: PredictSettings, threads: int | None, records: Path, done: set,
                        report: ClusterReport, counts: dict, progress) -> None:
    """Slices too large for one worker's memory: each slice's levels on a worker, then its
    blocks (``edge`` pixels, whole chunks) spread over the workers, then its cells, once
    its mask is whole. A record per block (``z.y0.x0``) and per slice's cells lets a rerun
    skip what is done."""
    from distributed import as_completed

    regions = block_grid(shape[1], shape[2], edge, edge)

    def record(z: int, region: tuple) -> str:
        return f"{z}.{region[0]}.{region[2]}"

    todo = {z: [r for r in regions if record(z, r) not in done] for z in range(shape[0])}
    report.skipped = [z for z in range(shape[0]) if not todo[z]]
    # Each slice's own levels: the ones used without volume levels, and None for a blank slice.
    own = {z: client.submit(_montage_levels, model, source, z, settings, pure=False, retries=3)
           for z in todo if todo[z]}
    futures = {client.submit(_predict_region, model, source, outs, z, region, own[z], settings, threads,
                             pure=False, retries=3): (z, region) for z in todo for region in todo[z]}
    left = {z: len(todo[z]) for z in todo}
    for future in as_completed(futures):
        z, region = futures[future]
        (records / record(z, region)).write_text(json.dumps({"blank": future.result()}))
        left[z] -= 1
        if left[z] == 0:
            report.done.append(z)
            if progress is not None:
                progress(len(report.done) + len(report.skipped), shape[0])
    blank = [z for z in range(shape[0]) if json.loads((records / record(z, regions[0])).read_text())["blank"]]
    report.blank.extend(blank)
    if "instances" not in outs:
        return
    cells = {client.submit(_montage_cells, model, outs["mask"], outs["instances"], z, settings, pure=False,
                           retries=3): z for z in range(shape[0]) if f"cells-{z}" not in done and z not in blank}
    for future in as_completed(cells):
        z = cells[future]
        counts[str(z)] = future.result()
        (records / f"cells-{z}").write_text(json.dumps({"cells": {str(z): counts[str(z)]}}))
