"""Large data in the GUI: a 100-slice stack keeps the GUI responsive; a zarr volume is
opened, predicted and corrected lazily, slice by slice."""

import time

import dask
import numpy as np
import pytest
import zarr

from napari_unet._widgets._session import get_session
from napari_unet.cli import main

from .conftest import paint_square, reopen_in_new_window, wait_for
from .test_workflow import FREEZE_S, _heartbeat


def _stalls(ticks, inserted) -> tuple[float, float]:
    """(longest gap between heartbeat ticks, longest gap in which napari added a layer).

    Adding a layer makes napari build its visual and controls on the GUI thread, then draw
    it (0.15-0.4 s here for a 100 x 1,024² layer, as when a user adds one by hand): the gap
    holding the insertion and the next one are told apart; each turn of ours adds at most
    one layer."""
    ticks = np.asarray(ticks)
    gaps = np.diff(ticks)
    adding = np.array([any(a < t <= b for t in inserted) for a, b in zip(ticks[:-1], ticks[1:])], bool)
    adding[1:] |= adding[:-1]
    ours = gaps[~adding].max() if (~adding).any() else 0.0
    napari = gaps[adding].max() if adding.any() else 0.0
    return float(ours), float(napari)


def test_a_100_slice_stack_never_stalls_the_gui(widgets, qtbot, em_slices, tiny_512):
    """Predict (mask, probability, cells), predict again into the edited layer, autosave and
    fine-tune on a 100 x 1024² stack: the GUI never freezes (no heartbeat gap over
    `FREEZE_S`), not even while napari itself builds a new layer (writing whole slices at
    once would take seconds). The 250 ms target is measured by benchmarks/responsiveness.py:
    a loaded test machine can miss it (0.39 s in one turn of "predict into edits" on an
    AMD EPYC, 2026-12-07)."""
    viewer, predict, finetune = widgets["viewer"], widgets["predict"], widgets["finetune"]
    image = viewer.add_image(np.concatenate([em_slices] * 4)[:100], name="big")
    predict.image.value = image
    predict.model.value = "file"
    predict.checkpoint.value = str(tiny_512)
    predict.show_probability.value = predict.show_instances.value = True
    qtbot.wait(300)  # let the new layer's first draw pass
    inserted = []
    viewer.layers.events.inserted.connect(lambda _event: inserted.append(time.perf_counter()))
    timer, ticks = _heartbeat()
    wait_for(qtbot, predict.predict(), 300)
    qtbot.wait(300)
    predicted = _stalls(ticks, inserted)
    labels = viewer.layers["big prediction"]
    assert labels.data.shape == (100, 1024, 1024) and viewer.layers["big cells"].data.max() > 0

    paint_square(labels, 3, 100, 100)
    predict.threshold.value = 0.3  # many pixels change: written in steps, slice 3 kept
    before = np.array(labels.data[3])
    ticks.clear()
    wait_for(qtbot, predict.predict(), 300)
    qtbot.waitUntil(lambda: "Updated" in predict.status.value, timeout=60_000)
    qtbot.wait(2000)  # the steps of the write
    merged = _stalls(ticks, inserted)
    np.testing.assert_array_equal(labels.data[3], before)
    assert "steps" in predict.status.value, predict.status.value

    session = get_session(viewer)
    ticks.clear()
    session._autosave_quietly()  # what the timer does every minute
    qtbot.waitUntil(lambda: not session.autosave_thread.is_alive(), timeout=60_000)
    saved = _stalls(ticks, inserted)
    assert session.last_autosave

    finetune.image.value, finetune.corrected_labels.value = image, labels
    finetune.steps.value = 5
    finetune.verify.value = False  # kept unchecked, so the 99 slices are re-predicted whatever 5 steps do
    ticks.clear()
    wait_for(qtbot, finetune.start(), 300)
    qtbot.wait(2000)
    tuned = _stalls(ticks, inserted)
    timer.stop()
    assert "Re-predicted 99 uncorrected slice(s)" in finetune.status.value, finetune.status.value
    stalls = {"predict": predicted, "predict into edits": merged, "autosave": saved, "fine-tune": tuned}
    assert max(ours for ours, _napari in stalls.values()) < FREEZE_S, stalls
    assert max(napari for _ours, napari in stalls.values()) < FREEZE_S, stalls


def _zarr_volume(path, slices):
    store = zarr.open_array(str(path), mode="w", shape=slices.shape, chunks=(1, 512, 512), dtype=slices.dtype)
    store[:] = slices
    return path


