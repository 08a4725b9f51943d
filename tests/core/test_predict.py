import numpy as np
import pytest
import torch

from napari_unet.core.checkpoint import Checkpoint, default_metadata
from napari_unet.core.data import DataError
from napari_unet.core.model import UNet, UNetConfig
from napari_unet.core.pipeline import PIXEL_RATIO_LIMITS, RESAMPLE_SKIP, Pipeline, predict
from napari_unet.core.predict import (
    PredictionCancelled,
    TileGrid,
    blend_tiles,
    blend_window,
    resolve_device,
    retry_out_of_memory,
    sliding_window,
)
from napari_unet.core.settings import PredictSettings


def plus_one(batch: torch.Tensor) -> torch.Tensor:
    return batch + 1


@pytest.mark.parametrize("shape", [(1, 37, 53), (3, 100, 71), (1, 5, 300), (2, 256, 256)])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.37])
@pytest.mark.parametrize("blend", ["gaussian", "linear", "constant"])
def test_tiling_is_exact(shape, overlap, blend):
    """Like MONAI: a network returning input + 1 must come out exactly so after tiling."""
    image = np.random.default_rng(0).random(shape, dtype=np.float32)
    out = sliding_window(image, plus_one, tile=32, overlap=overlap, batch_size=3, blend=blend)
    assert out.shape == shape
    np.testing.assert_allclose(out, image + 1, rtol=0, atol=1e-5)


def test_tiles_are_blended_not_cut():
    """A predictor that answers the tile's own mean: blending leaves no hard seam."""
    image = np.tile(np.linspace(0, 1, 200, dtype=np.float32), (1, 200, 1))
    out = sliding_window(image, lambda b: b.mean(dim=(2, 3), keepdim=True).expand_as(b), tile=64, overlap=0.5)
    jumps = np.abs(np.diff(out[0], axis=1)).max()
    assert jumps < 0.05


def test_blend_window_never_zero():
    for mode in ("gaussian", "linear", "constant"):
        window = blend_window(16, mode)
        assert window.shape == (16, 16) and window.min() > 0 and window.max() == 1
    with pytest.raises(ValueError, match="gaussian"):
        blend_window(16, "cubic")


def test_progress_and_cancel():
    image = np.zeros((1, 100, 100), np.float32)
    calls = []
    sliding_window(image, plus_one, tile=32, overlap=0.25, batch_size=2, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1][0] == calls[-1][1] and len(calls) > 1
    with pytest.raises(PredictionCancelled):
        sliding_window(image, plus_one, tile=32, cancel=lambda: True)


def test_out_of_memory_retries_with_smaller_batch_then_tile():
    seen = []

    def fussy(batch: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(batch.shape))
        if batch.shape[0] > 1 or batch.shape[-1] > 64:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return batch + 1

    image = np.random.default_rng(0).random((1, 300, 300), dtype=np.float32)
    out, tile, batch = retry_out_of_memory(lambda tile, batch: sliding_window(image, fussy, tile, batch_size=batch),
                                           tile=128, batch_size=4, multiple=16)
    assert (tile, batch) == (64, 1)
    np.testing.assert_allclose(out, image + 1, atol=1e-5)
    assert seen[0] == (4, 1, 128, 128)  # it really started big


def test_other_errors_are_not_swallowed():
    def broken(batch):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        retry_out_of_memory(lambda tile, batch: sliding_window(np.zeros((1, 40, 40), np.float32), broken, tile,
                                                               batch_size=batch), tile=32, batch_size=2)


def test_the_tile_stays_when_asked_and_the_message_says_what_to_do():
    def always(batch):
        raise torch.OutOfMemoryError("CUDA out of memory.")

    with pytest.raises(MemoryError, match="close other GPU programs or use device 'cpu'"):
        retry_out_of_memory(lambda tile, batch: sliding_window(np.zeros((1, 90, 90), np.float32), always, tile,
                                                               batch_size=batch), tile=64, batch_size=2,
                            shrink_tile=False)


def _tile_mean(batch: torch.Tensor) -> torch.Tensor:
    """A predictor whose output depends on the whole tile (unlike input + 1)."""
    return batch * batch.mean(dim=(2, 3), keepdim=True) + torch.flip(batch, [3]) * 0.1


