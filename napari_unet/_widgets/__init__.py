"""Dock widgets of napari-unet: thin Qt front-ends over napari_unet.core."""

from .correct import CorrectWidget
from .evaluate import EvaluateWidget
from .finetune import FineTuneWidget
from .load import LoadWidget
from .predict import PredictWidget

__all__ = ["LoadWidget", "PredictWidget", "CorrectWidget", "FineTuneWidget", "EvaluateWidget"]
