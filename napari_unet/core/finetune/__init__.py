"""The one-click fine-tune: learn from a few corrected slices, keep the result only when
slices it never learnt from show the gain.

One recipe for the Fine-tune widget and ``napari-unet train --from`` (`run.FineTune`):

1. **Edits.** The pixels the user painted (the widget tracks them) and the pixels where
   the starting model's mask, as Predict shows it, disagrees with the labels. Without
   any, there is nothing to learn: the starting model is kept at once.
2. **Scale and threshold** (`calibrate`; grey slices only). The starting weights may
   see the user's slices at the wrong scale (another microscope's pixel size, which the
   user need not know) or draw structures wider than their annotator does. Each fold
   (step 4) chooses a zoom (`ZOOMS`; not on a montage, nor when Predict was given a
   pixel size: that sets the scale) and a threshold on the parts it learns from, with
   the starting weights (best Dice + guard, both up), and is scored on its held-out
   part; when `decide` keeps them (the cells not down at all), the one of the folds'
   settings best on every corrected part becomes the baseline to beat.
3. **Learn from the corrections.** Half of the crops are centred on edited pixels, the
   others on labelled ones (never an unlabelled crop), and edited pixels weigh more.
   A few uncorrected slices of the stack are learnt too, labelled with the starting
   model's own mask (`ANCHORS`), so the model keeps what it did well elsewhere. The
   weights then go only half-way from the starting ones to the trained ones
   (`blend.UPDATE_SHARE`): a few steps on a few slices overshoot.
4. **Cross-validate.** Each corrected slice is held out in turn (at most `MAX_FOLDS`
   folds; with one corrected slice, each half of it): a model trained on the rest, and
   moved half-way as it would ship, is scored on the whole held-out part, as Predict
   shows it, at the model's threshold: Dice, and V_Rand of the cells (EM) or clDice
   (vessels). No score is ever taken on a pixel the scored model learnt from, or chose
   its setting on.
5. **Decide** (`rules.decide`): the recipe is kept only if the fine-tuned models beat
   the baseline on every held-out part (Dice up, the cells or vessels not worse by more
   than `TOLERANCE`) and by at least `MIN_GAIN` on average. On grey slices, a new
   threshold is taken only when it is better in every fold by `MIN_GAIN` too;
   photographs keep theirs. Otherwise the baseline (the starting model, re-scaled when
   step 2 was verified) is kept, and the report (`FineTuneReport`) says why.
6. **Then use everything.** When kept, the model is trained from the start on all
   corrected slices with the same recipe (the one the folds verified).

The slices are prepared as Predict prepares them (`core.pipeline`, with Predict's own
`PredictSettings`: pixel size, FOV diameter and colour of photographs), so the model
learns from what it will be shown. Labels that could not teach or be scored are refused
before any training (`checks`). What was chosen, on which data, and what was not taken:
``docs/decisions/finetune-*.md``.

Modules: `rules` (folds, decisions: pure), `calibrate` (scale and threshold), `blend`
(the weights shipped), `parts` (the corrected slices as the model sees them), `scores`
(as Evaluate scores them), `checks`, `options` (what is asked and reported), `report`
(the user's words), `run` (the orchestrator).
"""

from .blend import UPDATE_SHARE, move_toward
from .calibrate import SEARCH_EDGE, THRESHOLDS, ZOOMS
from .options import Calibration, FineTuneOptions, FineTuneReport, FineTuneResult, FoldScore
from .parts import ANCHOR_EDGE, SlicesOf
from .report import (
    describe_calibration,
    describe_history,
    describe_montage_plan,
    describe_outcome,
    describe_plan,
    describe_progress,
)
from .rules import (
    ANCHORS,
    MAX_FOLDS,
    MIN_GAIN,
    TOLERANCE,
    Fold,
    anchor_slices,
    better_threshold,
    centre_window,
    decide,
    half_mask,
    has_cell,
    make_folds,
)
from .run import FineTune

__all__ = [
    "ANCHORS", "ANCHOR_EDGE", "MAX_FOLDS", "MIN_GAIN", "SEARCH_EDGE", "THRESHOLDS", "TOLERANCE", "UPDATE_SHARE",
    "ZOOMS", "Calibration", "FineTune", "FineTuneOptions", "FineTuneReport", "FineTuneResult", "Fold", "FoldScore",
    "SlicesOf", "anchor_slices", "better_threshold", "centre_window", "decide", "describe_calibration",
    "describe_history", "describe_montage_plan", "describe_outcome", "describe_plan", "describe_progress",
    "half_mask", "has_cell", "make_folds", "move_toward",
]
