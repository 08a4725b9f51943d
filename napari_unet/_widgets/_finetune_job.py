"""The Fine-tune widget's helpers without a layer or a Qt object: in the worker thread,
run a fine-tune, relaying its events, save the model it gives and re-predict with it;
on the GUI thread, check where outputs go before the work starts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from ..core.corrections import record_fine_tuned
from ..core.files import check_writable, free_path, napari_unet_home, refuse_input
from ..core.finetune import FineTune, FineTuneReport, describe_outcome
from ..core.pipeline import Pipeline
from ..core.settings import PredictSettings
from ._layers import slice_updates


@dataclass
class Saved:
    """A fine-tune's model as saved.

    Attributes:
        model: the saved model, loaded back (on the CPU), the one Predict offers next.
        path: where it went; fallback: "" or a sentence saying why it went elsewhere.
        report: what the fine-tune did; note: a sentence for the user, or "".
    """

    model: Checkpoint
    path: Path
    fallback: str
    report: FineTuneReport
    note: str

    def describe(self) -> str:
        """What happened and where the model went, e.g. "Done. Verified where it did not
        learn (…). Saved to /data/stack_finetuned.pt"."""
        how = "" if self.report.stopped else "Done. "  # the outcome itself says it was stopped
        where = self.fallback or (f"Saved to {self.path}" if self.report.kept
                                  else f"This round is recorded in {self.path} (the starting model's weights)")
        return f"{how}{describe_outcome(self.report)} {where}"


def save_corrections(session, tracker, folder: Path | None) -> None:
    """Save every tracker's corrections and ``tracker``'s into ``folder`` (None: beside the
    image), in the worker: the training reads them. Raises ValueError saying what to do."""
    try:
        session.autosave()
        tracker.save(folder)
    except OSError as exc:
        raise ValueError(f"Could not save your corrections before training ({exc}): choose a folder in "
                         "Correct.") from exc


def run_and_save(run: FineTune, state, out: Path, folder: Path, slices: list[int], note: str) -> Saved | None:
    """Run a fine-tune in the worker, relaying its events to ``state`` (`_jobs.JobState`);
    save the model (the starting one when refused) and list it for the image's
    corrections in ``folder``. Returns None when the window was closed."""
    events = run.run()
    for event in events:
        state.events.append(event)
        state.report(event.step, event.total)
        if state.cancelled():
            break
    events.close()  # `run.result` holds the model to keep
    if state.abandoned:  # the window was closed: write nothing
        return None
    result = run.result
    saved_to, fallback = save_with_fallback(out, result.model, result.metadata)
    try:  # offered again by Predict for this image, also after a restart
        record_fine_tuned(folder, saved_to, slices)
    except OSError as exc:  # the model is saved; only Predict's offer of it next time is lost
        note = f"{note} It could not be listed for this image ({exc}): choose it as a checkpoint file.".strip()
    return Saved(load_checkpoint(saved_to, device="cpu"), saved_to, fallback, result.report, note)


def save_with_fallback(path: Path, model, metadata: dict) -> tuple[Path, str]:
    """Save the trained model to ``path``; if that fails now (disk full, drive gone),
    save it to the default models folder so the training is not lost.

    Returns:
        (where it was saved, "" or a sentence saying why it went elsewhere).
    """
    try:
        return save_checkpoint(path, model, metadata), ""
    except OSError as exc:
        fallback = free_path(check_writable(napari_unet_home() / "models") / path.name)
        save_checkpoint(fallback, model, metadata)
        return fallback, f"Could not write {path} ({exc.strerror or exc}), so the model was saved to {fallback}"


def repredict(model: Checkpoint, settings: PredictSettings, stack, labels, slices: list[int], fov, cancel):
    """Predict ``slices`` of ``stack`` with a fine-tuned model as Predict would (its own
    threshold, the user's other settings), in the worker.

    Args:
        stack: (Z, Y, X, C) images; labels: (Z, Y, X) the Labels layer's data as it is.
        fov: (Z, Y, X) bool FOV the user gave, or None; cancel: () -> bool, stop when True.

    Returns:
        (`_layers.slice_updates` of ``labels``, (Z, Y, X) uint8: 1 where a pixel changes).
    """
    pipeline = Pipeline(model, settings.but(threshold=None, instances=False))
    mask = pipeline.run(stack[slices], None if fov is None else fov[slices], cancel=cancel).mask
    updates = slice_updates(labels, mask, slices)
    changed = np.zeros(labels.shape, np.uint8)  # shown in yellow
    for z, (rows, cols, _values) in updates.items():
        changed[z, rows, cols] = 1
    return updates, changed


def chosen_path(chosen: str, suffix: str, default: Path, inputs: dict, field: str) -> Path:
    """Where an output goes: the path the user chose in ``field`` (given ``suffix``; never
    one of ``inputs``, see `core.files.refuse_input`), else ``default``; never over an
    existing file, its folder checked now, not after the work (ValueError naming it)."""
    if chosen not in ("", "."):
        path = Path(chosen)
        path = path if path.suffix == suffix else path.with_suffix(suffix)
        refuse_input(path, inputs, field)
    else:
        path = default
    check_writable(path.parent)
    return free_path(path)
