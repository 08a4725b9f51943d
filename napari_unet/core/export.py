"""Write a model as a bioimage.io package (zip, spec 0.5) that ilastik, deepImageJ, Fiji,
QuPath and other napari plugins run (`core.bmz` reads it back).

A package holds:

- ``pytorch_state_dict`` weights (architecture ``napari_unet.core.model.UNet`` with the
  UNetConfig as kwargs) and ``torchscript`` weights traced from them;
- a test input (a real image, raw values) and the expected output, which
  ``bioimageio.core.test_model`` reproduces. The output is predicted by `core.pipeline`
  with the stages a package can describe: our percentile normalisation (as
  ``scale_range`` + ``clip``) and one pass of the network with its ``sigmoid``
  (`as_packaged`). The stages it cannot describe (test-time flips, the sub-pixel output
  shift of `core.calibration`, resampling to the model's pixel size, the fundus colour
  standardisation) are listed in the package's documentation, so other tools show the
  probability without them;
- the threshold and everything else napari-unet knows of the model in
  ``config.napari_unet``, so napari-unet predicts with all of it after an import;
- a cover made from the data, the model card as documentation, authors, licence, citation.

Needs the optional extra: ``pip install "napari-unet[bioimageio]"``.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .bmz import ARCHITECTURE, bioimageio_spec
from .checkpoint import Checkpoint
from .description import ModelDescription
from .files import BUILTIN_DIR, BUILTIN_MODELS
from .pipeline import Pipeline
from .settings import PredictSettings

TEST_SIZE = 256  # test image edge (cropped from the sample); bioimage.io runs it at once
MIN_SIZE = 64  # smallest input edge declared in the package
DEFAULT_LICENSE = "BSD-3-Clause"  # napari-unet's own licence (SPDX id)
U_NET_PAPER = ("Ronneberger, Fischer, Brox. U-Net: Convolutional Networks for Biomedical Image "
               "Segmentation. MICCAI 2015.", "10.1007/978-3-319-24574-4_28")


def as_packaged(checkpoint: Checkpoint, size: int) -> Pipeline:
    """The pipeline as a bioimage.io package describes the model: normalisation, then the
    network on the whole (``size`` x ``size``) image at once, with no test-time flips, no
    output shift, no resampling or colour standardisation, and no FOV."""
    info = ModelDescription.from_metadata(checkpoint.metadata)
    info.test_time_flips, info.output_shift_px, info.fundus_reference = (), (0.0, 0.0), None
    info.tile_size, info.tile_margin = size, 0
    described = Checkpoint(checkpoint.model, info.to_metadata(), checkpoint.source)
    return Pipeline(described, PredictSettings(device="cpu", precision="float32", overlap=0.0, fov="none"))


def centre_crop(image: np.ndarray, multiple: int) -> np.ndarray:
    """The centre square (TEST_SIZE, or less, a multiple of ``multiple``) of one image:
    square, so the pipeline predicts it as one tile, as bioimage.io tools run it.

    Args:
        image: (Y, X, C) raw pixels.
    """
    size = [max(MIN_SIZE, min(TEST_SIZE, *image.shape[:2]) // multiple * multiple)] * 2
    if any(n < s for n, s in zip(image.shape[:2], size)):
        raise ValueError(f"The sample image {image.shape[:2]} is smaller than {MIN_SIZE}x{MIN_SIZE}: "
                         "choose a larger one.")
    top, left = ((n - s) // 2 for n, s in zip(image.shape[:2], size))
    return image[top : top + size[0], left : left + size[1]]


def export_package(
    checkpoint: Checkpoint,
    out: str | Path,
    sample: np.ndarray,
    name: str | None = None,
    authors: list[str] | None = None,
    license: str = DEFAULT_LICENSE,
    description: str | None = None,
) -> Path:
    """Write ``checkpoint`` as a bioimage.io package (zip).

    Args:
        checkpoint: the model and its description (kept whole in ``config.napari_unet``).
        sample: (Y, X, C) raw image the model is meant for (its centre becomes the test
            input and the cover).
        authors: names (default: "napari-unet user"); license: an SPDX id (default:
            napari-unet's own, BSD-3-Clause).

    Returns:
        The zip's path.
    """
    sample = np.asarray(sample)
    if sample.shape[-1] != checkpoint.config.in_channels:  # before the model is moved or anything is made
        raise ValueError(f"The sample image has {sample.shape[-1]} channel(s) but the model takes "
                         f"{checkpoint.config.in_channels}: choose an image of the kind the model is for "
                         "(grey for EM, RGB for fundus).")
    spec, v = bioimageio_spec()
    model, config, meta = checkpoint.model.cpu().eval(), checkpoint.config, checkpoint.metadata
    norm = checkpoint.normalization
    crop = centre_crop(sample, config.size_multiple)
    raw = np.moveaxis(crop.astype(np.float32), -1, 0)[None]  # (1, C, Y, X)
    packaged = as_packaged(checkpoint, crop.shape[0])
    prepared = packaged.prepare(crop)  # the package's preprocessing: normalisation only
    normalized = np.moveaxis(prepared.image, -1, 0)[None]
    probability = packaged.infer(prepared.image[None])[:, None].astype(np.float32)  # one tile, sigmoid
    task = checkpoint.task
    info = ModelDescription.from_metadata(meta)
    name = name or info.name or Path(checkpoint.source).stem
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        np.save(folder / "test_input.npy", raw)
        np.save(folder / "test_output.npy", probability)
        torch.save({k: v_.detach().cpu().contiguous() for k, v_ in model.state_dict().items()}, folder / "weights.pt")
        with warnings.catch_warnings():  # shape checks are constant for sizes that are multiples
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.jit.trace(model, torch.from_numpy(normalized)).save(str(folder / "weights.torchscript"))
        view = normalized[0, 0] if config.in_channels == 1 else np.moveaxis(normalized[0], 0, -1)
        prob = probability[0, 0] if config.in_channels == 1 else np.repeat(probability[0, 0, ..., None], 3, -1)
        _png(np.concatenate([view, prob], axis=1), folder / "cover.png")
        _png(view, folder / "sample_input.png")
        _png(probability[0, 0], folder / "sample_output.png")
        (folder / "README.md").write_text(_documentation(checkpoint, name), encoding="utf-8")

        size = v.ParameterizedSize(min=MIN_SIZE, step=config.size_multiple)
        channels = ["raw"] if config.in_channels == 1 else ["red", "green", "blue"][: config.in_channels]
        y, x = v.AxisId("y"), v.AxisId("x")
        # The pixel size the model was trained at, where the metadata knows it (nm, (y, x)).
        pixel = info.pixel_size_nm
        scale = [{} if pixel is None else {"unit": "nanometer", "scale": float(p)} for p in (pixel or (1, 1))]
        inputs = v.InputTensorDescr(
            id=v.TensorId("raw"),
            axes=[v.BatchAxis(), v.ChannelAxis(channel_names=[v.Identifier(c) for c in channels]),
                  v.SpaceInputAxis(id=y, size=size, **scale[0]), v.SpaceInputAxis(id=x, size=size, **scale[1])],
            test_tensor=v.FileDescr(source=folder / "test_input.npy"),
            sample_tensor=v.FileDescr(source=folder / "sample_input.png"),
            data=v.IntervalOrRatioDataDescr(type="float32"),
            preprocessing=[  # = core.data.normalize: per image and channel, then clipped
                v.ScaleRangeDescr(kwargs=v.ScaleRangeKwargs(
                    axes=[y, x], min_percentile=float(norm["low"]), max_percentile=float(norm["high"]))),
                v.ClipDescr(kwargs=v.ClipKwargs(min=0.0, max=1.0)),
            ],
        )
        reference = v.TensorId("raw")
        outputs = v.OutputTensorDescr(
            id=v.TensorId("probability"),
            axes=[v.BatchAxis(), v.ChannelAxis(channel_names=[v.Identifier("membrane" if task == "em" else "vessel")]),
                  v.SpaceOutputAxis(id=y, size=v.SizeReference(tensor_id=reference, axis_id=y), **scale[0]),
                  v.SpaceOutputAxis(id=x, size=v.SizeReference(tensor_id=reference, axis_id=x), **scale[1])],
            test_tensor=v.FileDescr(source=folder / "test_output.npy"),
            sample_tensor=v.FileDescr(source=folder / "sample_output.png"),
            data=v.IntervalOrRatioDataDescr(type="float32"),
            postprocessing=[v.SigmoidDescr()],
        )
        torch_version = v.Version(torch.__version__.split("+")[0])
        weights = v.WeightsDescr(
            pytorch_state_dict=v.PytorchStateDictWeightsDescr(
                source=folder / "weights.pt",
                architecture=v.ArchitectureFromLibraryDescr(
                    import_from=ARCHITECTURE, callable=v.Identifier("UNet"), kwargs=config.to_dict()),
                pytorch_version=torch_version,
            ),
            torchscript=v.TorchscriptWeightsDescr(
                source=folder / "weights.torchscript", pytorch_version=torch_version, parent="pytorch_state_dict"),
        )
        tags = ["unet", "segmentation", "2d", "pytorch", "napari-unet"]
        tags += ["electron-microscopy", "membranes"] if task == "em" else ["fundus", "retina", "vessels"]
        descr = v.ModelDescr(
            name=name,
            description=description or info.description or _default_description(task),
            covers=[v.FileDescr(source=folder / "cover.png")],
            documentation=v.FileDescr(source=folder / "README.md"),
            authors=[v.Author(name=a) for a in (authors or ["napari-unet user"])],
            cite=[v.CiteEntry(text=U_NET_PAPER[0], doi=v.Doi(U_NET_PAPER[1]))],
            license=v.LicenseId(license),
            tags=tags,
            inputs=[inputs],
            outputs=[outputs],
            weights=weights,
            config=v.Config(napari_unet=meta),
        )
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        return Path(spec.save_bioimageio_package(descr, output_path=out))


def default_sample(task: str) -> np.ndarray:
    """A (Y, X, C) uint8 image of the shipped samples, for exports without data: the EM
    sample's first slice, or the fundus sample."""
    from .samples import em_sample, fundus_sample

    if task == "em":
        return em_sample()[0][0][..., None]
    return fundus_sample()[0]


def _png(image: np.ndarray, path: Path) -> None:
    Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8)).save(path)


