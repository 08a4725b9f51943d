"""A montage corrected region by region: regions on the chunk grid, corrections saved by
chunk, predictions equal to the whole slice's, fine-tunes from the corrected chunks only."""

import json

import numpy as np
import pytest

import napari_unet.core.blocks as blocks
from napari_unet.core.checkpoint import load_checkpoint
from napari_unet.core.data import normalize
from napari_unet.core.finetune import FineTuneOptions, make_folds
from napari_unet.core.labels import IGNORE
from napari_unet.core.pipeline import Pipeline
from napari_unet.core.regions import (
    CHUNK,
    CONTEXT,
    MontageCorrections,
    chunks_touched,
    fine_tune_on_chunks,
    fold_order,
    region_around,
    region_chunks,
)
from napari_unet.core.settings import PredictSettings


@pytest.fixture(scope="module")
def montage(isbi_stack):
    """(1, 1536, 1536, 1) uint8: nine real ISBI slices (the last cropped) side by side."""
    tiles = [isbi_stack.images[z, :, :, 0] for z in range(9)]
    rows = [np.concatenate(tiles[r * 3 : r * 3 + 3], axis=1) for r in range(3)]
    return np.ascontiguousarray(np.concatenate(rows, axis=0)[:1536, :1536])[None, ..., None]


def test_regions_sit_on_the_chunk_grid_inside_the_slice():
    assert region_around((40000, 40000), (20000, 30000)) == (18944, 20992, 28672, 30720)
    assert region_around((40000, 40000), (10, 39990)) == (0, 2048, 37888, 39936)
    assert region_around((1000, 40000), (500, 100)) == (0, 1000, 0, 2048)  # smaller than a region: all of it
    assert region_chunks(2, (512, 1536, 0, 700)) == [(2, 1, 0), (2, 1, 1), (2, 2, 0), (2, 2, 1)]
    assert chunks_touched(np.array([0, 600]), np.array([5, 1100]), 1, (512, 0)) == {(1, 1, 0), (1, 2, 2)}


@pytest.mark.parametrize("count", [1, 2, 5, 16, 17])
def test_folds_hold_out_neighbouring_chunks_together(count):
    order = fold_order(count, 3)
    assert sorted(order) == list(range(count))
    for fold in make_folds(count):
        held = sorted(order[i] for i in fold.scored)  # chunks in place order
        if fold.half is None:
            assert held == list(range(held[0], held[-1] + 1)), held


def test_only_corrected_chunks_are_written_and_come_back(tmp_path):
    shape = (2, 3000, 2600)
    store = MontageCorrections(tmp_path / "montage", shape)
    region = region_around(shape[1:], (1600, 1300))
    assert region == (512, 2560, 0, 2048)
    h, w = region[1] - region[0], region[3] - region[2]
    labels = np.ones((h, w), np.uint8)
    edited = np.zeros((h, w), bool)
    edited[10, 10] = True
    nothing = np.zeros((h, w), bool)
    assert store.write(1, region, labels, edited, nothing, corrected=True) == 16  # newly corrected: written whole
    norm = {"method": "percentile", "low": 1.0, "high": 99.0}
    store.set_levels(1, norm, (np.array([3.0]), np.array([200.0])))
    stored = (tmp_path / "montage" / "labels.zarr").rglob("*")
    files = [p for p in stored if p.is_file() and not p.name.startswith(".z")]
    assert len(files) == 16  # the region's chunks, nothing else of a 3000 x 2600 x 2 montage

    labels[100, 100] = 0  # an edit in one chunk: only that chunk is written again
    painted = np.zeros((h, w), bool)
    painted[100, 100] = True
    assert chunks_touched(*np.nonzero(painted), 1, region[::2]) == {(1, 1, 0)}
    assert store.write(1, region, labels, edited | painted, painted, corrected=True) == 1
    again = MontageCorrections(tmp_path / "montage", shape)
    assert again.corrected == set(region_chunks(1, region))
    assert again.regions() == [(1, region)]
    np.testing.assert_array_equal(again.levels(1, norm)[1], [200.0])
    assert again.levels(1, {**norm, "high": 99.8}) is None  # another model's percentiles: measured again
    wider = (region[0] - CHUNK, region[1], region[2], region[3])
    saved, was_edited, corrected = again.read(1, wider)
    assert not corrected[:CHUNK].any() and corrected[CHUNK:].all()
    assert saved[CHUNK + 100, 100] == 0 and saved[CHUNK:].sum() == h * w - 1
    assert was_edited.sum() == 2 and was_edited[CHUNK + 10, 10] and was_edited[CHUNK + 100, 100]

    # Another region layer opened before that edit shares the chunk: its own stroke there is
    # merged in, and the edit above stays.
    stale = np.ones((h, w), np.uint8)
    stroke = np.zeros((h, w), bool)
    stroke[300, 5] = True
    stale[300, 5] = 0
    assert again.write(1, region, stale, stroke, stroke, corrected=True) == 1
    saved, was_edited, _ = again.read(1, region)
    assert saved[100, 100] == 0 and saved[300, 5] == 0 and was_edited[100, 100] and was_edited[300, 5]

    again.write(1, region, labels, edited, nothing, corrected=False)  # unmarked: not learnt any more
    assert MontageCorrections(tmp_path / "montage", shape).corrected == set()
    state = json.loads((tmp_path / "montage" / "state.json").read_text())
    state["levels"]["1"] = [[3.0], [200.0]]  # levels in a form this version does not write
    (tmp_path / "montage" / "state.json").write_text(json.dumps(state))
    assert MontageCorrections(tmp_path / "montage", shape).levels(1, norm) is None  # measured again, no crash
    with pytest.raises(ValueError, match="another corrections folder"):
        MontageCorrections(tmp_path / "montage", (2, 3000, 2000))


