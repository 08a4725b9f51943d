"""bioimage.io packages: exports pass bioimage.io's own test and come back identical."""

import io
import zipfile

import numpy as np
import pytest
import tifffile
import torch

pytest.importorskip("bioimageio.core",
                    reason='the bioimageio extra is not installed: pip install "napari-unet[bioimageio]"')

from bioimageio.core import test_model as bioimageio_test  # noqa: E402

from napari_unet.cli import main  # noqa: E402
from napari_unet.core.checkpoint import Checkpoint, CheckpointError, load_checkpoint  # noqa: E402
from napari_unet.core.export import as_packaged, centre_crop, export_package  # noqa: E402
from napari_unet.core.finetune import FineTune, FineTuneOptions  # noqa: E402
from napari_unet.core.pipeline import predict  # noqa: E402


def _passes(package) -> None:
    summary = bioimageio_test(package)
    assert summary.status == "passed", summary.format()


def _same_masks(original: Checkpoint, package, images: np.ndarray) -> None:
    back = load_checkpoint(package)
    assert back.metadata["threshold"] == original.metadata["threshold"]
    before = predict(original, images, device="cpu").mask  # each at its model's threshold
    after = predict(back, images, device="cpu").mask
    np.testing.assert_array_equal(before, after)


def test_builtin_em_model_exports_and_round_trips(isbi_stack, tmp_path):
    original = load_checkpoint("em-membranes")
    package = export_package(original, tmp_path / "em.zip", isbi_stack.images[0])
    _passes(package)
    _same_masks(original, package, isbi_stack.images[25:27, :256, :256])
    names = zipfile.ZipFile(package).namelist()
    assert {"rdf.yaml", "weights.pt", "weights.torchscript", "cover.png", "README.md"} <= set(names)


def test_fine_tuned_model_exports_and_round_trips(isbi_stack, tmp_path):
    original = load_checkpoint("em-membranes")
    images, labels = isbi_stack.images[20:22, :128, :128], isbi_stack.labels[20:22, :128, :128]
    # Unchecked, so the trained model is kept whatever 3 steps do: the package holds new weights.
    options = FineTuneOptions(steps=3, device="cpu", recipe={"crop_size": 64, "batch_size": 2}, verify=False)
    run = FineTune(original, images, labels, [0, 1], options=options)
    list(run.run())
    report = run.result.report
    assert report.outcome == "unverified" and report.kept and report.trained and report.steps == 3
    start = original.model.state_dict()
    assert any(not torch.equal(start[k], v) for k, v in run.result.model.state_dict().items())
    tuned = Checkpoint(run.result.model, {**run.result.metadata, "pixel_size_nm": [4.0, 4.0]}, "my fine-tune")
    package = export_package(tuned, tmp_path / "tuned.zip", isbi_stack.images[5], name="my fine-tune",
                             authors=["A. Biologist", "B. Engineer"], license="CC-BY-4.0")
    _passes(package)
    rdf = zipfile.ZipFile(package).read("rdf.yaml").decode()
    assert "nanometer" in rdf and "A. Biologist" in rdf and "CC-BY-4.0" in rdf
    _same_masks(tuned, package, isbi_stack.images[25:26, :256, :256])
    assert load_checkpoint(package).metadata["history"] == tuned.metadata["history"]


def test_fundus_model_exports(drive_dir, tmp_path):
    original = load_checkpoint("fundus-vessels")
    image = tifffile.imread(drive_dir / "test" / "images" / "01_test.tif")
    package = export_package(original, tmp_path / "fundus.zip", image)
    _passes(package)  # bioimage.io's own runner reproduces the test output the pipeline made
    _same_masks(original, package, image[None, 150:406, 150:406])
    # The test output is the pipeline's, restricted to what a package describes.
    with zipfile.ZipFile(package) as archive:
        expected = np.load(io.BytesIO(archive.read("test_output.npy")))
        readme = archive.read("README.md").decode()
    crop = centre_crop(image, original.config.size_multiple)
    packaged = as_packaged(original, crop.shape[0])
    np.testing.assert_allclose(expected[0, 0], packaged.infer(packaged.prepare(crop).image[None])[0], atol=1e-6)
    assert "test-time flips" in readme and "matches their colour" in readme  # what other tools leave out


def test_other_packages_are_refused_without_running_their_code(isbi_stack, tmp_path):
    package = export_package(load_checkpoint("em-membranes"), tmp_path / "em.zip", isbi_stack.images[0])
    foreign = tmp_path / "foreign.zip"
    with zipfile.ZipFile(package) as source, zipfile.ZipFile(foreign, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename == "rdf.yaml":  # another library's architecture
                data = data.replace(b"napari_unet.core.model", b"someone_else.models")
            target.writestr(item, data)
    with pytest.raises(CheckpointError, match="not a napari-unet export"):
        load_checkpoint(foreign)
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK not really a zip")
    with pytest.raises(CheckpointError, match="not a readable bioimage.io model package"):
        load_checkpoint(broken)


def test_cli_exports_and_predicts_with_a_package(isbi_stack, tmp_path, capsys):
    sample = tmp_path / "slice.tif"
    tifffile.imwrite(sample, isbi_stack.images[3, ..., 0])
    package = tmp_path / "em.zip"
    assert main(["export", "--model", "em-membranes", "--out", str(package), "--sample", str(sample),
                 "--author", "A. Biologist"]) == 0
    assert str(package) in capsys.readouterr().out
    assert main(["export", "--model", "em-membranes", "--out", str(package)]) == 2  # never overwritten silently
    assert "--force" in capsys.readouterr().err
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, isbi_stack.images[25:27, :128, :128, 0])
    assert main(["predict", str(stack), "--model", str(package), "--out", str(tmp_path / "mask.tif"),
                 "--device", "cpu"]) == 0
    assert tifffile.imread(tmp_path / "mask.tif").shape == (2, 128, 128)