def _default_description(task: str) -> str:
    what = "neuronal membranes in electron microscopy" if task == "em" else "vessels in retinal fundus photographs"
    return f"U-Net for {what}, trained or fine-tuned with napari-unet."


def _documentation(checkpoint: Checkpoint, name: str) -> str:
    info = ModelDescription.from_metadata(checkpoint.metadata)
    card = next((BUILTIN_DIR / f.replace(".pt", ".md") for n, f in BUILTIN_MODELS.items()
                 if checkpoint.source == n), None)
    history = "\n".join(f"- {h.get('date', '')}: {h.get('steps', '?')} steps on slices {h.get('train_slices')}"
                        for h in info.history)
    text = (
        f"# {name}\n\n{_default_description(checkpoint.task)}\n\n"
        f"## Input and output\nInput (batch, channel, y, x) float32, y and x multiples of "
        f"{checkpoint.config.size_multiple}; per image and channel, the {info.normalization.get('low')}th-"
        f"{info.normalization.get('high')}th percentiles are scaled to 0-1 and clipped. Output: the "
        f"probability of the structure; napari-unet draws the mask at > {info.threshold}.\n"
        + _not_described(info)
        + f"\n## Training history\n{history or '- (none recorded)'}\n\n"
        "# Validation\nSee the scores of the model card below, and napari-unet's benchmarks.\n\n"
    )
    if card is not None and card.is_file():
        text += card.read_text(encoding="utf-8")
    return text


def _not_described(info: ModelDescription) -> str:
    """What napari-unet does around the network that a package cannot describe."""
    steps = []
    if info.test_time_flips:
        steps.append("averages the prediction with its mirror image (test-time flips)")
    if any(info.output_shift_px):
        steps.append(f"moves the probability by {tuple(info.output_shift_px)} px (the training labels' offset)")
    if info.pixel_size_nm is not None:
        steps.append(f"resamples images of another pixel size to {tuple(info.pixel_size_nm)} nm")
    if info.fundus_reference is not None:
        steps.append("resamples photographs to the training field of view and matches their colour to it")
    if not steps:
        return ""
    return ("napari-unet also " + "; ".join(steps) + ": this package does not describe it, so other tools give "
            "slightly different masks.\n")