class _LargestRead(dask.callbacks.Callback):
    """Notes the largest array dask computes (a whole volume read would show here)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def _posttask(self, key, result, dsk, state, worker_id):
        self.largest = max(self.largest, getattr(result, "nbytes", 0))


def test_a_zarr_volume_is_predicted_and_corrected_lazily(make_napari_viewer, qtbot, em_slices, tiny_512, tmp_path):
    source = _zarr_volume(tmp_path / "volume.zarr", em_slices[:12])
    viewer = make_napari_viewer()
    predict = viewer.window.add_plugin_dock_widget("napari-unet", "Predict")[1]
    with _LargestRead() as reads:
        image = viewer.open(str(source), plugin="napari-unet")[0]
        assert isinstance(image.data, dask.array.Array) and image.data.shape == (12, 1024, 1024)
        predict.image.value = image
        predict.model.value = "file"
        predict.checkpoint.value = str(tiny_512)
        predict.threshold.value = 0.5

        # Cancel after three slices: those stay, shown in a layer backed by a zarr store.
        job = predict.predict()
        qtbot.waitUntil(lambda: job.state.done >= 3 * job.state.total / 12 > 0, timeout=120_000)
        job.cancel()
        wait_for(qtbot, job)
        labels = viewer.layers["volume prediction"]
        assert isinstance(labels.data, zarr.Array)
        assert "Cancelled: kept the" in predict.status.value
        done = [z for z in range(12) if labels.data[z].any()]
        assert 3 <= len(done) < 12 and done == list(range(len(done)))

        # The user corrects slice 1, then predicts the rest: slice 1 stays as painted.
        paint_square(labels, 1, 300, 300, value=1)
        painted = np.array(labels.data[1])
        wait_for(qtbot, predict.predict(), 300)
        assert "kept your 1 edited slice" in predict.status.value, predict.status.value
        np.testing.assert_array_equal(labels.data[1], painted)
    assert reads.largest <= 1024 * 1024 * 4, "a whole volume was read"  # one slice, float32 at most

    # The result equals the CLI's streamed prediction (slice 1 aside, which the user painted).
    assert main(["predict", str(source), "--out", str(tmp_path / "cli.zarr"), "--model", str(tiny_512),
                 "--threshold", "0.5"]) == 0
    cli = zarr.open_array(str(tmp_path / "cli.zarr"), mode="r")
    for z in (0, 2, 11):
        np.testing.assert_array_equal(labels.data[z], cli[z])

    # Autosave keeps the slice lists and the edited pixels beside the store, not a copy of it.
    session = get_session(viewer)
    session.autosave()
    folder = tmp_path / "volume.zarr.napari-unet"
    assert sorted(p.name for p in folder.iterdir()) == ["edited-1.npy", "prediction.zarr", "state.json"]

    # Reopened later (another window): Load offers the prediction and the corrections back.
    other, load = reopen_in_new_window(make_napari_viewer, source)
    assert not load.restore_button.native.isHidden() and "1 corrected slice" in load.status.value
    restored = load.restore_corrections()
    assert isinstance(restored.data, zarr.Array) and restored.data.shape == (12, 1024, 1024)
    np.testing.assert_array_equal(restored.data[1], painted)
    tracker = get_session(other).tracker(restored)
    assert tracker.corrected == tracker.edited == {1}
    np.testing.assert_array_equal(tracker.edited_pixels[1], session.tracker(labels).edited_pixels[1])

    # Only the slice on screen.
    viewer.dims.set_current_step(0, 5)
    predict.slices.value = "current slice"
    labels.data[5] = 0
    wait_for(qtbot, predict.predict(), 120)
    assert "Predicted 1 slice(s)" in predict.status.value and labels.data[5].any()


def test_a_multiscale_ome_zarr_shows_every_level_and_predicts_the_finest(make_napari_viewer, qtbot, em_slices,
                                                                         tiny_512, tmp_path):
    group = zarr.open_group(str(tmp_path / "em.ome.zarr"), mode="w")
    volume = em_slices[:3]
    for level, data in enumerate([volume, volume[:, ::2, ::2].copy()]):
        group.create_array(str(level), shape=data.shape, chunks=(1, 256, 256), dtype=data.dtype)[:] = data
    axes = [{"name": a, "type": "space", "unit": "nanometer"} for a in "zyx"]
    group.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [50.0, 6.0, 6.0]}]},
        {"path": "1", "coordinateTransformations": [{"type": "scale", "scale": [50.0, 12.0, 12.0]}]}]}]
    viewer = make_napari_viewer()
    predict = viewer.window.add_plugin_dock_widget("napari-unet", "Predict")[1]
    image = viewer.open(str(tmp_path / "em.ome.zarr"), plugin="napari-unet")[0]
    assert image.multiscale and [level.shape for level in image.data] == [(3, 1024, 1024), (3, 512, 512)]
    predict.image.value = image
    assert predict.pixel_size.value == pytest.approx(6.0)  # from the OME-Zarr metadata
    predict.model.value = "file"
    predict.checkpoint.value = str(tiny_512)
    start = time.perf_counter()
    wait_for(qtbot, predict.predict(), 120)
    assert time.perf_counter() - start < 120
    assert viewer.layers["em prediction"].data.shape == (3, 1024, 1024)


def test_a_montage_tif_opens_with_display_levels_and_predicts_block_by_block(make_napari_viewer, qtbot, em_slices,
                                                                             tiny_512, tmp_path):
    """A flat tif whose slice is over the size limit (sizes scaled down here: 512-px blocks
    and regions) opens as display levels read from the file; Predict reads it region by
    region and gives the CLI's mask and cells."""
    import tifffile

    from napari_unet.cli.predict import predict as cli_predict
    from napari_unet.core.volume import Sizes

    sizes = Sizes(region=512, large_slice=2 * 512**2, block=512, screen=512)
    montage = np.block([[em_slices[0], em_slices[1]], [em_slices[2][:512], em_slices[3][:512]]])  # 1536 x 2048
    tifffile.imwrite(tmp_path / "montage.tif", montage, photometric="minisblack")
    viewer = make_napari_viewer()
    get_session(viewer).sizes = sizes
    load = viewer.window.add_plugin_dock_widget("napari-unet", "Load")[1]
    predict = viewer.window.add_plugin_dock_widget("napari-unet", "Predict")[1]
    load.path.value = str(tmp_path / "montage.tif")
    with _LargestRead() as reads:
        image = load.load()[0]
        assert image.multiscale and [level.shape for level in image.data] == [(1536, 2048), (768, 1024), (384, 512)]
        assert "1 slice(s) of 1536x2048" in load.status.value and "napari-unet pyramid" in load.status.value
        predict.image.value = image
        predict.model.value = "file"
        predict.checkpoint.value = str(tiny_512)
        predict.threshold.value = 0.5
        predict.show_instances.value = True
        wait_for(qtbot, predict.predict(), 120)
    assert reads.largest < montage.size / 2, "a whole slice was read"
    labels, cells = viewer.layers["montage prediction"], viewer.layers["montage cells"]
    cli_predict(tmp_path / "montage.tif", str(tiny_512), tmp_path / "cli.zarr", instances=tmp_path / "cells.zarr",
                threshold=0.5, sizes=sizes)
    cli_mask = zarr.open_array(str(tmp_path / "cli.zarr"), mode="r")[0]
    assert 0.2 < cli_mask.mean() < 0.8
    np.testing.assert_array_equal(np.asarray(labels.data).reshape(cli_mask.shape), cli_mask)
    np.testing.assert_array_equal(np.asarray(cells.data).reshape(cli_mask.shape),
                                  zarr.open_array(str(tmp_path / "cells.zarr"), mode="r")[0])


