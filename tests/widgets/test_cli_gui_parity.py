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
    files = {"truth": tmp_path / "01_truth.tif", "fov": tmp_path / "01_fov.tif", "pred": tmp_path / "01_pred_labels.tif"}
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
