"""Which slice to correct next: the per-slice uncertainty and `napari-unet suggest`."""

import json

import numpy as np
import pytest
import tifffile
import zarr
from scipy import ndimage

from napari_unet.cli import main
from napari_unet.core.checkpoint import load_checkpoint
from napari_unet.core.pipeline import Pipeline, PipelineResult
from napari_unet.core.settings import PredictSettings
from napari_unet.core.uncertainty import (
    METHODS,
    UncertaintyMap,
    pixel_uncertainty,
    rank,
    slice_uncertainty,
    suggest,
    unscored,
)


def test_a_sure_prediction_is_less_uncertain_than_a_hesitant_one():
    sure = np.zeros((64, 64), np.float32)
    sure[20:30] = 1.0
    hesitant = np.where(sure > 0, 0.6, 0.4).astype(np.float32)
    for method in ("margin", "objects"):
        assert slice_uncertainty(sure, 0.5, method) <= slice_uncertainty(hesitant, 0.5, method), method
    assert slice_uncertainty(sure, 0.5, "flips", flipped=sure) == 0.0
    assert slice_uncertainty(sure, 0.5, "flips", flipped=1 - sure) > 1.0
    with pytest.raises(ValueError, match="flipped"):
        slice_uncertainty(sure, 0.5, "flips")
    assert slice_uncertainty(sure, 0.5, "scale", zoomed=sure) == slice_uncertainty(sure, 0.5, "margin")
    assert slice_uncertainty(sure, 0.5, "scale", zoomed=0.5 * sure) > slice_uncertainty(sure, 0.5, "margin")
    with pytest.raises(ValueError, match="another scale"):
        slice_uncertainty(sure, 0.5, "scale")
    with pytest.raises(ValueError, match="method"):
        slice_uncertainty(sure, 0.5, "magic")


def test_the_second_look_of_the_scale_method_is_at_another_scale_only():
    pipeline = Pipeline(load_checkpoint("em-membranes"), PredictSettings(device="cpu"))
    second = pipeline.rescaled(0.79)
    assert second.scale == (0.79, 0.79) and pipeline.scale is None
    assert second.threshold == pipeline.threshold and second.predictor is pipeline.predictor


def test_rank_leaves_out_corrected_and_empty_slices():
    assert rank([0.1, 0.5, float("nan"), 0.3], corrected=[1]) == [3, 0]
    assert rank([0.2, 0.2, 0.1]) == [0, 1, 2]  # ties in slice order
    assert unscored([0.1, float("nan"), 0.3, float("nan")]) == 2 and unscored([0.1]) == 0


def test_the_uncertainty_map_holds_each_predicted_slice():
    probability = np.linspace(0, 1, 12, dtype=np.float32).reshape(1, 3, 4)
    fov = np.ones((1, 3, 4), bool)
    fov[0, 0] = False
    shown = UncertaintyMap((3, 3, 4, 1), threshold=0.5)
    assert shown.planes.shape == (3, 3, 4) and shown.planes.dtype == np.float32
    mask = (probability > 0.5).astype(np.uint8)
    shown.add(0, PipelineResult(probabilities=probability, mask=mask))
    shown.add(1, None)  # a slice without image (or predicted in blocks): left at 0
    shown.add(2, PipelineResult(probabilities=probability, mask=mask, fov=fov))
    np.testing.assert_array_equal(shown.planes[0], pixel_uncertainty(probability[0], 0.5))
    assert not shown.planes[1].any()
    np.testing.assert_array_equal(shown.planes[2], pixel_uncertainty(probability[0], 0.5, fov[0]))


@pytest.fixture(scope="module")
def blurred_stack(isbi_stack):
    """Four real ISBI slices (256²); slice 2 strongly blurred: the model must hesitate there."""
    slices = np.ascontiguousarray(isbi_stack.images[25:29, :256, :256, 0]).astype(np.float32)
    slices[2] = ndimage.gaussian_filter(slices[2], 4)
    return slices.astype(np.uint8)


@pytest.mark.parametrize("method", METHODS)
def test_the_blurred_slice_comes_first(blurred_stack, method):
    pipeline = Pipeline(load_checkpoint("em-membranes"), PredictSettings(device="cpu"))
    seen = []
    result = suggest(pipeline, blurred_stack[..., None], corrected=[0], method=method,
                     on_slice=lambda z, u, result: seen.append(z))
    assert seen == [0, 1, 2, 3] and len(result.uncertainty) == 4
    assert result.order[0] == 2 and 0 not in result.order and sorted(result.order) == [1, 2, 3]


def test_cli_suggest_streams_a_zarr_volume_and_prints_json(blurred_stack, tmp_path, capsys):
    store = tmp_path / "stack.zarr"
    zarr.open_array(str(store), mode="w", shape=blurred_stack.shape, chunks=(1, 256, 256),
                    dtype=blurred_stack.dtype)[:] = blurred_stack
    assert main(["suggest", str(store), "--model", "em-membranes", "--device", "cpu", "--corrected", "3",
                 "--top", "2", "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    answer = json.loads(out[-1])
    assert len(answer["uncertainty"]) == 4 and answer["order"][0] == 2 and 3 not in answer["order"]
    assert "slice 2:" in out[1]
    tif = tmp_path / "stack.tif"
    tifffile.imwrite(tif, blurred_stack, photometric="minisblack")
    assert main(["suggest", str(tif), "--model", "em-membranes", "--device", "cpu", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["uncertainty"] == pytest.approx(
        answer["uncertainty"], abs=1e-6)
    assert main(["suggest", str(tif), "--model", "em-membranes", "--corrected", "9"]) == 2  # no slice 9
