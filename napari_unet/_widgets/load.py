"""Load widget: open an EM stack or fundus image/folder (ISBI and DRIVE layouts recognised)."""

from __future__ import annotations

from pathlib import Path

import dask.array  # noqa: F401  (imported with the plugin: the first Load would pay 0.7 s for it)
import numpy as np
from magicgui.widgets import FileEdit, PushButton
from napari.layers import Image, Layer
from qtpy.QtCore import QTimer

from .._reader import read_layers, too_large_to_show_flat, volume_contrast
from ..core.corrections import (
    CorrectionStore,
    VolumeState,
    corrections_folder,
    load_volume_edits,
    load_volume_state,
    open_volume_labels,
)
from ..core.data import DataError
from ..core.predict import PredictionCancelled
from ..core.pyramid import pyramid_path, write_pyramid
from ..core.volume import open_volume
from ._jobs import BackgroundJob
from ._layers import is_lazy, is_montage, label_colormap, lazy_stack, linked_meta, plugin_meta, region_boxes
from ._montage import montage_corrections
from ._session import SessionWidget
from ._text import text_row

try:  # napari builds its unit registry with the first layer (0.3 s): build it with the plugin instead
    from napari.utils._units import get_unit_registry

    get_unit_registry().pixel  # noqa: B018 (the registry initialises on its first attribute)
except (ImportError, AttributeError):  # another napari: its first layer pays for it, as before
    pass


PYRAMID_TEXT = "Write an averaged pyramid (once)"
OPEN_PYRAMID_TEXT = "Open the averaged pyramid"


