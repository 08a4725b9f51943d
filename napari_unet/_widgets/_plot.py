"""A small live plot of the training loss and the held-out score (QPainter, no extra dependency)."""

from __future__ import annotations

from qtpy.QtCore import QPointF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

LOSS_COLOUR = QColor("#4fc3f7")
DICE_COLOUR = QColor("#ffb74d")
REFUSED_COLOUR = QColor("#e57373")


class LossPlot(QWidget):
    """Loss per step (blue, left scale) and the held-out Dice (orange, 0-1 on the right;
    red dots: checks refused because the segmentation got worse)."""

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
        self.refit_from: int | None = None  # first step of the fine-tune's refit on all slices
        self.update()

    def add(self, step: int, loss: float | None, dice: float | None, refused: bool = False,
            stage: str = "", total: int | None = None) -> None:
        """One event: the plan (``total``) may change, e.g. when the refit's length is known."""
        self.total = max(1, total or self.total)
        if stage == "refit" and self.refit_from is None:
            self.refit_from = step
        if loss is not None:
            self.losses.append((step, loss))
        if dice is not None:
            if refused:
                self.refused.add(len(self.dices))
            self.dices.append((step, dice))
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

        def points(series, scale):
            return QPolygonF([
                QPointF(rect.left() + rect.width() * s / self.total, rect.bottom() - rect.height() * min(v / scale, 1.0))
                for s, v in series
            ])

        if self.refit_from is not None:  # the loss starts again from the starting model here
            x = rect.left() + rect.width() * (self.refit_from - 1) / self.total
            painter.setPen(QPen(QColor("#8a8f9a"), 1, Qt.PenStyle.DashLine))
            painter.drawLine(QPointF(x, rect.top()), QPointF(x, rect.bottom()))
            painter.drawText(QPointF(x + 4, rect.top() + 12), "all slices")
        painter.setPen(QPen(LOSS_COLOUR, 1.5))
        painter.drawPolyline(points(self.losses, top or 1.0))
        painter.setPen(QPen(DICE_COLOUR, 2))
        dice_points = points(self.dices, 1.0)
        painter.drawPolyline(dice_points)
        for index, point in enumerate(dice_points):
            colour = REFUSED_COLOUR if index in self.refused else DICE_COLOUR
            painter.setPen(colour)
            painter.setBrush(colour)
            painter.drawEllipse(point, 3, 3)
        painter.end()
