"""Prediction on a local dask cluster (127.0.0.1 only): the same masks as one process, also
after a worker is killed, and a rerun resumes."""

import os
import signal

import numpy as np
import pytest
import torch
import zarr

pytest.importorskip("distributed", reason="dask.distributed is not installed: pip install 'napari-unet[all]'")

from distributed import Client, LocalCluster  # noqa: E402

from napari_unet.cli import main  # noqa: E402
from napari_unet.core.checkpoint import load_checkpoint  # noqa: E402
from napari_unet.core.cluster import predict_on_cluster, record_folder  # noqa: E402
from napari_unet.core.data import DataError  # noqa: E402
from napari_unet.core.pipeline import Pipeline  # noqa: E402
from napari_unet.core.settings import PredictSettings
from napari_unet.core.stream import VolumeOutputs, predict_volume  # noqa: E402
from napari_unet.core.volume import open_volume  # noqa: E402


@pytest.fixture(scope="module")
def client():
    """Two worker processes on 127.0.0.1, one thread each; closed after the module."""
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster, timeout="60s") as client:
        yield client


@pytest.fixture(scope="module")
def volume(isbi_stack, tmp_path_factory):
    """Eight real ISBI slices (256x256) in a zarr store."""
    path = tmp_path_factory.mktemp("cluster") / "volume.zarr"
    slices = np.ascontiguousarray(isbi_stack.images[:8, :256, :256, 0])
    store = zarr.open_array(str(path), mode="w", shape=slices.shape, chunks=(1, 256, 256), dtype=slices.dtype)
    store[:] = slices
    return path


@pytest.fixture(scope="module")
def single_process_outputs(volume):
    """What one process predicts (one torch thread, as each worker uses): mask,
    probabilities and cell ids."""
    model = load_checkpoint("em-membranes")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        outputs = VolumeOutputs(np.zeros((8, 256, 256), np.uint8), np.zeros((8, 256, 256), np.float32),
                                np.zeros((8, 256, 256), np.uint32))
        pipeline = Pipeline(model, PredictSettings(threshold=0.55, instances=True, device="cpu"))
        predict_volume(pipeline, open_volume(volume).data, outputs)
    finally:
        torch.set_num_threads(threads)
    return outputs


@pytest.fixture(scope="module")
def single_process(single_process_outputs):
    """The mask one process predicts."""
    return single_process_outputs.mask


def _run(client, volume, out, settings: PredictSettings | None = None, **kwargs):
    settings = settings or PredictSettings(threshold=0.55, device="cpu")
    return predict_on_cluster(client, load_checkpoint("em-membranes"), volume, out, settings, threads=1, **kwargs)


def test_the_cluster_gives_the_single_process_masks(client, volume, single_process, tmp_path):
    report = _run(client, volume, tmp_path / "mask.zarr", block=3)
    assert report.done == list(range(8)) and not report.skipped
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "mask.zarr"), mode="r")[:], single_process)
    assert sorted(p.name for p in record_folder(tmp_path / "mask.zarr").iterdir()) == ["0-2", "3-5", "6-7", "job.json"]


def test_the_cluster_gives_the_single_process_probabilities_and_cells(client, volume, single_process_outputs,
                                                                       tmp_path):
    """Cell ids are numbered through the volume once every block is in: the same as one process's."""
    probabilities, instances = tmp_path / "prob.zarr", tmp_path / "cells.zarr"
    _run(client, volume, tmp_path / "mask.zarr", block=3, probabilities=probabilities, instances=instances)
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "mask.zarr"), mode="r")[:],
                                  single_process_outputs.mask)
    np.testing.assert_array_equal(zarr.open_array(str(probabilities), mode="r")[:],
                                  single_process_outputs.probabilities)
    np.testing.assert_array_equal(zarr.open_array(str(instances), mode="r")[:], single_process_outputs.instances)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.zarr", "mask.zarr", "mask.zarr.blocks", "prob.zarr"]