@pytest.mark.parametrize("shape", [(2, 150, 190), (1, 40, 23)])
@pytest.mark.parametrize("passes", [[()], [(), (0,), (1,)]])
def test_a_region_gets_what_the_whole_slice_gives_it(shape, passes):
    """The one tiling engine: any region of a slice (a block, a montage region) equals the
    same crop of the whole slice's prediction, with test-time flips too, and with a tile
    larger than the slice (mirrored further at its end)."""
    images = np.random.default_rng(3).random((shape[0], 2, *shape[1:]), dtype=np.float32)
    grid = TileGrid.of(*shape[1:], tile=48, overlap=0.3)
    whole = blend_tiles(images, grid, (0, shape[1], 0, shape[2]), _tile_mean, passes, batch_size=5).numpy()
    for region in [(0, 17, 0, 23), (9, shape[1], 5, shape[2] - 3), (shape[1] // 2, shape[1], 0, shape[2])]:
        part = blend_tiles(images, grid, region, _tile_mean, passes, batch_size=2).numpy()
        y0, y1, x0, x1 = region
        np.testing.assert_allclose(part, whole[:, :, y0:y1, x0:x1], rtol=0, atol=1e-6)


def test_a_flip_pass_is_the_flipped_slices_prediction_flipped_back():
    """Each test-time pass predicts the flipped slice's own grid (as if the user had flipped it)."""
    image = np.random.default_rng(4).random((1, 1, 70, 45), dtype=np.float32)
    grid = TileGrid.of(70, 45, tile=32, overlap=0.25)
    flipped = blend_tiles(image, grid, (0, 70, 0, 45), _tile_mean, [(1,)]).numpy()
    by_hand = sliding_window(np.ascontiguousarray(image[0, :, :, ::-1]), _tile_mean, tile=32, overlap=0.25)
    np.testing.assert_allclose(flipped[0], by_hand[:, :, ::-1], rtol=0, atol=1e-6)


def test_devices():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="No CUDA GPU"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="Unknown device"):
        resolve_device("tpu")


def _checkpoint(channels=1):
    torch.manual_seed(0)
    model = UNet(UNetConfig(in_channels=channels, base_width=4, depth=2)).eval()
    return Checkpoint(model, default_metadata("em"), "test")


def test_predict_shapes_and_range():
    images = np.random.default_rng(0).integers(0, 255, (3, 45, 70, 1), dtype=np.uint8)
    # The tile is rounded up to a multiple of 2**depth.
    assert Pipeline(_checkpoint(), PredictSettings(tile=30, device="cpu")).tile == 32
    result = predict(_checkpoint(), images, tile=30, device="cpu")
    prob = result.probabilities
    assert prob.shape == (3, 45, 70) and prob.dtype == np.float32
    assert prob.min() >= 0 and prob.max() <= 1
    mask = result.mask  # the model's threshold (0.5)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    np.testing.assert_array_equal(mask, (prob > 0.5).astype(np.uint8))
    with pytest.raises(ValueError, match="between 0 and 1"):
        Pipeline(_checkpoint(), PredictSettings(threshold=1.5, device="cpu"))


def test_pipeline_tiling_is_exact():
    """Like MONAI, through the whole pipeline: a network answering input + 1 (its logit)
    gives exactly sigmoid(normalised input + 1) after tiling, flips and stitching."""

    class PlusOne(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.unused = torch.nn.Parameter(torch.zeros(()))  # TilePredictor reads the dtype of one

        def forward(self, batch: torch.Tensor) -> torch.Tensor:
            return batch + 1

    from napari_unet.core.data import normalize

    ckpt = _checkpoint()
    ckpt.metadata["test_time_flips"] = ["x", "y"]
    images = np.random.default_rng(2).integers(0, 255, (2, 37, 101, 1), dtype=np.uint8)
    prob = Pipeline(ckpt, PredictSettings(tile=32, overlap=0.37, device="cpu"), model=PlusOne()).probabilities(images)
    expected = 1 / (1 + np.exp(-(normalize(images, ckpt.normalization)[..., 0] + 1)))
    np.testing.assert_allclose(prob, expected, rtol=0, atol=1e-5)


def test_predict_equals_whole_image_forward():
    """With a tile covering the image, tiling must equal one plain forward pass."""
    ckpt = _checkpoint()
    images = np.random.default_rng(1).random((1, 64, 64, 1)).astype(np.float32)
    prob = predict(ckpt, images, tile=64, overlap=0.0, device="cpu").probabilities
    from napari_unet.core.data import normalize

    x = torch.from_numpy(normalize(images)[0].transpose(2, 0, 1))[None]
    with torch.no_grad():
        # Same mirror margin as sliding_window (tile // 8 = 8) to compare like with like.
        padded = torch.from_numpy(np.pad(x.numpy(), [(0, 0), (0, 0), (8, 8), (8, 8)], mode="symmetric"))
        expected = torch.sigmoid(ckpt.model(padded))[0, 0, 8:-8, 8:-8].numpy()
    # Tiles of 64 over the padded 80x80 image overlap, so compare loosely in the centre.
    assert np.abs(prob[0, 16:48, 16:48] - expected[16:48, 16:48]).max() < 1e-4


def test_rgb_image_for_grey_model_is_refused():
    with pytest.raises(DataError, match="RGB"):
        predict(_checkpoint(1), np.zeros((1, 32, 32, 3), np.uint8), device="cpu")


def test_test_time_flips_average_the_mirror_images():
    """With flips stored in the metadata, the output is the mean over the flipped passes."""
    ckpt = _checkpoint()
    images = np.random.default_rng(3).integers(0, 255, (2, 40, 56, 1), dtype=np.uint8)
    plain = predict(ckpt, images, tile=64, device="cpu").probabilities
    mirrored = predict(ckpt, images[:, :, ::-1].copy(), tile=64, device="cpu").probabilities[:, :, ::-1]
    ckpt.metadata["test_time_flips"] = ["x"]
    calls = []
    both = predict(ckpt, images, tile=64, device="cpu", progress=lambda d, t: calls.append((d, t))).probabilities
    np.testing.assert_allclose(both, (plain + mirrored) / 2, atol=1e-5)
    assert calls[-1][0] == calls[-1][1] and all(t == calls[0][1] for _, t in calls)


def test_watershed_instances_split_cells_at_a_gap_in_their_membrane():
    """Two round cells whose shared membrane has a 3-pixel gap: connected components
    merge them into one; the seeded watershed gives two, with a border at the gap."""
    from napari_unet.core.predict import cell_instances

    yy, xx = np.mgrid[0:80, 0:140]
    membrane = np.ones((80, 140), np.uint8)
    for cx in (40, 100):
        membrane[(yy - 40) ** 2 + (xx - cx) ** 2 < 26**2] = 0  # two cell bodies
    membrane[:, 68:72] = 1  # the wall between them
    membrane[38:41, 60:80] = 0  # a gap through it, as a thin predicted membrane breaks
    components = cell_instances(membrane[None], "components")
    watershed = cell_instances(membrane[None], "watershed")
    assert len(np.unique(components[components > 0])) == 1
    assert len(np.unique(watershed[watershed > 0])) == 2
    assert (watershed[membrane[None] == 1] == 0).all()  # membranes stay 0
    ids = cell_instances(np.stack([membrane, membrane]))
    assert set(np.unique(ids[0])) & set(np.unique(ids[1])) == {0}  # ids unique across slices


def test_each_model_says_how_its_masks_become_cells():
    from napari_unet.core.checkpoint import load_checkpoint
    from napari_unet.core.predict import INSTANCE_METHODS

    model = UNet(UNetConfig(in_channels=1, base_width=4, depth=2))
    assert Checkpoint(model, default_metadata("em"), "new").info.instance_method == "watershed"
    assert Checkpoint(model, default_metadata("em", instance_method="components"), "x").info.instance_method \
        == "components"
    assert Checkpoint(model, default_metadata("em", instance_method="magic"), "x").info.instance_method == "watershed"
    # Chosen on ISBI slices 22-24 when the built-in model was packaged (benchmarks/train_builtin.py).
    assert load_checkpoint("em-membranes").metadata["instance_method"] in INSTANCE_METHODS


def test_images_at_another_pixel_size_are_resampled_to_the_models(isbi_stack):
    """A slice imaged at 2 nm predicted by a 4 nm model: resampled to 4 nm and back, it gives
    (nearly) the 4 nm prediction upsampled; as it is, the membranes look twice as thick."""
    from skimage.transform import rescale, resize

    from napari_unet.core.checkpoint import load_checkpoint
    from napari_unet.core.metrics import dice
    model = load_checkpoint("em-membranes")
    assert model.metadata["pixel_size_nm"] == [4.0, 4.0]

    def scale(pixel_size):
        return Pipeline(model, PredictSettings(device="cpu", pixel_size=pixel_size)).scale

    assert scale(None) is None and scale(4.1) is None  # within RESAMPLE_SKIP: predicted as it is
    assert RESAMPLE_SKIP[0] < 4.1 / 4.0 < RESAMPLE_SKIP[1]
    assert scale(2.0) == (0.5, 0.5)
    native = isbi_stack.images[25:26, :192, :192]
    fine = rescale(native[0, ..., 0].astype(np.float32), 2, order=1)[None, ..., None]  # 2 nm pixels
    reference = resize(predict(model, native, device="cpu").probabilities[0], fine.shape[1:3], order=1) > 0.5
    as_is = predict(model, fine, device="cpu").probabilities[0] > 0.5
    resampled = predict(model, fine, device="cpu", pixel_size=2.0).probabilities
    assert resampled.shape == fine.shape[:3] and resampled.dtype == np.float32
    assert dice(resampled[0] > 0.5, reference) > 0.95 > dice(as_is, reference)
    with pytest.raises(DataError, match="(?i)pixel size -1"):
        predict(model, native, device="cpu", pixel_size=-1.0)
    # Beyond PIXEL_RATIO_LIMITS a pixel size is a mistake (µm typed as nm), refused by name.
    too_big = 4.0 * PIXEL_RATIO_LIMITS[1] * 100
    with pytest.raises(DataError, match=f"Pixel size {too_big:g} nm"):
        Pipeline(model, PredictSettings(device="cpu", pixel_size=too_big))


def test_tiles_of_several_slices_share_batches_with_the_same_result():
    """One call over a stack (tiles of several slices per batch) equals slice by slice."""
    images = np.random.default_rng(5).random((5, 3, 70, 90), dtype=np.float32)
    together = sliding_window(images, plus_one, tile=32, overlap=0.25, batch_size=7)
    alone = np.stack([sliding_window(image, plus_one, tile=32, overlap=0.25, batch_size=7) for image in images])
    np.testing.assert_array_equal(together, alone)
    np.testing.assert_allclose(together, images + 1, atol=1e-5)


def test_precision_is_cast_once_on_a_copy_and_masks_agree_with_float32(isbi_stack):
    """bfloat16 (what GPUs get by default) changes few mask pixels of the built-in model,
    and the caller's model stays float32 where it was."""
    from napari_unet.core.checkpoint import load_checkpoint
    from napari_unet.core.predict import inference_dtype

    assert inference_dtype(torch.device("cpu")) == torch.float32
    with pytest.raises(ValueError, match="precision"):
        inference_dtype(torch.device("cpu"), "float8")
    model = load_checkpoint("em-membranes")
    images = isbi_stack.images[25:26, :256, :256]
    full = predict(model, images, device="cpu").probabilities
    half = predict(model, images, device="cpu", precision="bfloat16").probabilities
    assert next(model.model.parameters()).dtype == torch.float32
    threshold = model.metadata["threshold"]
    agreement = ((full > threshold) == (half > threshold)).mean()
    assert agreement > 0.99, agreement


def test_batch_size_follows_the_memory_a_tile_needs():
    from napari_unet.core.predict import TilePredictor

    small = TilePredictor(UNet(UNetConfig(base_width=4, depth=2)), "cpu")
    wide = TilePredictor(UNet(UNetConfig(base_width=64, depth=2)), "cpu")
    assert small.batch_size(256) == 4 and wide.batch_size(576) == 1
