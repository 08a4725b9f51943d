"""What a fine-tune is asked (`FineTuneOptions`) and what it gives (`FineTuneResult`,
with its typed `FineTuneReport`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from ..model import UNet
from ..settings import PredictSettings
from .blend import UPDATE_SHARE
from .rules import ANCHORS


@dataclass
class FineTuneOptions:
    """Choices of one fine-tune (the rest is the recipe of `core.train.fine_tune_recipe`).

    Attributes:
        steps: training steps of each model (every fold's and the final one).
        verify: cross-validate and keep the result only when it shows a gain; False
            trains on all corrected slices and keeps the model unchecked.
        edit_weight: loss weight of edited pixels (others weigh 1).
        focus_fraction: share of crops centred on edited pixels.
        device, seed: where (training and every prediction) and how reproducibly to train.
        recipe: overrides of the training recipe (batch_size, crop_size, learning_rate,
            border_weights: default on for EM, off for vessels, ...), see `TrainConfig`.
        predict: how Predict predicts, whole (`core.settings.PredictSettings`: tile,
            overlap, pixel size, FOV, levels, e.g. (0, 1) for windows of a montage
            normalised on their slice's levels): every check scores the mask the user
            sees, made the same way. Its device, threshold and cells are the fine-tune's
            own (``device``; the model's threshold, or the one the fine-tune verifies).
        anchors: how many uncorrected slices of the stack are learnt with the starting
            model's own mask as labels (see `rules.ANCHORS`); 0: none.
        update_share: how far the shipped weights move from the starting ones towards
            the trained ones (see `blend.UPDATE_SHARE`); 1: the trained weights.
    """

    steps: int = 30
    verify: bool = True
    edit_weight: float = 3.0
    focus_fraction: float = 0.5
    device: str = "auto"
    seed: int = 0
    recipe: dict = field(default_factory=dict)
    predict: PredictSettings = field(default_factory=PredictSettings)
    anchors: int = ANCHORS
    update_share: float = UPDATE_SHARE


@dataclass
class FoldScore:
    """One fold's held-out part, scored as Evaluate scores the mask Predict shows.

    Attributes:
        name: how the user reads the part ("slice 7", "the top half of slice 2").
        held_out: its stack indices (a montage: indices of its corrected chunks).
        start_dice, start_guard: the baseline's Dice and guard (V_Rand of the cells on
            EM, clDice of the vessels) there.
        dice, guard: the candidate's (a fold's fine-tuned model, or the starting
            weights at the setting the fold chose).
        zoom, threshold: the setting the fold chose (scale check only), else None.
    """

    name: str
    held_out: list[int]
    start_dice: float
    start_guard: float
    dice: float
    guard: float
    zoom: float | None = None
    threshold: float | None = None


@dataclass
class Calibration:
    """The scale and threshold check (`calibrate.recalibrate`).

    Attributes:
        outcome: `rules.decide`'s outcome over the folds, or "small" (every fold moved,
            all parts together do not).
        start_zoom, zoom, threshold: the setting before, and the one taken (unchanged
            unless the outcome is "gain").
        folds: the folds that chose another setting, scored on their held-out part.
    """

    outcome: str
    start_zoom: float
    zoom: float
    threshold: float
    folds: list[FoldScore] = field(default_factory=list)


#: Fields left out of the history on disk when None: records read as they did before.
_OPTIONAL = ("dice_gain", "guard_gain", "calibration", "anchors", "pixel_size", "zoom", "threshold")


@dataclass
class FineTuneReport:
    """What a fine-tune did, for the user (`report.describe_outcome`) and the model's
    history (``to_dict``, a JSON record in the checkpoint).

    Attributes:
        outcome: "gain", "no gain", "guard", "small" (`rules.decide`), "agree" (nothing
            to learn), "unverified" (no check asked) or "stopped".
        kept: the shipped model replaces the starting one (trained, or re-scaled).
        trained: its weights were trained (else the starting ones).
        stopped: the run was stopped before its end.
        part: what the user corrected: "slice", or "region" (a montage's chunks).
        guard_name: "V_Rand" (EM) or "clDice" (vessels).
        start_zoom, zoom: the scale the slices were shown at before, and shipped.
        start_threshold, threshold: likewise, the mask threshold.
        steps: training steps of the shipped model (0: not trained).
        update_share: see `blend.UPDATE_SHARE`.
        seconds: wall time.
        folds: the training folds run, scored at the threshold shipped.
        dice_gain, guard_gain: their mean gains (None: no fold run).
        calibration: the scale check (grey slices, cross-validated runs), or None.
        anchors: stack indices of the anchors learnt (None: none were asked for).
        pixel_size: the images' pixel size (nm) the slices were resampled from, as
            Predict resamples them (None: shown as they are, by ``zoom``).
    """

    outcome: str = "stopped"
    kept: bool = False
    trained: bool = False
    stopped: bool = True
    part: str = "slice"
    guard_name: str = "V_Rand"
    start_zoom: float = 1.0
    zoom: float = 1.0
    start_threshold: float = 0.5
    threshold: float = 0.5
    steps: int = 0
    update_share: float = UPDATE_SHARE
    seconds: float = 0.0
    folds: list[FoldScore] = field(default_factory=list)
    dice_gain: float | None = None
    guard_gain: float | None = None
    calibration: Calibration | None = None
    anchors: list[int] | None = None
    pixel_size: float | None = None

    def to_dict(self) -> dict:
        """The JSON record of the model's history (`FineTune` stores it as
        ``history[-1]["fine_tune"]``): the fields by name, those that are None left out."""

        def compact(record: dict) -> dict:
            return {k: v for k, v in record.items() if not (k in _OPTIONAL and v is None)}

        record = compact(asdict(self))
        record["folds"] = [compact(f) for f in record["folds"]]
        if self.calibration is not None:
            record["calibration"]["folds"] = [compact(f) for f in record["calibration"]["folds"]]
        return record

    @classmethod
    def from_dict(cls, record: dict) -> FineTuneReport:
        """A report from a history record (``to_dict``'s, or one of an earlier version:
        missing fields take their defaults, unknown keys are left out)."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in record.items() if k in known}
        values["folds"] = [_fold(f) for f in record.get("folds", [])]
        if record.get("calibration"):
            known = {f.name for f in fields(Calibration)}
            calibration = {k: v for k, v in record["calibration"].items() if k in known}
            calibration["folds"] = [_fold(f) for f in calibration.get("folds", [])]
            values["calibration"] = Calibration(**calibration)
        return cls(**values)


def _fold(record: dict) -> FoldScore:
    known = {f.name for f in fields(FoldScore)}
    return FoldScore(**{"held_out": [], **{k: v for k, v in record.items() if k in known}})


@dataclass
class FineTuneResult:
    """The model to use (the starting one when the fine-tune was refused), its checkpoint
    metadata (with this round in its history) and what happened."""

    model: UNet
    metadata: dict
    report: FineTuneReport
