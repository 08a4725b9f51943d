"""The same files give the same scores in `napari-unet evaluate` and the Evaluate widget."""

import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_unet.cli import main

from .conftest import wait_for


@pytest.mark.parametrize("task", ["fundus", "em"])
def test_evaluate_widget_and_cli_agree(make_napari_viewer, qtbot, drive_dir, tmp_path, capsys, task):
    """Real DRIVE files: truth in 0/1/2 (2 = a band the annotator left out), a FOV mask,
    and a prediction mask; both entry points must ignore label 2 the same way."""
    manual = np.asarray(Image.open(drive_dir / "test" / "1st_manual" / "01_manual1.gif")) > 0
    fov = np.asarray(Image.open(drive_dir / "test" / "mask" / "01_test_mask.gif")) > 0
    green = np.asarray(Image.open(drive_dir / "test" / "images" / "01_test.tif"))[..., 1].astype(float)
    truth = manual.astype(np.uint8)
    truth[200:260] = 2  # not annotated: must not be scored
    prediction = (green < np.percentile(green[fov], 15)).astype(np.uint8)
    files = {"truth": tmp_path / "01_truth.tif", "fov": tmp_path / "01_fov.tif",
             "pred": tmp_path / "01_pred_labels.tif"}
    tifffile.imwrite(files["truth"], truth)
    tifffile.imwrite(files["fov"], fov.astype(np.uint8) * 255)
    tifffile.imwrite(files["pred"], prediction)

    assert main(["evaluate", "--pred", str(files["pred"]), "--truth", str(files["truth"]),
                 "--fov", str(files["fov"]), "--task", task, "--json"]) == 0
    cli = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    viewer = make_napari_viewer()
    layers = {key: viewer.open(str(path), plugin="napari-unet")[0] for key, path in files.items()}
    evaluate = viewer.window.add_plugin_dock_widget("napari-unet", "Evaluate")[1]
    evaluate.prediction.value, evaluate.truth.value = layers["pred"], layers["truth"]
    evaluate.fov.value, evaluate.task.value = layers["fov"], task
    wait_for(qtbot, evaluate.run())
    shown = dict(item.split(" ") for item in evaluate.status.value.removeprefix("Overall: ").split(", "))
    assert set(shown) == set(cli)
    for key, value in cli.items():
        assert shown[key] == f"{value:.4f}", key
    # Label 2 really is left out: scoring it as structure would change Dice.
    assert main(["evaluate", "--pred", str(files["pred"]), "--truth", str(files["truth"]), "--task", task,
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["dice"] != pytest.approx(cli["dice"])


def test_fine_tune_widget_and_cli_train_the_same_model(widgets, qtbot, isbi_folder, tiny_em, tmp_path):
    """The Fine-tune widget and `napari-unet train --from` share one recipe: the same image,
    corrected slices, edits and starting model give the same weights."""
    import torch

    from napari_unet._widgets._session import get_session
    from napari_unet.core.checkpoint import load_checkpoint

    from .conftest import paint_square

    viewer, predict, finetune = widgets["viewer"], widgets["predict"], widgets["finetune"]
    widgets["load"].path.value = str(isbi_folder)
    image, truth = widgets["load"].load()
    predict.model.value = "file"
    predict.checkpoint.value = str(tiny_em)
    wait_for(qtbot, predict.predict())
    labels = viewer.layers[f"{image.name} prediction"]
    labels.data[2] = truth.data[2]  # slice 2 fully corrected (pasted), slice 1 painted
    paint_square(labels, 2, 50, 50)
    paint_square(labels, 1, 100, 100)
    tracker = get_session(viewer).tracker(labels)
    assert tracker.corrected == {1, 2}
    files = {"images": tmp_path / "images.tif", "labels": tmp_path / "labels.tif", "edited": tmp_path / "edited.tif"}
    tifffile.imwrite(files["images"], np.asarray(image.data), photometric="minisblack")
    tifffile.imwrite(files["labels"], np.asarray(labels.data), photometric="minisblack")
    tifffile.imwrite(files["edited"], tracker.edited_mask().astype(np.uint8), photometric="minisblack")

    finetune.steps.value = 5
    wait_for(qtbot, finetune.start())
    gui = load_checkpoint(get_session(viewer).fine_tuned_path)

    out = tmp_path / "cli.pt"
    assert main(["train", "--images", str(files["images"]), "--labels", str(files["labels"]), "--from", str(tiny_em),
                 "--slices", "1", "2", "--edited", str(files["edited"]), "--steps", "5", "--device", "cpu",
                 "--out", str(out)]) == 0
    cli = load_checkpoint(out)
    gui_weights, cli_weights = gui.model.state_dict(), cli.model.state_dict()
    assert all(torch.equal(gui_weights[k], cli_weights[k]) for k in gui_weights)
    gui_record, cli_record = gui.metadata["history"][-1], cli.metadata["history"][-1]
    for key in ("train_slices", "val_slices", "corrected_slices", "data_hash", "steps"):
        assert gui_record[key] == cli_record[key], key
    assert gui.metadata["threshold"] == cli.metadata["threshold"]
    # The same decision, from the same core rule: kept or refused, on the same held-out scores.
    gui_report, cli_report = gui_record["fine_tune"], cli_record["fine_tune"]
    assert gui_report["outcome"] == cli_report["outcome"] and gui_report["folds"] == cli_report["folds"]
