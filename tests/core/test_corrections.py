"""The corrections store's volume state, shape checks and edited pixels: core alone."""

import numpy as np
import pytest
import zarr

from napari_unet.core.corrections import (
    CorrectionStore,
    VolumeState,
    edited_mask,
    edited_planes,
    ignore_unedited,
    ignore_unedited_changes,
    load_volume_edits,
    load_volume_state,
    open_volume_labels,
    save_volume_state,
)
from napari_unet.core.labels import IGNORE


def test_volume_state_round_trip(tmp_path):
    folder = tmp_path / "image.zarr.napari-unet"
    assert load_volume_state(folder) is None  # nothing saved yet
    plane = np.zeros((8, 9), bool)
    plane[2:4, 3] = True
    state = VolumeState(labels=str(tmp_path / "prediction.zarr"), corrected_slices=[3, 1], edited_slices=[1])
    assert save_volume_state(folder, state, {1: plane}) == folder
    assert state.saved  # stamped on save
    back = load_volume_state(folder)
    assert back == VolumeState(labels=state.labels, corrected_slices=[1, 3], edited_slices=[1], saved=state.saved)
    edits = load_volume_edits(folder)
    assert list(edits) == [1]
    np.testing.assert_array_equal(edits[1], plane)
    save_volume_state(folder, VolumeState(labels=state.labels, corrected_slices=[1], edited_slices=[1]))
    assert list(load_volume_edits(folder)) == [1]  # slices not given again are kept
    assert sorted(p.name for p in folder.iterdir()) == ["edited-1.npy", "state.json"]


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"corrected_slices": ["x"]}'])
def test_a_damaged_volume_state_is_a_clear_error(tmp_path, text):
    (tmp_path / "state.json").write_text(text)
    with pytest.raises(ValueError, match="could not be read"):
        load_volume_state(tmp_path)


def test_saved_corrections_of_another_shape_are_refused(tmp_path):
    store = CorrectionStore(tmp_path / "image.tif.napari-unet")
    labels = np.zeros((2, 6, 7), np.uint8)
    store.save(labels, [1], [1], "image.tif")
    back, state, pixels = store.load_for((2, 6, 7), "image")
    np.testing.assert_array_equal(back, labels)
    assert state["corrected_slices"] == [1] and pixels.shape == (2, 6, 7)
    with pytest.raises(ValueError, match=r"have shape \(2, 6, 7\) but 'image' has \(2, 6, 8\): they belong to "
                       "another version of the image"):
        store.load_for((2, 6, 8), "image")


def test_a_volume_prediction_store_of_another_shape_is_refused(tmp_path):
    path = tmp_path / "prediction.zarr"
    zarr.open_array(str(path), mode="w", shape=(3, 8, 9), dtype=np.uint8)
    state = VolumeState(labels=str(path))
    labels = open_volume_labels(state, (3, 8, 9), "volume")
    assert labels.shape == (3, 8, 9)
    labels[1, 2, 3] = 1  # opened to be painted on
    with pytest.raises(ValueError, match=r"has shape \(3, 8, 9\) but 'volume' has \(4, 8, 9\): it belongs to "
                       "another version of the volume"):
        open_volume_labels(state, (4, 8, 9), "volume")


@pytest.mark.parametrize("shape", [(3, 5, 6), (5, 6)])
def test_edited_planes_and_mask_are_inverse(shape):
    mask = np.zeros(shape, bool)
    if len(shape) == 3:
        mask[2, 1, 2:4] = True
    else:
        mask[1, 2:4] = True
    planes = edited_planes(mask)
    assert list(planes) == ([2] if len(shape) == 3 else [0])  # only the slices holding an edit
    np.testing.assert_array_equal(edited_mask(planes, shape), mask)
    assert edited_mask({}, shape).shape == shape and not edited_mask({}, shape).any()


def test_ignore_unedited_changes_are_the_pixels_it_sets():
    labels = np.zeros((40, 40), np.uint8)
    labels[5:10, 5:10] = 1
    edited = np.zeros((40, 40), bool)
    edited[5:10, 5:10] = True
    rows, cols, values = ignore_unedited_changes(labels, edited)
    expected = ignore_unedited(labels, edited)
    changed = labels.copy()
    changed[rows, cols] = values
    np.testing.assert_array_equal(changed, expected)
    assert rows.size == np.count_nonzero(expected != labels) and set(values.tolist()) == {IGNORE}
    with pytest.raises(ValueError, match="Nothing was edited on this slice"):
        ignore_unedited_changes(labels, None)
    with pytest.raises(ValueError, match="Nothing was edited on this slice"):
        ignore_unedited_changes(labels, np.zeros((40, 40), bool))