def test_a_killed_worker_changes_nothing(client, volume, single_process_outputs, tmp_path):
    """Mask, probabilities and cells, as one process predicts them, after a worker died mid-run."""
    killed = []

    def kill_one(done, total):
        if not killed:  # after the first block: one worker process dies as on a crashed node
            pid = next(iter(client.run(os.getpid).values()))
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    probabilities, instances = tmp_path / "prob.zarr", tmp_path / "cells.zarr"
    report = _run(client, volume, tmp_path / "mask.zarr", block=1, progress=kill_one, probabilities=probabilities,
                  instances=instances)
    assert killed and report.done == list(range(8))
    expected = single_process_outputs
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "mask.zarr"), mode="r")[:], expected.mask)
    np.testing.assert_allclose(zarr.open_array(str(probabilities), mode="r")[:], expected.probabilities, atol=1e-6)
    np.testing.assert_array_equal(zarr.open_array(str(instances), mode="r")[:], expected.instances)


def test_a_rerun_skips_the_blocks_done_and_refuses_another_job(client, volume, single_process, tmp_path):
    out = tmp_path / "mask.zarr"
    _run(client, volume, out, block=4)
    store = zarr.open_array(str(out), mode="r+")
    store[4:8] = 9  # as if the run had stopped before block 4-7 was stored
    (record_folder(out) / "4-7").unlink()
    report = _run(client, volume, out, block=4)
    assert report.skipped == [0, 1, 2, 3] and report.done == [4, 5, 6, 7]
    np.testing.assert_array_equal(store[:], single_process)
    with pytest.raises(DataError, match="another result"):
        predict_on_cluster(client, load_checkpoint("em-membranes"), volume, out,
                           PredictSettings(threshold=0.3, device="cpu"))


def test_cli_options_for_clusters(volume, tmp_path, capsys):
    base = ["predict", str(volume), "--model", "em-membranes"]
    assert main([*base, "--out", str(tmp_path / "m.tif"), "--workers", "2"]) == 2
    assert "zarr store" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "m.zarr"), "--workers", "2", "--scheduler", "tcp://x:1"]) == 2
    # Cells now come from clusters too, but into a zarr store like the mask (was: refused altogether).
    assert main([*base, "--out", str(tmp_path / "m.zarr"), "--workers", "2", "--instances",
                 str(tmp_path / "c.tif")]) == 2
    assert "--instances is a zarr store" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "m.zarr"), "--workers", "0"]) == 2
    assert not (tmp_path / "m.zarr").exists()


def test_a_montage_slice_is_spread_over_the_workers_block_by_block(client, isbi_stack, tmp_path):
    """One slice too large for a worker (limits scaled down: blocks of 432 px) is predicted
    block by block on both workers, each block whole chunks of the stores: the masks and
    cells of one process, probabilities within float rounding; a blank slice stays empty;
    a rerun skips every block."""
    settings = PredictSettings(threshold=0.55, device="cpu", block=432, block_limit=2 * 256 * 256)
    a, b = isbi_stack.images[3, :, :, 0], isbi_stack.images[17, :, :, 0]
    montage = np.stack([np.block([[a, b[:, ::-1]], [b[::-1], a]])[:700, :900], np.zeros((700, 900), np.uint8)])
    path = tmp_path / "montage.zarr"
    zarr.open_array(str(path), mode="w", shape=montage.shape, chunks=(1, 256, 256), dtype=np.uint8)[:] = montage
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        expected = VolumeOutputs(np.zeros(montage.shape, np.uint8), np.zeros(montage.shape, np.float32),
                                 np.zeros(montage.shape, np.uint32))
        predict_volume(Pipeline(load_checkpoint("em-membranes"), settings.but(instances=True)), open_volume(path).data,
                       expected)
    finally:
        torch.set_num_threads(threads)
    out, probabilities, cells = tmp_path / "mask.zarr", tmp_path / "prob.zarr", tmp_path / "cells.zarr"
    report = _run(client, path, out, settings, probabilities=probabilities, instances=cells)
    assert report.done == [0, 1] and report.blank == [1]
    mask = zarr.open_array(str(out), mode="r")
    assert mask.chunks == (1, 432, 432)  # a block is whole chunks: no two workers write one
    np.testing.assert_array_equal(mask[:], expected.mask)
    np.testing.assert_allclose(zarr.open_array(str(probabilities), mode="r")[:], expected.probabilities, atol=1e-6)
    np.testing.assert_array_equal(zarr.open_array(str(cells), mode="r")[:], expected.instances)
    assert expected.instances.max() > 50
    records = sorted(p.name for p in record_folder(out).iterdir())
    assert len(records) == 2 * 6 + 1 + 1  # 2 x 3 blocks a slice, the cells of slice 0, the job
    assert _run(client, path, out, settings, probabilities=probabilities, instances=cells).skipped == [0, 1]