def test_a_region_is_predicted_as_the_whole_slice(montage):
    """Predict's region of a montage: the whole slice's probabilities there (its tile grid,
    its levels), with the built-in model."""
    checkpoint = load_checkpoint("em-membranes")
    pipeline = Pipeline(checkpoint, PredictSettings(device="cpu", block_limit=256 * 256))  # the slice is a montage
    plane = montage[0]
    levels = blocks.slice_levels(plane, checkpoint.info.normalization)
    whole = Pipeline(checkpoint, PredictSettings(device="cpu", levels=levels)).run(montage).probabilities[0]
    region = (300, 812, 1000, 1536)
    part = blocks.predict_region(pipeline, plane, region, levels)
    np.testing.assert_allclose(part, whole[300:812, 1000:1536], atol=1e-5)


def test_a_fine_tune_reads_the_corrected_chunks_with_their_context(montage, isbi_stack, tmp_path):
    """Windows are each chunk and its context, on the slice's levels, labelled only in the
    chunk; labels copying the model change nothing, real corrections are cross-validated
    over neighbouring chunks and never scored where learnt."""
    checkpoint = load_checkpoint("em-membranes")
    shape = montage.shape[:3]
    store = MontageCorrections(tmp_path / "montage", shape)
    levels = blocks.slice_levels(montage[0], checkpoint.info.normalization)
    store.set_levels(0, checkpoint.info.normalization, levels)
    region = (0, 512, 512, 1536)
    probability = Pipeline(checkpoint, PredictSettings(device="cpu", levels=levels)).run(montage).probabilities[0]
    predicted = (probability > checkpoint.info.threshold).astype(np.uint8)[:512, 512:1536]
    store.write(0, region, predicted, np.zeros(predicted.shape, bool), np.zeros(predicted.shape, bool), True)

    images, labels, edited, chunks, windows, window_levels = store.training_windows(montage,
                                                                                   checkpoint.info.normalization)
    assert images.shape == (2, CHUNK + 2 * CONTEXT, CHUNK + 2 * CONTEXT, 1) and not edited.any()
    first = chunks.index((0, 0, 1))  # rows 0-512, columns 512-1024: its window starts at row 0
    assert windows[first] == (0, 640, 448, 1088)
    np.testing.assert_array_equal(images[first], montage[0, 0:640, 448:1088])  # raw: normalised by the pipeline
    np.testing.assert_allclose(window_levels[first], levels)  # on the whole slice's levels, as Predict does
    assert (labels[first][:512, 64:576] != IGNORE).all() and (labels[first][512:] == IGNORE).all()
    assert (labels[first][:, 576:] == IGNORE).all()  # its neighbour is learnt in its own window only
    assert (labels[first][:, :64] == IGNORE).all()
    other = {"method": "percentile", "low": 1.0, "high": 99.0}  # a model with other percentiles
    assert store.levels(0, other) is None
    store.training_windows(montage, other)  # measures that slice's levels for it, and keeps them
    np.testing.assert_allclose(store.levels(0, other), blocks.slice_levels(montage[0], other))

    run, _chunks = fine_tune_on_chunks(checkpoint, montage, store, FineTuneOptions(steps=5, device="cpu"))
    # The fine-tune is shown each window as Predict normalised it: on its slice's levels.
    window = montage[0, 0:640, 448:1088]
    np.testing.assert_allclose(run.parts.images[first], normalize(window[None], levels=levels)[0], atol=1e-6)
    list(run.run())
    assert run.result.report.outcome == "agree"  # the model's own mask: nothing to learn

    truth = isbi_stack.labels[1, :512, :512]  # slice 1 sits at columns 512-1024 of the first row
    corrected = predicted.copy()
    corrected[:512, :512] = truth
    store.write(0, region, corrected, np.zeros(predicted.shape, bool), corrected != predicted, True)
    run, chunks = fine_tune_on_chunks(checkpoint, montage, store, FineTuneOptions(steps=3, device="cpu"))
    list(run.run())
    report = run.result.report
    assert report.outcome != "agree" and report.folds and report.part == "region"
    for fold, entry in zip(run.folds, report.folds):  # never scored on a chunk it learnt
        assert not set(fold.scored) & set(fold.learn)
        assert entry.name.startswith("slice 0, y ")
