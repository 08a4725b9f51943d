"""Text rows of the dock widgets (status lines, help, device in use)."""

from __future__ import annotations

from typing import Any

from magicgui.widgets import Label
from qtpy.QtCore import QEvent, QObject, Qt
from qtpy.QtWidgets import QLabel, QSizePolicy


class _KeepsTextHeight(QObject):
    """Keeps a word-wrapped QLabel's minimum height at what its text needs at its width.

    A dock's height comes from its content's minimum size, and neither QMainWindow's dock
    layout nor QDockWidget asks a word-wrapped label how tall it is at the width it really
    gets (heightForWidth): QLabel's minimum size hint is one or two lines wrapped at a wider,
    guessed width. With the five widgets stacked in one dock column every dock is held at
    that minimum, so a status wrapped into the narrow value column showed one clipped line.
    A minimum height that follows the wrapped text makes the dock (and, in a scroll area, the
    scrolled content) grow with it.
    """

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt's name)
        if event.type() in (QEvent.Type.Resize, QEvent.Type.Show, QEvent.Type.FontChange,
                            QEvent.Type.StyleChange):
            fit_text_height(watched)
        return False


def fit_text_height(label: QLabel) -> None:
    """Set ``label``'s minimum height to its wrapped text's height at its current width.

    Only once the label is shown: before that its width is a placeholder, and a transient
    tall minimum would make QMainWindow grow the whole window (it never shrinks back).
    """
    if not label.isVisible() or label.width() <= 0:
        return
    lines = label.property("napari_unet_lines") or 0
    margins = label.contentsMargins()
    reserved = lines * label.fontMetrics().lineSpacing() + margins.top() + margins.bottom() if lines else 0
    needed = max(label.heightForWidth(label.width()), reserved, 0)
    if label.minimumHeight() != needed:
        label.setMinimumHeight(needed)


class TextRow(Label):
    """magicgui's Label, whose height follows its word-wrapped text (see `text_row`)."""

    def set_value(self, value: Any) -> None:
        super().set_value(value)
        fit_text_height(self.native)


def text_row(label: str = "", value: str = "", lines: int = 0) -> TextRow:
    """A word-wrapped Label that fills its column, text at the top left, as tall as its text.

    magicgui's Label keeps its text's width and sits centred in the value column, so a
    status line would float in the middle of the widget, away from the fields above it.
    Its height grows and shrinks with the wrapped text at the width the dock gives it, so a
    long status is read in full wherever napari docks the widget.

    Args:
        label: The row's label (left column); empty for none.
        value: The starting text.
        lines: Room kept for at least this many lines even when the text is shorter: for a
            row rewritten several times a second during a job, so that its height (and the
            window's layout, which makes the canvas redraw) does not change at each update.
    """
    row = TextRow(label=label, value=value)
    native = row.native
    native.setWordWrap(True)
    native.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
    native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
    native.setProperty("napari_unet_lines", int(lines))
    native.installEventFilter(_KeepsTextHeight(native))
    return row
