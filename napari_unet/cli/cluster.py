"""`napari-unet predict --workers N` / `--scheduler ADDRESS`: a volume on a dask cluster.

Blocks of slices go to the workers (`core.cluster`), each through the same pipeline as
one process, into flat zarr stores that a rerun of the same job resumes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.settings import DEFAULT_OVERLAP
from ..core.volume import SIZES, Sizes
from ._common import PathLike, UsageError, check_output, note, progress_bar, refuse_same, remove

if TYPE_CHECKING:
    from .predict import PredictOutputs


def predict_on_cluster(source: PathLike, model: str, out: PathLike, *, probabilities: PathLike | None = None,
                       instances: PathLike | None = None, workers: int | None = None, scheduler: str | None = None,
                       pixel_size: float | None = None, fov: PathLike = "auto", levels: str = "slice",
                       device: str = "auto", tile: int | None = None, overlap: float = DEFAULT_OVERLAP,
                       threshold: float | None = None, batch_size: int | None = None,
                       force: bool = False, sizes: Sizes = SIZES) -> PredictOutputs:
    """Predict ``source`` on a local cluster of ``workers`` processes, or on the one at
    ``scheduler`` (its workers must see ``source`` and the stores at the same paths).

    Args:
        out, probabilities, instances: flat ``.zarr`` stores, (Z, Y, X) uint8 / float32 / uint32.
        fov: "auto" or "none": each worker finds the field of view in its images.
        Others: as `cli.predict.predict`.

    Returns:
        The `cli.predict.PredictOutputs` written.
    """
    from ..core.checkpoint import load_checkpoint
    from ..core.cluster import predict_on_cluster as run_blocks
    from ..core.cluster import record_folder
    from ..core.volume import open_volume
    from .predict import PredictOutputs, make_pipeline, predict_inputs, predict_settings

    if workers and scheduler:
        raise UsageError("--workers starts a local cluster and --scheduler uses an existing one: give one of them.")
    if str(fov) not in ("auto", "none"):
        raise UsageError("On a cluster the field of view is found in each image: use --fov auto or none.")
    out = Path(out)
    if out.suffix.lower() != ".zarr" or any(str(p).lower().endswith(".ome.zarr") for p in
                                            (out, probabilities, instances) if p):
        raise UsageError(f"--out {out.name}: on a cluster the outputs are flat zarr stores, e.g. --out mask.zarr (a "
                         "multiscale .ome.zarr is written by one process, without --workers).")
    inputs = predict_inputs(source, model, fov)
    check_output(out, True, (".zarr",), inputs)  # never over an input, even with --force
    extra = {}
    for option, path in (("--probabilities", probabilities), ("--instances", instances)):
        if path:
            if Path(path).suffix.lower() != ".zarr":
                raise UsageError(f"{option} {Path(path).name}: on a cluster {option} is a zarr store too, e.g. "
                                 f"{option} {Path(path).stem}.zarr.")
            extra[option] = check_output(path, True, (".zarr",), inputs, option)
    refuse_same({"--out": out, **extra})
    records = record_folder(out)
    if not force and out.exists() and not records.is_dir():
        raise FileExistsError(f"--out {out} exists: choose another name or add --force to overwrite it.")
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise UsageError("--workers and --scheduler need dask.distributed: pip install 'napari-unet[all]'.") from None
    checkpoint = load_checkpoint(model)
    settings = predict_settings(checkpoint, source, open_volume(source, sizes).data, model=model,
                                pixel_size=pixel_size, fov=fov, levels=levels, device=device, tile=tile,
                                overlap=overlap, threshold=threshold, batch_size=batch_size,
                                instances="--instances" in extra, sizes=sizes)
    make_pipeline(checkpoint, settings)  # refused here, not on each worker
    if force:  # only now that every check passed: a refused run leaves the earlier result
        for path in [out, records, *extra.values()]:
            remove(path)
    if scheduler:
        client, cluster, threads = Client(scheduler, timeout="30s"), None, None
    else:  # one torch thread pool per worker, sharing the cores between them
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address=None)
        client, threads = Client(cluster), max(1, (os.cpu_count() or 1) // workers)
    bar = progress_bar(0, "slice")
    try:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        report = run_blocks(client, checkpoint, source, out, settings, probabilities=extra.get("--probabilities"),
                            instances=extra.get("--instances"), threads=threads, progress=progress)
    finally:
        bar.close()
        client.close()
        if cluster is not None:
            cluster.close()
    where = f"{workers} local worker(s)" if workers else scheduler
    skipped = f", {len(report.skipped)} done by an earlier run" if report.skipped else ""
    print(f"predicted {len(report.done)} slice(s) on {where} in {report.seconds:.1f} s{skipped} -> {out}")
    if report.blank:
        note(f"slice(s) {sorted(report.blank)[:20]} hold one value only (no image): left empty.")
    return PredictOutputs(out, extra.get("--probabilities"), extra.get("--instances"))
