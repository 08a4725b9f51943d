import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_unet.core.augment import Augmentation, augment, crop_around
from napari_unet.core.data import (
    DataError,
    as_stack,
    detect_layout,
    load_dataset,
    load_pairs,
    normalize,
    read_stack,
)
from napari_unet.core.labels import IGNORE, labels_from_array


def test_isbi_layout_converts_labels(isbi_dir, isbi_stack):
    assert detect_layout(isbi_dir) == "isbi"
    assert isbi_stack.images.shape == (30, 512, 512, 1)
    raw = tifffile.imread(isbi_dir / "train-labels.tif")
    # ISBI: 0 = membrane -> structure 1; 255 = cell -> background 0.
    np.testing.assert_array_equal(isbi_stack.labels, (raw == 0).astype(np.uint8))
    assert 0.20 < isbi_stack.labels.mean() < 0.24  # 21.96 % membrane (data README)


def test_isbi_png_layout_matches_tif(isbi_dir, isbi_stack, tmp_path):
    # Build a small train/image + train/label folder from the real PNGs (name order 2 < 10).
    for sub in ("image", "label"):
        (tmp_path / "train" / sub).mkdir(parents=True)
        for n in (2, 10):
            (tmp_path / "train" / sub / f"{n}.png").write_bytes((isbi_dir / "train" / sub / f"{n}.png").read_bytes())
    stack = load_dataset(tmp_path)
    assert stack.layout == "isbi-png"
    np.testing.assert_array_equal(stack.images[:, ..., 0], isbi_stack.images[[2, 10], ..., 0])
    np.testing.assert_array_equal(stack.labels, isbi_stack.labels[[2, 10]])


def test_drive_layout_with_fov(drive_dir):
    stack = load_dataset(drive_dir / "test")
    assert stack.layout == "drive" and stack.kind == "fundus"
    assert stack.images.shape == (20, 584, 565, 3)
    assert stack.fov.sum() == 4_538_143  # FOV pixels (data README)
    assert (stack.labels == 1).sum() == 577_649  # vessel pixels inside the FOV
    assert np.all(stack.labels[~stack.fov] == IGNORE)


def test_drive_root_asks_for_a_subset(drive_dir):
    with pytest.raises(DataError, match="open one of them"):
        load_dataset(drive_dir)


def test_as_stack_shapes():
    assert as_stack(np.zeros((5, 6))).shape == (1, 5, 6, 1)
    assert as_stack(np.zeros((5, 6, 3))).shape == (1, 5, 6, 3)
    assert as_stack(np.zeros((5, 6, 4))).shape == (1, 5, 6, 3)  # alpha dropped
    assert as_stack(np.zeros((7, 5, 6))).shape == (7, 5, 6, 1)
    assert as_stack(np.zeros((2, 5, 6, 3))).shape == (2, 5, 6, 3)
    with pytest.raises(DataError, match="2D image"):
        as_stack(np.zeros((2, 3, 4, 5, 6)))


def test_label_convention():
    np.testing.assert_array_equal(labels_from_array(np.array([0, 255, 255])), [0, 1, 1])
    np.testing.assert_array_equal(labels_from_array(np.array([0, 1, 2])), [0, 1, 2])  # already ours
    np.testing.assert_array_equal(labels_from_array(np.array([0, 255]), invert=True), [1, 0])


@pytest.mark.parametrize("dtype, scale", [(np.uint8, 255), (np.uint16, 65535), (np.float32, 1.0)])
def test_normalisation_same_for_all_dtypes(dtype, scale):
    rng = np.random.default_rng(0)
    base = rng.random((2, 40, 40, 1))
    normed = normalize((base * scale).astype(dtype))
    reference = normalize(base.astype(np.float64))
    assert normed.dtype == np.float32 and normed.min() >= 0 and normed.max() <= 1
    np.testing.assert_allclose(normed, reference, atol=0.01)