class LoadWidget(SessionWidget):
    """Choose a file or folder, see what was found, and restore saved corrections."""

    def __init__(self, napari_viewer) -> None:
        super().__init__(napari_viewer, labels=False)
        self.path = FileEdit(label="File or folder", mode="r", tooltip="A tif stack, an image, or a folder")
        self.choose_folder = PushButton(text="Choose a folder…")
        self.load_button = PushButton(text="Load")
        self.status = text_row(value="Choose an EM stack, a fundus image, or an ISBI / DRIVE folder.")
        self.restore_button = PushButton(text="Restore saved corrections", visible=False)
        self.pyramid_button = PushButton(text=PYRAMID_TEXT, visible=False)
        self.extend([self.path, self.choose_folder, self.load_button, self.status, self.restore_button,
                     self.pyramid_button])
        self.choose_folder.changed.connect(self._choose_folder)
        self.pyramid_button.changed.connect(self.write_pyramid)
        # A volume offered a pyramid: (its path, its layer, None when not shown: no smaller levels).
        self._flat_montage: tuple[Path, Layer | None] | None = None
        self.job: BackgroundJob | None = None
        self.contrast_job: BackgroundJob | None = None
        self.load_button.changed.connect(self.load)
        self.restore_button.changed.connect(self.restore_corrections)
        self._pending_restore: tuple[CorrectionStore, str, Layer] | None = None
        self._pending_volume: tuple[VolumeState, Path, str, Layer] | None = None  # state, folder, source, image

    def _choose_folder(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        folder = QFileDialog.getExistingDirectory(self.native, "Choose a folder (ISBI, DRIVE, or slices)")
        if folder:
            self.path.value = folder

    def load(self, path: str | Path | None = None) -> list[Layer]:
        """Read the chosen path and add its layers; reports problems in the widget."""
        path = Path(path) if path else Path(self.path.value)
        if not str(self.path.value) or str(path) in ("", "."):
            self.status.value = "Choose a file or a folder first."
            return []
        sizes = self.session.sizes  # when a file is read lazily, by region, shown flat
        try:
            tuples = read_layers(str(path), contrast=False, sizes=sizes)
        except DataError as exc:
            self.status.value = f"Could not load: {exc}"
            return []
        if too_large_to_show_flat(*tuples[0], sizes):
            self._offer_pyramid_only(path, *tuples[0])
            return []
        layers = [self.viewer.add_layer(Layer.create(data, meta, kind)) for data, meta, kind in tuples]
        image = layers[0]
        if is_lazy(image) and isinstance(image, Image) and not image.rgb:
            self._sample_contrast(path, image)
        info = image.metadata.get("napari_unet", {})
        found = [f"{info.get('layout', 'file')}: {image.name}"]
        rgb = getattr(image, "rgb", False)  # a Labels layer (a prediction store) has none
        z = image.data.shape[0] if image.data.ndim - (1 if rgb else 0) == 3 else 1
        found.append(f"{z} slice(s) of {'x'.join(map(str, image.data.shape[-3:-1] if rgb else image.data.shape[-2:]))}")
        found.append("RGB (fundus)" if rgb else "grey (EM)")
        for layer in layers[1:]:
            found.append(f"+ {layer.name}")
        self.status.value = "Loaded " + ", ".join(found)
        flat = getattr(image, "multiscale", False) and path.suffix.lower() in (".tif", ".tiff")
        # Display levels that pick pixels (`core.volume`): an averaged pyramid looks better far out.
        self._flat_montage = (path, image) if flat else None
        self.pyramid_button.visible = flat
        if flat and pyramid_path(path).exists():
            self.pyramid_button.text = OPEN_PYRAMID_TEXT
            self.status.value += f". Its averaged pyramid {pyramid_path(path).name} is beside it: open it below."
        elif flat:
            self.pyramid_button.text = PYRAMID_TEXT
            self.status.value += (". Far out it looks grainy: write an averaged pyramid once below (or "
                                  f"napari-unet pyramid {path.name} --out {pyramid_path(path).name}).")
        self._offer_restore(path, image)
        return layers

    def _offer_pyramid_only(self, path: Path, data, meta: dict, kind: str) -> None:
        """A volume of huge slices without smaller levels (a compressed tif, a flat zarr): napari
        would read and decompress whole slices to show it, so it is not shown; Load offers to
        write (or open) its averaged pyramid instead."""
        height, width = data.shape[-3:-1] if meta.get("rgb") else data.shape[-2:]
        size = f"'{path.name}' holds slices of {height:,} x {width:,} pixels without smaller levels"
        self.pyramid_button.visible = False
        self._flat_montage = None
        if kind == "labels" or meta.get("rgb"):
            self.status.value = (f"{size}: napari would read whole slices to show it, which freezes the window. Write "
                                 "predictions of such slices with napari-unet predict ... --out mask.ome.zarr, and "
                                 "shrink photographs that large first.")
            return
        self._flat_montage = (path, None)
        self.pyramid_button.visible = True
        if pyramid_path(path).exists():
            self.pyramid_button.text = OPEN_PYRAMID_TEXT
            self.status.value = f"{size}. Its averaged pyramid {pyramid_path(path).name} is beside it: open it below."
        else:
            self.pyramid_button.text = PYRAMID_TEXT
            self.status.value = (f"{size}: napari would read whole slices to show it, which freezes the window. Write "
                                 f"an averaged pyramid once below (or napari-unet pyramid {path.name} --out "
                                 f"{pyramid_path(path).name}); it then opens at the level that fits the screen.")

    def _sample_contrast(self, path: Path, image: Layer) -> None:
        """Set a volume's contrast from a sample of its coarsest level, read in a worker (a
        montage's coarsest level is strided rows of a file of gigabytes)."""
        shown = tuple(image.contrast_limits)

        def done(limits) -> None:
            # Not over a contrast the user set meanwhile, nor on a removed layer.
            if limits is not None and image in self.viewer.layers and tuple(image.contrast_limits) == shown:
                image.contrast_limits = limits

        sizes = self.session.sizes
        self.contrast_job = BackgroundJob(lambda state: volume_contrast(open_volume(path, sizes)), done,
                                          lambda message: None, self, description="Sampling the contrast",
                                          activity=False)
        self.contrast_job.start()

    def write_pyramid(self) -> BackgroundJob | None:
        """Write the loaded montage tif as an averaged OME-Zarr pyramid beside it, in a worker
        (the button cancels it), then open that in its place; returns the job."""
        if self.job is not None and self.job.running:
            self.job.cancel()
            return self.job
        if self._flat_montage is None:
            self.status.value = "Load a large tif first: its pyramid is written beside it."
            return None
        path, image = self._flat_montage
        out = pyramid_path(path)
        if out.exists():
            self._open_pyramid(out, image)
            return None
        sizes = self.session.sizes

        def work(state):
            try:
                write_pyramid(open_volume(path, sizes), out, state.report, state.cancelled, sizes)
            except PredictionCancelled:
                return None
            return out

        def done(result):
            if result is None:
                self.status.value = "Cancelled: no pyramid was written."
            else:
                self._open_pyramid(result, image)

        def poll(state):
            if state.total:
                self.status.value = (f"Writing the pyramid {out.name}: {100 * state.done / state.total:.0f} % "
                                     "(Cancel stops it and leaves nothing half-written).")

        def ended():
            self.pyramid_button.text = PYRAMID_TEXT

        self.job = BackgroundJob(work, done, self._failed, self, poll, ended, description="Writing a pyramid")
        self.pyramid_button.text = "Cancel"
        self.status.value = f"Writing the pyramid {out.name} beside {path.name}…"
        self.job.start()
        return self.job

    def _failed(self, message: str) -> None:
        self.status.value = message

    def _open_pyramid(self, out: Path, image) -> None:
        """Open ``out`` in place of the tif layer ``image`` (kept when a result links to it)."""
        uid = plugin_meta(image).get("uid") if image is not None else None
        linked = uid and any(plugin_meta(other).get("link") == uid for other in self.viewer.layers)
        self.path.value = str(out)
        layers = self.load(out)
        if layers and not linked and image is not None and image in self.viewer.layers:
            name = image.name
            self.viewer.layers.remove(image)
            layers[0].name = name  # napari named it "<name> [1]" beside the tif
        self.status.value += f"\n{out.name} is the averaged pyramid of the tif: open it next time."

    def _offer_restore(self, path: Path, image) -> None:
        store = CorrectionStore(corrections_folder(path, root=self.session.corrections_dir))
        self._pending_restore = self._pending_volume = None
        self.restore_button.visible = False
        sizes = self.session.sizes
        if isinstance(image, Image) and is_lazy(image) and not image.rgb and is_montage(lazy_stack(image).shape, sizes):
            self._show_montage_corrections(image)
            return
        if is_lazy(image):
            self._offer_volume_restore(store.folder, path, image)
            return
        if not store.exists():
            return
        try:
            _, state, _ = store.load()
        except ValueError as exc:
            self.status.value += f"\n{exc}"
            return
        count = len(state.get("corrected_slices", []))
        self.status.value += f"\nSaved corrections found ({count} corrected slice(s), {state.get('saved', '')})."
        self.restore_button.visible = True
        self._pending_restore = (store, str(path), image)

    def _show_montage_corrections(self, image) -> None:
        """Outline the regions of a montage corrected in earlier sessions (a Shapes layer), so
        the user finds them again: Predict with one in the centre of the view reopens it."""
        shape = lazy_stack(image).shape
        try:
            regions = montage_corrections(image, shape, self.session.corrections_dir).regions()
        except ValueError as exc:
            self.status.value += f"\n{exc}"
            return
        if not regions:
            return
        boxes = region_boxes(regions, planes=image.ndim == 3)

        def outline() -> None:  # in the next turn of the event loop: Load's own call stays short
            if image not in self.viewer.layers:
                return
            # A light tint shows them far out (an edge would be under a screen pixel), a thin edge close up.
            self.viewer.add_shapes(boxes, shape_type="rectangle", edge_color="yellow", face_color=[1, 1, 0, 0.15],
                                   edge_width=max(2, max(shape[1:3]) // 4000), scale=image.scale,
                                   translate=image.translate, name=f"{image.name} corrected regions",
                                   metadata=linked_meta("corrected regions", image))
            self.viewer.layers.selection.active = image

        QTimer.singleShot(0, outline)
        where = "; ".join(f"slice {z}, y {y0:,}-{y1:,}, x {x0:,}-{x1:,}" for z, (y0, y1, x0, x1) in regions[:3])
        more = f" and {len(regions) - 3} more" if len(regions) > 3 else ""
        self.status.value += (f"\nCorrected before: {len(regions)} region(s) ({where}{more}), tinted yellow. Centre "
                              "the view on one and Predict to reopen it with your corrections.")

    def _offer_volume_restore(self, folder: Path, path: Path, image) -> None:
        """A volume's prediction lives in a zarr store beside it, its slice lists in
        its corrections folder (`core.corrections.load_volume_state`)."""
        try:
            state = load_volume_state(folder)
        except ValueError as exc:
            self.status.value += f"\n{exc}"
            return
        if state is None or not state.labels or not Path(state.labels).is_dir():
            return
        count = len(state.corrected_slices)
        self.status.value += f"\nSaved prediction and corrections found ({count} corrected slice(s), {state.saved})."
        self.restore_button.visible = True
        self._pending_volume = (state, folder, str(path), image)

    def _restore_volume(self) -> Layer | None:
        """Show the volume's prediction store again (read on demand) with its slice lists."""
        state, folder, source, image = self._pending_volume
        labels_path = Path(state.labels)
        try:
            labels = open_volume_labels(state, lazy_stack(image).shape[:3], image.name)
            edited = load_volume_edits(folder)
        except (OSError, ValueError) as exc:
            self.status.value = str(exc)
            return None
        layer, tracker = self._add_restored(image, labels, state.corrected_slices, state.edited_slices, edited,
                                            image_source=source, store=str(folder), labels=str(labels_path))
        self.status.value = f"Restored '{layer.name}' ({labels_path}) with {len(tracker.corrected)} corrected slice(s)."
        return layer

    def _add_restored(self, image, data, corrected: list[int], edited: list[int], edited_pixels,
                      **meta) -> tuple[Layer, object]:
        """Add restored labels as the image's prediction layer and bring back its slice
        lists and edited pixels; the offer to restore is then withdrawn."""
        meta = linked_meta("prediction", image, kind="fundus" if image.rgb else "em", **meta)
        layer = self.viewer.add_labels(data, name=f"{image.name} prediction", colormap=label_colormap("prediction"),
                                       opacity=0.5, metadata=meta)
        tracker = self.session.tracker(layer)
        tracker.restore(corrected, edited, edited_pixels)
        self.restore_button.visible = False
        self._pending_restore = self._pending_volume = None
        return layer, tracker

    def restore_corrections(self) -> Layer | None:
        """Add the saved corrections as a Labels layer; restore corrected slices and edited pixels."""
        if self._pending_volume is not None:
            return self._restore_volume()
        if self._pending_restore is None:
            return None
        store, source, image = self._pending_restore
        try:
            labels, state, edited_pixels = store.load_for(image.data.shape[:-1] if image.rgb else image.data.shape,
                                                          image.name)
        except ValueError as exc:
            self.status.value = str(exc)
            return None
        layer, tracker = self._add_restored(image, np.asarray(labels), state.get("corrected_slices", []),
                                            state.get("edited_slices", []), edited_pixels, image_source=source)
        self.status.value = f"Restored {len(tracker.corrected)} corrected slice(s) into '{layer.name}'."
        return layer

