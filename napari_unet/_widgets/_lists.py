"""Lists of slices in the dock widgets: one item per slice, which holds the slice's index."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QListWidget, QListWidgetItem


class SliceList(QListWidget):
    """A list of slices (e.g. Correct's edited slices, or the ones to correct next), with a
    check box per item where asked.

    Args:
        min_height: its minimum height in pixels.
        on_click: called with the item clicked (e.g. to go to its slice).
        on_check: called with the item whose check box the user changed.
    """

    def __init__(self, min_height: int, on_click: Callable[[QListWidgetItem], None] | None = None,
                 on_check: Callable[[QListWidgetItem], None] | None = None) -> None:
        super().__init__()
        self.setMinimumHeight(min_height)
        if on_click is not None:
            self.itemClicked.connect(on_click)
        if on_check is not None:
            self.itemChanged.connect(on_check)

    def fill(self, entries: Iterable[tuple[int, str, bool | None]]) -> None:
        """Show ``entries``, (z, text, checked) each, in their order; ``checked`` None: no
        check box. Filling it calls none of its callbacks."""
        self.blockSignals(True)
        self.clear()
        for z, text, checked in entries:
            item = QListWidgetItem(text)
            item.setData(Qt.ItemDataRole.UserRole, z)
            if checked is not None:
                item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
                item.setCheckState(Qt.CheckState.Checked if checked else Qt.CheckState.Unchecked)
            self.addItem(item)
        self.blockSignals(False)


def slice_of(item: QListWidgetItem) -> int:
    """The slice a `SliceList` item stands for."""
    return item.data(Qt.ItemDataRole.UserRole)


def is_checked(item: QListWidgetItem) -> bool:
    return item.checkState() == Qt.CheckState.Checked
