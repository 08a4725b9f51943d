"""A montage in the GUI, as a user works on it: Predict the region in view, paint it, the
autosave writes only the chunks that changed, Fine-tune learns from the corrected chunks,
and the next session's Predict brings the corrections back."""

import json

import numpy as np
import pytest
import tifffile
import zarr

from napari_unet._widgets._session import get_session
from napari_unet.cli import main
from napari_unet.core.checkpoint import load_checkpoint
from napari_unet.core.finetune import describe_history
from napari_unet.core.volume import Sizes

from .conftest import paint_square, wait_for

#: Every size scaled down, so a 1536 x 2048 slice is a montage: 512-px blocks, regions read
#: and display levels, 1024-px regions to correct, Labels layers of at most 1024² pixels.
SMALL = Sizes(region=512, large_slice=2 * 512**2, block=512, screen=512, correct_region=1024, gui_slice=1024**2)


def _open(make_napari_viewer, path, center, qtbot):
    viewer = make_napari_viewer()
    get_session(viewer).sizes = SMALL
    load = viewer.window.add_plugin_dock_widget("napari-unet", "Load")[1]
    load.path.value = str(path)
    image = load.load()[0]
    assert tuple(image.contrast_limits) == (0, 255)  # nothing read on the GUI thread: sampled in a worker
    wait_for(qtbot, load.contrast_job, 30)
    low, high = image.contrast_limits
    assert 0 < low < high < 255
    (viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera).center = center
    return viewer, image


def _predict(viewer, qtbot, image, model):
    predict = viewer.window.add_plugin_dock_widget("napari-unet", "Predict")[1]
    predict.image.value = image
    predict.model.value = "file"
    predict.checkpoint.value = str(model)
    predict.threshold.value = 0.5
    wait_for(qtbot, predict.predict(), 120)
    return predict


