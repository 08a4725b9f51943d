"""Text rows of the dock widgets (status lines, help, device in use)."""

from __future__ import annotations

from magicgui.widgets import Label
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QSizePolicy


def text_row(label: str = "", value: str = "") -> Label:
    """A word-wrapped Label that fills its column, text at the top left.

    magicgui's Label keeps its text's width and sits centred in the value column, so a
    status line would float in the middle of the widget, away from the fields above it.
    """
    row = Label(label=label, value=value)
    row.native.setWordWrap(True)
    row.native.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
    row.native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
    return row
