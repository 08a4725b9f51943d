"""Montage slices in the widgets: one region at a time is predicted, painted and saved by
chunk (`core.regions`), as a Labels layer placed over the montage where it belongs."""

from __future__ import annotations

import numpy as np
from napari.layers import Image, Labels

from ..core.corrections import corrections_folder
from ..core.regions import MontageCorrections, region_around
from ._layers import label_colormap, layer_uid, linked_meta, plugin_meta, spatial_ndim


def region_of(layer) -> tuple[int, tuple[int, int, int, int]] | None:
    """(z, (y0, y1, x0, x1)) of a montage region's Labels layer, None for other layers."""
    meta = plugin_meta(layer).get("region")
    return None if meta is None else (int(meta[0]), tuple(int(v) for v in meta[1:]))


def montage_corrections(image: Image, shape: tuple, root=None) -> MontageCorrections:
    """The corrections of a montage image (beside its file, or in the folder chosen in Correct).

    Raises:
        ValueError: they cannot be read, or belong to a montage of another shape.
    """
    folder = corrections_folder(plugin_meta(image).get("source"), layer_uid(image), root) / "montage"
    return MontageCorrections(folder, tuple(shape[:3]))


def region_in_view(viewer, image: Image, shape: tuple, size: int) -> tuple[int, tuple[int, int, int, int]]:
    """(z, region) of the slice on screen around the centre of the view, ``size`` a side (the
    session's ``sizes.correct_region``; `core.regions.region_around`)."""
    point = list(viewer.dims.point)
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera  # napari >= 0.9: scene.camera
    point[-2:] = list(camera.center)[-2:]
    data = image.world_to_data(point[-image.ndim:])
    z = int(round(data[0])) if spatial_ndim(image) == 3 else 0
    z = max(0, min(z, shape[0] - 1))
    return z, region_around(tuple(shape[1:3]), (data[-2], data[-1]), size)


def add_region_layer(viewer, image: Image, z: int, region, mask: np.ndarray, model_name: str,
                     corrections: MontageCorrections) -> Labels:
    """A Labels layer of one region of slice z, over the montage where it belongs.

    Args:
        mask: (h, w) uint8, the region's labels (saved corrections included).
    """
    y0, y1, x0, x1 = region
    three_d = spatial_ndim(image) == 3
    scale, translate = np.asarray(image.scale, float), np.asarray(image.translate, float)
    offset = np.array(([z] if three_d else []) + [y0, x0], float)
    where = f" of slice {z}" if three_d else ""
    meta = linked_meta("prediction", image, model=model_name, kind="em",
                       image_source=plugin_meta(image).get("source", ""), region=[z, y0, y1, x0, x1],
                       montage=str(corrections.folder), montage_shape=list(corrections.shape))
    return viewer.add_labels(mask[None] if three_d else mask, name=f"{image.name} prediction y {y0:,}-{y1:,}, "
                             f"x {x0:,}-{x1:,}{where}", scale=scale, translate=translate + offset * scale,
                             colormap=label_colormap("prediction"), opacity=0.5, metadata=meta)


def region_layers(viewer, image: Image) -> list[Labels]:
    """The montage region layers of ``image`` open in the viewer."""
    uid = layer_uid(image)
    return [layer for layer in viewer.layers if isinstance(layer, Labels) and region_of(layer) is not None
            and plugin_meta(layer).get("link") == uid]


def save_region(layer: Labels, corrected: bool, edited: np.ndarray | None, painted: np.ndarray) -> MontageCorrections:
    """Save a region layer's corrections by chunk (`MontageCorrections.write`).

    Args:
        corrected: whether the region counts as corrected (learnt by a fine-tune).
        edited: (h, w) bool, every pixel painted, or None; painted: those since the last save.
    """
    meta = plugin_meta(layer)
    z, region = region_of(layer)
    store = MontageCorrections(meta["montage"], tuple(meta["montage_shape"]))
    labels = np.asarray(layer.data).reshape(painted.shape)
    store.write(z, region, labels, np.zeros(painted.shape, bool) if edited is None else edited, painted, corrected)
    return store