def test_read_folder_in_natural_order(tmp_path):
    for n in (10, 2, 1):
        Image.fromarray(np.full((4, 5), n, np.uint8)).save(tmp_path / f"{n}.png")
    np.testing.assert_array_equal(read_stack(tmp_path)[:, 0, 0], [1, 2, 10])


def test_bad_files_give_clear_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_stack(tmp_path / "missing.tif")
    corrupt = tmp_path / "corrupt.tif"
    corrupt.write_bytes(b"not a tif at all")
    with pytest.raises(DataError, match="corrupt"):
        read_stack(corrupt)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="unsupported"):
        read_stack(tmp_path / "notes.txt")


def test_labels_of_other_shape_or_empty(tmp_path):
    tifffile.imwrite(tmp_path / "img.tif", np.zeros((3, 20, 20), np.uint8), photometric="minisblack")
    tifffile.imwrite(tmp_path / "lbl.tif", np.zeros((3, 20, 21), np.uint8), photometric="minisblack")
    with pytest.raises(DataError, match="same size"):
        load_pairs(tmp_path / "img.tif", tmp_path / "lbl.tif")
    tifffile.imwrite(tmp_path / "empty.tif", np.zeros((3, 20, 20), np.uint8), photometric="minisblack")
    with pytest.raises(DataError, match="no foreground"):
        load_pairs(tmp_path / "img.tif", tmp_path / "empty.tif")


def test_augmentation_keeps_image_and_label_aligned():
    rng = np.random.default_rng(1)
    label = np.zeros((64, 64), np.uint8)
    label[20:40, 10:30] = 1
    image = label[..., None].astype(np.float32)
    aug = Augmentation(intensity=False, elastic_probability=1.0)
    for _ in range(10):
        out_image, out_label, weight = augment(image, label, rng, aug, weight=label.astype(np.float32))
        assert out_image.shape == (64, 64, 1) and out_label.dtype == np.uint8
        assert set(np.unique(out_label)) <= {0, 1}  # nearest neighbour for labels
        agreement = np.mean((out_image[..., 0] > 0.5) == (out_label == 1))
        assert agreement > 0.98
        assert np.mean((weight > 0.5) == (out_label == 1)) > 0.98  # weights move with labels


def test_intensity_augmentation_changes_only_the_image():
    rng = np.random.default_rng(2)
    image = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32, 1)
    label = np.zeros((32, 32), np.uint8)
    aug = Augmentation(flips=False, rotations=False, elastic=False)
    out, out_label, _ = augment(image, label, rng, aug)
    assert not np.allclose(out, image) and out.min() >= 0 and out.max() <= 1
    np.testing.assert_array_equal(out_label, label)


def test_camera_augmentation_shifts_each_channel_on_its_own():
    rng = np.random.default_rng(3)
    image = np.stack([np.linspace(0.2, 0.8, 48 * 48, dtype=np.float32).reshape(48, 48)] * 3, axis=-1)
    label = np.zeros((48, 48), np.uint8)
    aug = Augmentation(flips=False, rotations=False, elastic=False, intensity=False, camera=1.0)
    out, out_label, _ = augment(image, label, rng, aug)
    assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1
    means = out.reshape(-1, 3).mean(axis=0)
    assert np.ptp(means) > 0.01  # the channels were equal: now another colour balance
    np.testing.assert_array_equal(out_label, label)
    untouched, _, _ = augment(image, label, rng, Augmentation(flips=False, rotations=False, elastic=False,
                                                              intensity=False))
    np.testing.assert_array_equal(untouched, image)  # off by default


def test_crop_around_pads_small_images():
    rng = np.random.default_rng(0)
    image, label = np.ones((10, 12, 1), np.float32), np.ones((10, 12), np.uint8)
    crops = crop_around([image, label], 16, (5, 5), rng)
    assert crops[0].shape == (16, 16, 1) and crops[1].shape == (16, 16)


