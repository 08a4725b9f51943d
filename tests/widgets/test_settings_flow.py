"""Predict's settings reach the other widgets whole: what the fine-tune scores is what
Predict showed, also at a pixel size other than the model's."""

import numpy as np
import pytest
import torch

from napari_unet._widgets._session import get_session
from napari_unet.core.checkpoint import default_metadata, load_checkpoint, save_checkpoint
from napari_unet.core.finetune import FineTuneReport
from napari_unet.core.model import UNet, UNetConfig

from .conftest import paint_square, wait_for


def test_fine_tune_scores_the_mask_predict_showed_at_another_pixel_size(widgets, qtbot, isbi_folder, tmp_path):
    """Predict at 6 nm with a model of 4 nm pixels (it resamples the slices by 1.5), then
    Fine-tune: its starting model's score on a corrected slice is Evaluate's score of the
    mask Predict showed there (the fine-tune predicted at the same pixel size; ignoring it,
    as it did before, it scored 0.224 where Predict's mask scores 0.184)."""
    torch.manual_seed(0)
    model = UNet(UNetConfig(base_width=4, depth=2))
    with torch.no_grad():  # its raw output centres on 0.4932: about half the pixels are membrane,
        model.outc.conv.bias += 0.0272  # and which ones depends on the scale the slices are shown at
    checkpoint = save_checkpoint(tmp_path / "tiny_4nm.pt", model,
                                 default_metadata("em", tile_size=128, pixel_size_nm=[4.0, 4.0]))
    viewer = widgets["viewer"]
    widgets["load"].path.value = str(isbi_folder)
    image, truth = widgets["load"].load()
    predict = widgets["predict"]
    predict.model.value = "file"
    predict.checkpoint.value = str(checkpoint)
    predict.pixel_size.value = 6.0
    wait_for(qtbot, predict.predict())
    assert "Resampled from 6 nm" in predict.status.value, predict.status.value
    labels = viewer.layers[f"{image.name} prediction"]
    shown = viewer.add_labels(np.array(labels.data), name="as Predict showed it")

    for z, (y, x) in ((1, (100, 100)), (2, (200, 200))):  # slices 1 and 2 corrected with the truth
        paint_square(labels, z, y, x)
        labels.data[z] = truth.data[z]
    labels.refresh()
    finetune = widgets["finetune"]
    finetune.image.value, finetune.corrected_labels.value, finetune.steps.value = image, labels, 5
    wait_for(qtbot, finetune.start(), 300)
    assert "failed" not in finetune.status.value, finetune.status.value
    record = load_checkpoint(get_session(viewer).fine_tuned_path).metadata["history"][-1]
    report = FineTuneReport.from_dict(record["fine_tune"])
    assert report.pixel_size == 6.0
    # The threshold search kept the model's (measured): the first fold's baseline is the
    # starting model as Predict used it.
    assert report.calibration is not None and report.calibration.outcome != "gain"
    assert report.folds[0].held_out == [1]

    evaluate = widgets["evaluate"]
    evaluate.prediction.value, evaluate.truth.value, evaluate.task.value = shown, labels, "em"
    wait_for(qtbot, evaluate.run())
    headers = [evaluate.table.horizontalHeaderItem(c).text() for c in range(evaluate.table.columnCount())]
    assert evaluate.table.verticalHeaderItem(1).text() == "slice 1"
    evaluated = float(evaluate.table.item(1, headers.index("dice")).text())
    assert evaluated > 0.1  # measured 0.184: a mask to compare, not an empty one
    assert report.folds[0].start_dice == pytest.approx(evaluated, abs=1.5e-4)
