"""A small live plot of the training loss and the held-out score (QPainter, no extra dependency)."""

from __future__ import annotations

from qtpy.QtCore import QPointF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

LOSS_COLOUR = QColor("#4fc3f7")
DICE_COLOUR = QColor("#ffb74d")
REFUSED_COLOUR = QColor("#e57373")
BASELINE_COLOUR = QColor("#9e9e9e")


class LossPlot(QWidget):
    """Loss per step (blue, left scale) and, after each check, the held-out Dice (0-1 on
    the right) of the new model (orange dot; red: no gain there) beside the starting
    model's (grey dash). Dashed lines: a new stage (fold, then all slices) starts from the starting model."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setMinimumHeight(150)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.reset()

    def reset(self, total_steps: int = 1) -> None:
        self.total = max(1, total_steps)
        self.losses: list[tuple[int, float]] = []
        self.dices: list[tuple[int, float]] = []
        self.refused: set[int] = set()  # indices into `dices`
        self.baselines: list[tuple[int, float]] = []  # the starting model's score beside each of `dices`
        self.stages: list[tuple[int, str]] = []  # (first step, name) of each stage of a fine-tune
        self.update()

    def add(self, step: int, loss: float | None, dice: float | None, refused: bool = False,
            stage: str = "", total: int | None = None, baseline: float | None = None) -> None:
        """One event: the plan (``total``) may change; ``baseline``: the starting model's
        score on the same held-out part as ``dice`` (drawn grey beside it)."""
        self.total = max(1, total or self.total)
        if stage and (not self.stages or self.stages[-1][1] != stage):
            self.stages.append((step, stage))
        if loss is not None:
            self.losses.append((step, loss))
        if dice is not None:
            if refused:
                self.refused.add(len(self.dices))
            self.dices.append((step, dice))
            if baseline is not None:
                self.baselines.append((step, baseline))
        self.update()

    def paintEvent(self, event) -> None:  # noqa: N802 (Qt name)
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        rect = self.rect().adjusted(40, 10, -40, -22)
        painter.fillRect(self.rect(), QColor("#262930"))
        painter.setPen(QPen(QColor("#5a5f6a")))
        painter.drawRect(rect)
        text = QColor("#d0d0d0")
        painter.setPen(text)
        top = max((v for _, v in self.losses), default=1.0)
        painter.drawText(2, rect.top() + 10, f"{top:.2f}")
        painter.drawText(2, rect.bottom(), "0")
        painter.drawText(rect.right() + 4, rect.top() + 10, "1.0")
        painter.drawText(rect.right() + 4, rect.bottom(), "0")
        painter.drawText(rect.left(), rect.bottom() + 16, "step 0")
        label = f"{self.total}"
        painter.drawText(rect.right() - 8 * len(label), rect.bottom() + 16, label)
        # Legend under the axis, so it never hides the curves.
        middle = rect.left() + rect.width() // 2 - 60
        painter.setPen(LOSS_COLOUR)
        painter.drawText(middle, rect.bottom() + 16, "loss")
        painter.setPen(DICE_COLOUR)
        painter.drawText(middle + 36, rect.bottom() + 16, "held-out Dice")
        painter.setPen(BASELINE_COLOUR)
        painter.drawText(middle + 130, rect.bottom() + 16, "before")

        def points(series, scale):
            return QPolygonF([
                QPointF(rect.left() + rect.width() * s / self.total,
                        rect.bottom() - rect.height() * min(v / scale, 1.0))
                for s, v in series
            ])

        for first, stage in self.stages[1:]:  # each stage starts again from the starting model
            x = rect.left() + rect.width() * (first - 1) / self.total
            painter.setPen(QPen(QColor("#8a8f9a"), 1, Qt.PenStyle.DashLine))
            painter.drawLine(QPointF(x, rect.top()), QPointF(x, rect.bottom()))
            painter.drawText(QPointF(x + 4, rect.bottom() - 4), stage)  # below the scores, which sit high
        painter.setPen(QPen(LOSS_COLOUR, 1.5))
        painter.drawPolyline(points(self.losses, top or 1.0))
        painter.setPen(QPen(BASELINE_COLOUR, 3))
        for point in points(self.baselines, 1.0):  # the model it must beat, on the same part: a dash
            painter.drawLine(QPointF(point.x() - 9, point.y()), QPointF(point.x() - 3, point.y()))
        dice_points = points(self.dices, 1.0)
        for index, point in enumerate(dice_points):
            colour = REFUSED_COLOUR if index in self.refused else DICE_COLOUR
            painter.setPen(colour)
            painter.setBrush(colour)
            painter.drawEllipse(point, 3, 3)
        painter.end()