def test_crop_around_always_holds_its_centre():
    rng = np.random.default_rng(0)
    marked = np.zeros((300, 200), np.uint8)
    for centre in [(0, 0), (299, 199), (150, 3), (7, 100)]:
        marked[:] = 0
        marked[centre] = 1
        for _ in range(20):
            (crop,) = crop_around([marked], 64, centre, rng)
            assert crop.shape == (64, 64) and crop.sum() == 1


def test_shape_check_reads_well_with_the_callers_noun():
    """Callers name what they check ("labels", "--edited mask"): the sentence must read right for each."""
    from napari_unet.core.data import check_same_shape

    images = np.zeros((3, 20, 20, 1), np.uint8)
    for what in ("labels", "--edited mask"):
        with pytest.raises(DataError, match=rf"^The shape of the {what}, \(3, 20, 21\) \(Z, Y, X\), is not the "
                                            rf"images' \(3, 20, 20\): choose the {what} of these images"):
            check_same_shape(images, np.zeros((3, 20, 21), bool), what)
    check_same_shape(images, np.zeros((3, 20, 20), bool), "labels")  # the same shape passes


def test_folder_of_mixed_sizes_names_the_odd_image(tmp_path):
    for name, shape in (("1.png", (8, 8)), ("2.png", (8, 8)), ("3.png", (9, 8)), ("4.png", (8, 8))):
        Image.fromarray(np.zeros(shape, np.uint8)).save(tmp_path / name)
    with pytest.raises(DataError, match=r"differ in size \(3.png is \(9, 8\), 1.png is \(8, 8\)\)"):
        read_stack(tmp_path)


def test_reading_errors_say_what_to_do(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no tif/png/jpg/gif images: choose the folder that holds them"):
        read_stack(tmp_path / "empty")
    with pytest.raises(DataError, match=r"shape \(2, 3, 4, 5, 6\): save one time point and one channel"):
        as_stack(np.zeros((2, 3, 4, 5, 6)))
    tifffile.imwrite(tmp_path / "img.tif", np.zeros((2, 20, 20), np.uint8), photometric="minisblack")
    tifffile.imwrite(tmp_path / "empty.tif", np.zeros((2, 20, 20), np.uint8), photometric="minisblack")
    with pytest.raises(DataError, match=r"empty.tif has no foreground .*choose the labels of these images.*"
                                        r"invert them \(--invert-labels\)"):
        load_pairs(tmp_path / "img.tif", tmp_path / "empty.tif")
    with pytest.raises(DataError, match=r"unknown normalisation \('zscore'\).*update napari-unet or choose"):
        normalize(np.ones((1, 4, 4, 1)), {"method": "zscore"})


def test_refused_saves_and_exports_check_before_they_write(tmp_path):
    """A check that refuses the input runs before anything is written or moved."""
    from napari_unet.core.checkpoint import default_metadata
    from napari_unet.core.corrections import CorrectionStore

    store = CorrectionStore(tmp_path / "corrections")
    with pytest.raises(ValueError, match=r"do not fit the labels \(2, 16, 16\), so nothing was saved"):
        store.save(np.zeros((2, 16, 16), np.uint8), [], [], edited_pixels=np.zeros((16, 16), bool))
    assert not (tmp_path / "corrections").exists()
    with pytest.raises(ValueError, match="Unknown task 'cells': choose 'em'"):
        default_metadata("cells")

    from napari_unet.core.checkpoint import Checkpoint
    from napari_unet.core.export import export_package
    from napari_unet.core.model import UNet, UNetConfig

    grey = Checkpoint(UNet(UNetConfig(in_channels=1, base_width=4, depth=1)), default_metadata("em"), "grey.pt")
    out = tmp_path / "model.zip"
    with pytest.raises(ValueError, match=r"3 channel\(s\) but the model takes 1: choose an image of the kind"):
        export_package(grey, out, np.zeros((96, 96, 3), np.uint8))  # refused even without the bioimageio extra
    assert not out.exists()
