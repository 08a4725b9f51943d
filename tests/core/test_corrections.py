"""The corrections store's volume state: written and read by core alone."""

import numpy as np
import pytest

from napari_unet.core.corrections import VolumeState, load_volume_edits, load_volume_state, save_volume_state


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
