"""A volume predicted on a dask cluster: blocks of whole slices, written into one zarr store.

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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .checkpoint import Checkpoint
from .data import DataError
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


def _job(checkpoint: Checkpoint, source: str, shape: tuple, levels, settings: dict) -> dict:
    """What makes two runs the same job (a rerun may then reuse the other's blocks)."""
    weights = hashlib.sha256()
    for name, tensor in sorted(checkpoint.model.state_dict().items()):
        weights.update(name.encode())
        weights.update(tensor.detach().cpu().numpy().tobytes())
    return {"source": str(Path(source).resolve()), "shape": list(shape), "model": weights.hexdigest()[:16],
            "levels": [np.asarray(level).tolist() for level in levels] if levels is not None else None, **settings}


class _ModelOnWorkers(WorkerPlugin):
    """A worker plugin that holds the model."""

    def __init__(self, name: str, checkpoint: Checkpoint) -> None:
        self.name, self.checkpoint = name, checkpoint


def _predict_block(model: str, source: str, outs: dict, slices: list[int], levels, settings: dict) -> dict:
    """Runs on a worker: predict some whole slices of the volume into the stores, with the
    model held by the worker plugin named ``model``. Cell ids are each slice's own (from 1)."""
    import torch
    import zarr
    from distributed import get_worker

    from .pipeline import Pipeline
    from .stream import VolumeOutputs, predict_volume

    checkpoint = get_worker().plugins[model].checkpoint
    if settings.get("threads"):
        torch.set_num_threads(settings["threads"])
    stores = {name: zarr.open_array(path, mode="r+") for name, path in outs.items()}
    pipeline = Pipeline(checkpoint, device="cpu" if settings["cpu"] else "auto", tile=settings["tile"],
                        overlap=settings["overlap"], batch_size=settings["batch_size"],
                        pixel_size=settings["pixel_size"], fov=settings["fov"], threshold=settings["threshold"],
                        instances="instances" in stores, levels=levels)
    report = predict_volume(pipeline, open_volume(source).data, VolumeOutputs(**stores), slices, global_ids=False)
    return {"slices": slices, "blank": report.blank, "cells": {str(z): n for z, n in report.cells.items()}}


def _number_cells(local: str, path: str, slices: list[int], offsets: dict) -> None:
    """Runs on a worker: each slice's own cell ids (store ``local``) moved by its offset
    into ``path``, so ids are unique in the volume and equal to a single process's
    (`stream.predict_volume`). Reading one store and writing another makes a rerun safe."""
    import zarr

    source, target = zarr.open_array(local, mode="r"), zarr.open_array(path, mode="r+")
    for z in slices:
        cells = np.asarray(source[z])
        target[z] = np.where(cells > 0, cells + np.uint32(offsets[str(z)]), 0).astype(np.uint32)


def predict_on_cluster(
    client,
    checkpoint: Checkpoint,
    source: str | Path,
    out: str | Path,
    threshold: float | None = None,
    block: int = 4,
    pixel_size: float | None = None,
    tile: int | None = None,
    overlap: float = 0.25,
    batch_size: int | None = None,
    fov: str = "auto",
    levels: tuple | None = None,
    probabilities: str | Path | None = None,
    instances: str | Path | None = None,
    threads: int | None = None,
    cpu: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> ClusterReport:
    """Predict a volume's mask (and probability, cells) into zarr stores, ``block``
    slices per task, each slice through the same `Pipeline` as a single process.

    Args:
        client: a ``dask.distributed.Client`` (local or remote cluster); its workers
            must read ``source`` and write the stores at the same paths (a shared disk).
        checkpoint: the model, sent to each worker once.
        out: the mask's ``.zarr`` store; created, or resumed when it holds this job's blocks.
        levels: shared intensity levels (`volume.volume_levels`), or None (each slice's own).
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
    threshold = checkpoint.info.threshold if threshold is None else float(threshold)
    outs = {"mask": str(out)}
    if probabilities is not None:
        outs["probabilities"] = str(probabilities)
    if instances is not None:  # each slice's own ids first, numbered through the volume at the end
        outs["instances"] = str(Path(instances).with_name(f".{Path(instances).name}.local.zarr"))
    settings = {"threshold": threshold, "pixel_size": pixel_size, "tile": tile, "overlap": overlap,
                "batch_size": batch_size, "fov": fov, "threads": threads, "cpu": cpu}
    job = _job(checkpoint, source, shape, levels, {k: v for k, v in settings.items() if k not in ("threads", "cpu")})
    job["outputs"] = sorted(outs)
    records = record_folder(out)
    done = _resume(out, records, job)
    if not done:
        dtypes = {"mask": np.uint8, "probabilities": np.float32, "instances": np.uint32}
        for name, path in outs.items():
            create_output(path, shape, dtypes[name])
        if instances is not None:
            create_output(instances, shape, np.uint32)
        records.mkdir(parents=True, exist_ok=True)
        (records / "job.json").write_text(json.dumps(job, indent=1))
    blocks = [list(range(z, min(z + block, shape[0]))) for z in range(0, shape[0], block)]
    todo = [b for b in blocks if f"{b[0]}-{b[-1]}" not in done]
    report = ClusterReport(skipped=[z for b in blocks if b not in todo for z in b])
    counts: dict[str, int] = {}
    for name in done:  # what the earlier run's blocks recorded
        counts.update(json.loads((records / name).read_text() or "{}").get("cells", {}))
    model = f"napari-unet-model-{job['model']}"
    client.register_plugin(_ModelOnWorkers(model, checkpoint), name=model)
    try:
        futures = [client.submit(_predict_block, model, source, outs, b, levels, settings, pure=False,
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
            client.gather([client.submit(_number_cells, outs["instances"], str(instances), b, offsets, pure=False,
                                         retries=3) for b in blocks])
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