def test_load_writes_an_averaged_pyramid_in_a_worker_and_opens_it(make_napari_viewer, qtbot, em_slices, tmp_path):
    """A montage tif opened through levels that pick pixels: Load's button writes an averaged
    OME-Zarr pyramid beside it in a worker (the same button cancels, leaving nothing) and
    opens it in place of the tif layer."""
    import tifffile

    from napari_unet.core.volume import Sizes

    sizes = Sizes(region=128, large_slice=2 * 512**2, screen=512)  # 128-px regions: many pyramid blocks
    montage = np.block([[em_slices[0], em_slices[1]], [em_slices[2][:512], em_slices[3][:512]]])  # 1536 x 2048
    tifffile.imwrite(tmp_path / "montage.tif", montage, photometric="minisblack")
    viewer = make_napari_viewer()
    get_session(viewer).sizes = sizes
    load = viewer.window.add_plugin_dock_widget("napari-unet", "Load")[1]
    load.path.value = str(tmp_path / "montage.tif")
    load.load()
    assert not load.pyramid_button.native.isHidden()
    job = load.write_pyramid()
    assert load.pyramid_button.text == "Cancel"
    assert load.write_pyramid() is job  # the button cancels the running job
    wait_for(qtbot, job)
    assert "Cancelled: no pyramid was written" in load.status.value
    assert sorted(p.name for p in tmp_path.iterdir()) == ["montage.tif"]
    wait_for(qtbot, load.write_pyramid())
    image = viewer.layers["montage"]
    assert [layer.name for layer in viewer.layers] == ["montage"] and image.multiscale
    assert [level.shape for level in image.data] == [(1536, 2048), (768, 1024), (384, 512)]
    np.testing.assert_array_equal(np.asarray(image.data[0]), montage)
    halved = montage.reshape(768, 2, 1024, 2).astype(float).mean(axis=(1, 3))
    assert np.abs(np.asarray(image.data[1]) - halved).max() <= 0.5  # averaged, not picked
    assert "montage.ome.zarr" in load.status.value and load.pyramid_button.native.isHidden()
    # Next time the tif is opened, Load offers the pyramid beside it instead of writing one.
    other = make_napari_viewer()
    get_session(other).sizes = sizes
    again = other.window.add_plugin_dock_widget("napari-unet", "Load")[1]
    again.path.value = str(tmp_path / "montage.tif")
    again.load()
    assert again.pyramid_button.text == "Open the averaged pyramid" and "is beside it" in again.status.value
    assert again.write_pyramid() is None and [level.shape for level in other.layers["montage"].data][1] == (768, 1024)