def test_a_montage_is_predicted_corrected_and_learnt_a_region_at_a_time(make_napari_viewer, qtbot, em_slices,
                                                                         tiny_512, tmp_path):
    montage = np.block([[em_slices[0], em_slices[1]], [em_slices[2][:512], em_slices[3][:512]]])  # 1536 x 2048
    path = tmp_path / "montage.tif"
    tifffile.imwrite(path, montage, photometric="minisblack")
    viewer, image = _open(make_napari_viewer, path, (1100.0, 1300.0), qtbot)
    predict = _predict(viewer, qtbot, image, tiny_512)

    # The region around the view's centre, on the chunk grid, placed over the montage.
    region = viewer.layers["montage prediction y 512-1,536, x 512-1,536"]
    assert region.data.shape == (1024, 1024) and tuple(region.translate) == (512.0, 512.0)
    assert "Correct it with the paint tools" in predict.status.value
    assert main(["predict", str(path), "--out", str(tmp_path / "cli.zarr"), "--model", str(tiny_512),
                 "--threshold", "0.5"]) == 0
    whole = zarr.open_array(str(tmp_path / "cli.zarr"), mode="r")[0]
    assert 0.2 < whole.mean() < 0.8
    np.testing.assert_array_equal(region.data, whole[512:1536, 512:1536])  # as the whole slice's prediction

    # Painting makes the region corrected; the autosave writes its chunks, then only those painted.
    session = get_session(viewer)
    painted = paint_square(region, 0, 100, 100, value=1)
    tracker = session.tracker(region)
    assert tracker.corrected == {0}
    session.autosave()
    chunks = tmp_path / "montage.tif.napari-unet" / "montage" / "labels.zarr"
    written = {p.name: p.stat().st_mtime_ns for p in chunks.iterdir() if not p.name.startswith(".")}
    assert sorted(written) == ["0.1.1", "0.1.2", "0.2.1", "0.2.2"]  # 4 chunks of 512² out of 12
    paint_square(region, 0, 700, 900, value=0)  # in chunk (2, 2) of the slice
    session.autosave()
    again = {p.name: p.stat().st_mtime_ns for p in chunks.iterdir() if not p.name.startswith(".")}
    assert [name for name in written if again[name] != written[name]] == ["0.2.2"]

    # Fine-tune learns from the corrected chunks, cross-validated.
    finetune = viewer.window.add_plugin_dock_widget("napari-unet", "Fine-tune")[1]
    finetune.image.value = image
    finetune.corrected_labels.value = region
    finetune.steps.value = 5
    job = finetune.start()
    assert "on the 4 corrected chunk(s)" in finetune.status.value
    wait_for(qtbot, job, 240)
    assert "failed" not in finetune.status.value and "it is now the model in Predict" in finetune.status.value
    assert (tmp_path / "montage_finetuned.pt").is_file()
    assert any(event.stage.startswith("fold") for event in finetune.history)
    # The command line, given the corrections folder, makes the same decision from the same chunks.
    assert main(["train", "--from", str(tiny_512), "--images", str(path), "--labels", str(chunks.parent),
                 "--out", str(tmp_path / "cli.pt"), "--steps", "5"]) == 0
    gui, cli = (load_checkpoint(p).metadata["history"][-1]["fine_tune"]
                for p in (tmp_path / "montage_finetuned.pt", tmp_path / "cli.pt"))
    assert (gui["outcome"], gui["folds"]) == (cli["outcome"], cli["folds"]) and cli["folds"]
    assert cli["folds"][0]["name"].startswith("slice 0, y ")
    history = describe_history(load_checkpoint(tmp_path / "cli.pt").metadata["history"])
    assert history[-1].split(": ", 1)[1].startswith("slice 0, y 512-1,536, x 512-1,536, held-out Dice")

    # A stroke not yet saved, then a region beside it: the overlap shows the stroke, and the new
    # region is not counted as corrected until it is painted.
    paint_square(region, 0, 900, 900, value=1)
    (viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera).center = (1100.0, 1812.0)
    wait_for(qtbot, predict.predict(), 120)
    beside = viewer.layers["montage prediction y 512-1,536, x 1,024-2,048"]
    assert beside.data[900, 388] == 1 and tuple(beside.translate) == (512.0, 1024.0)
    assert session.tracker(beside).corrected == set()
    state = chunks.parent / "state.json"
    session.autosave()  # left untouched, it writes nothing and unmarks nothing
    assert len(json.loads(state.read_text())["corrected"]) == 4
    paint_square(beside, 0, 100, 900, value=1)  # painted: it counts as corrected as a whole
    assert session.tracker(beside).corrected == {0}
    session.autosave()
    assert len(json.loads(state.read_text())["corrected"]) == 6 and beside.data[900, 388] == 1

    # The next day: the same region comes back as corrected.
    other, image = _open(make_napari_viewer, path, (1100.0, 1300.0), qtbot)
    qtbot.waitUntil(lambda: "montage corrected regions" in other.layers, timeout=5000)
    outline = other.layers["montage corrected regions"]  # where the user worked, tinted
    np.testing.assert_array_equal(outline.data[0].min(axis=0), [512, 512])
    np.testing.assert_array_equal(outline.data[0].max(axis=0), [1536, 2048])  # both regions, touching
    _predict(other, qtbot, image, tiny_512)
    back = other.layers["montage prediction y 512-1,536, x 512-1,536"]
    np.testing.assert_array_equal(back.data, np.asarray(region.data))  # the unsaved stroke was saved too
    assert back.data[100, 100] == painted[100, 100] == 1
    assert get_session(other).tracker(back).corrected == {0} and get_session(other).tracker(back).edited == {0}


def test_a_40000_px_montage_is_refused_only_where_it_must_be(widgets):
    """A 40,000² montage opened as display levels: what cannot work on it says what to do,
    before reading anything (a resampling model, a Labels layer of the whole slice, the
    ranking)."""
    import dask.array as da

    viewer = widgets["viewer"]
    montage = da.zeros((2, 40000, 40000), dtype=np.uint8, chunks=(1, 2048, 2048))
    levels = [montage, montage[:, ::32, ::32]]  # as Load opens a montage tif (napari shows the coarse one)
    image = viewer.add_image(levels, name="montage", multiscale=True,
                             metadata={"napari_unet": {"source": "/data/montage.tif"}})
    labels = viewer.add_labels(levels, name="edits", multiscale=True)
    predict = widgets["predict"]
    predict.image.value = image
    predict.pixel_size.value = 5.0
    assert predict.predict() is None
    assert "block by block only at the model's own pixel size" in predict.status.value
    widgets["finetune"].image.value = image
    widgets["finetune"].corrected_labels.value = labels
    assert widgets["finetune"].start() is None and "a region at a time" in widgets["finetune"].status.value
    widgets["correct"].layer.value = labels
    get_session(viewer).current = load_checkpoint("em-membranes")  # as after a prediction
    assert widgets["correct"].rank_slices() is None
    assert "napari-unet suggest /data/montage.tif" in widgets["correct"].rank_status.value
    photo = da.zeros((40000, 40000, 3), dtype=np.uint8, chunks=(2048, 2048, 3))
    photo = viewer.add_image([photo, photo[::32, ::32]], name="photo", rgb=True, multiscale=True)
    predict.image.value = photo
    predict.model.value = "fundus-vessels"
    predict.pixel_size.value = 0.0
    assert predict.predict() is None and "too large to predict whole: downscale them" in predict.status.value
    assert [layer.name for layer in viewer.layers] == ["montage", "edits", "photo"]


def test_a_compressed_montage_is_offered_its_pyramid_instead_of_a_freeze(make_napari_viewer, qtbot, em_slices,
                                                                        tmp_path):
    """A zlib-compressed tif of large slices has no levels to show: File ▸ Open (at the
    users' sizes, on a slice really over them) says to use Load; Load shows nothing that
    would read whole slices, offers the pyramid, writes it in a worker and opens it."""
    huge = tmp_path / "huge.tif"  # 8,200² pixels over 64 MB, mostly zeros: a few hundred kB compressed
    plane = np.zeros((8200, 8200), np.uint8)
    plane[:1536, :2048] = np.block([[em_slices[0], em_slices[1]], [em_slices[2][:512], em_slices[3][:512]]])
    tifffile.imwrite(huge, plane, photometric="minisblack", compression="zlib", rowsperstrip=256)
    viewer = make_napari_viewer()
    with pytest.raises(Exception, match="Open it with the napari-unet Load widget"):  # File ▸ Open: said, not frozen
        viewer.open(str(huge), plugin="napari-unet")
    montage = np.block([[em_slices[0], em_slices[1]], [em_slices[2][:512], em_slices[3][:512]]])  # 1536 x 2048
    path = tmp_path / "compressed.tif"
    tifffile.imwrite(path, montage, photometric="minisblack", compression="zlib", rowsperstrip=64)
    get_session(viewer).sizes = Sizes(region=512, large_slice=2 * 512**2, screen=512, show_flat=1024**2)
    load = viewer.window.add_plugin_dock_widget("napari-unet", "Load")[1]
    load.path.value = str(path)
    assert load.load() == [] and len(viewer.layers) == 0
    assert "1,536 x 2,048 pixels without smaller levels" in load.status.value
    assert not load.pyramid_button.native.isHidden()
    wait_for(qtbot, load.write_pyramid(), 60)
    image = viewer.layers["compressed"]
    assert image.multiscale and [level.shape for level in image.data] == [(1536, 2048), (768, 1024), (384, 512)]
    np.testing.assert_array_equal(np.asarray(image.data[0]), montage)


def test_load_opens_a_prediction_store_as_labels(make_napari_viewer, tmp_path):
    """A mask store written by napari-unet predict opens through Load as labels (no contrast
    to sample on labels)."""
    mask = zarr.open_array(str(tmp_path / "mask.zarr"), mode="w", shape=(2, 64, 64), chunks=(1, 64, 64), dtype="uint8",
                           zarr_format=2)
    mask[0, 10:20, 10:20] = 1
    viewer = make_napari_viewer()
    load = viewer.window.add_plugin_dock_widget("napari-unet", "Load")[1]
    load.path.value = str(tmp_path / "mask.zarr")
    (layer,) = load.load()
    assert layer.__class__.__name__ == "Labels" and int(np.asarray(layer.data[0]).sum()) == 100
