"""Small helpers between napari layers and the core's (Z, Y, X[, C]) arrays."""

from __future__ import annotations

import uuid

import numpy as np
from napari.layers import Image, Labels
from napari.utils.colormaps import DirectLabelColormap

from ..core.labels import label_colours
from ..core.volume import Sizes


def is_montage(shape: tuple, sizes: Sizes) -> bool:
    """Whether (Z, Y, X, ...) slices are over ``sizes.gui_slice`` pixels (the session's): too
    large for one Labels layer, so corrected a region at a time (`_montage`) and ranked by the
    command line. napari reads a whole slice of a flat Labels layer to draw it (and cannot
    paint a multiscale one), which for a 40,000² montage is gigabytes on the GUI thread."""
    return shape[1] * shape[2] > sizes.gui_slice


def label_colormap(role: str) -> DirectLabelColormap:
    """Structure in the role's colour, IGNORE in grey, background transparent (`core.labels.label_colours`)."""
    return DirectLabelColormap(color_dict=label_colours(role))


def plugin_meta(layer) -> dict:
    """The plugin's own metadata on a layer (role, kind, source, links); {} when absent."""
    return layer.metadata.get("napari_unet", {}) if isinstance(layer.metadata, dict) else {}


def layer_uid(layer) -> str:
    """A stable id kept in the layer's metadata: links survive renaming the layer."""
    meta = layer.metadata.setdefault("napari_unet", {})
    if "uid" not in meta:
        meta["uid"] = uuid.uuid4().hex
    return meta["uid"]


def linked_layers(viewer, role: str, to_layer, kinds=(Image, Labels)) -> list:
    """Layers of ``role`` linked to ``to_layer`` (their ``link`` is its uid), oldest first."""
    uid = layer_uid(to_layer)
    return [layer for layer in viewer.layers
            if isinstance(layer, kinds) and plugin_meta(layer).get("role") == role
            and plugin_meta(layer).get("link") == uid]


def linked_meta(role: str, to_layer, **extra) -> dict:
    """Metadata for a new layer of ``role`` linked to ``to_layer`` (the image, or the labels)."""
    return {"napari_unet": {"role": role, "link": layer_uid(to_layer), **extra}}


def show_linked(viewer, role: str, to_layer, data, add) -> None:
    """Put ``data`` into the ``role`` layer linked to ``to_layer``, or ``add`` a new one.

    ``add(data, metadata)`` adds the layer (with its own name, colours).
    """
    existing = [layer for layer in linked_layers(viewer, role, to_layer) if layer.data.shape == data.shape]
    if existing:
        existing[-1].data = data
    else:
        add(data, linked_meta(role, to_layer))


def show_under(viewer, role: str, image: Image, labels: Labels, data: np.ndarray, **image_kwargs) -> None:
    """Show (Z, Y, X) ``data`` as the ``role`` Image layer linked to ``image`` (`show_linked`),
    under the ``labels`` being corrected, and keep those active.

    ``image_kwargs`` go to ``viewer.add_image`` when the layer is new (its name, colours).
    """
    if image not in viewer.layers:
        return

    def add(data, meta) -> None:
        added = viewer.add_image(data, metadata=meta, **image_kwargs)
        if labels in viewer.layers:  # below the labels being corrected
            viewer.layers.move(viewer.layers.index(added), viewer.layers.index(labels))

    show_linked(viewer, role, image, layer_shaped(data, spatial_ndim(labels)), add)
    if labels in viewer.layers:
        viewer.layers.selection.active = labels


def remove_linked(viewer, role: str, to_layer) -> None:
    """Remove the ``role`` layers linked to ``to_layer`` (e.g. a map as large as the image)."""
    uid = plugin_meta(to_layer).get("uid")
    for layer in [other for other in viewer.layers
                  if plugin_meta(other).get("role") == role and plugin_meta(other).get("link") == uid]:
        viewer.layers.remove(layer)


def labelled_image(viewer, labels: Labels) -> Image:
    """The image ``labels`` label: the one it is linked to (predictions are), else the only
    image of its shape.

    Raises:
        ValueError: none, or several, and none linked.
    """
    link = plugin_meta(labels).get("link")
    images = [other for other in viewer.layers if isinstance(other, Image) and link
              and plugin_meta(other).get("uid") == link]
    if not images:
        shape = labels.data.shape
        images = [other for other in viewer.layers if isinstance(other, Image)
                  and plugin_meta(other).get("role", "image") == "image"
                  and tuple(other.data.shape[:-1] if other.rgb else other.data.shape) == shape]
    if len(images) != 1:
        raise ValueError(f"Which image does '{labels.name}' label? Predict it from its image first (Predict "
                         "links the two).")
    return images[0]


def layer_choices(viewer, kinds, first_role: str | None = None, keep=None) -> list[tuple]:
    """(name, layer) choices for a combo box: layers of ``kinds`` passing ``keep``, with
    those of ``first_role`` (e.g. the prediction one corrects) listed first."""
    layers = [layer for layer in viewer.layers if isinstance(layer, kinds) and (keep is None or keep(layer))]
    layers.sort(key=lambda layer: plugin_meta(layer).get("role") != first_role)
    return [(layer.name, layer) for layer in layers]


def image_stack(layer: Image) -> np.ndarray:
    """An Image layer's data as (Z, Y, X, C), C = 3 for RGB layers.

    Raises:
        ValueError: 4D+ grey data or multiscale images.
    """
    if layer.multiscale:
        raise ValueError(f"'{layer.name}' is a multiscale image: open a single-resolution image.")
    data = np.asarray(layer.data)
    if layer.rgb:
        data = data[..., :3]
        return data[None] if data.ndim == 3 else data
    if data.ndim == 2:
        return data[None, ..., None]
    if data.ndim == 3:
        return data[..., None]
    raise ValueError(f"'{layer.name}' has {data.ndim} dimensions: use a 2D image or a 3D (Z, Y, X) stack.")


def is_lazy(layer) -> bool:
    """Whether a layer's data is read on demand (multiscale, dask, zarr) rather than held
    in memory: such images are predicted slice by slice into a store on disk."""
    return bool(getattr(layer, "multiscale", False)) or not isinstance(layer.data, np.ndarray)


def lazy_stack(layer: Image):
    """An Image layer's (finest) data as a (Z, Y, X, C) dask array, nothing read."""
    import dask.array as da

    data = layer.data[0] if layer.multiscale else layer.data
    if not isinstance(data, da.Array):
        data = da.from_array(data, chunks=(1,) * (data.ndim - 2) + tuple(data.shape[-2:]))
    if layer.rgb:
        data = data[..., :3]
        return data[None] if data.ndim == 3 else data
    if data.ndim in (2, 3):
        return data[None, ..., None] if data.ndim == 2 else data[..., None]
    raise ValueError(f"'{layer.name}' has {data.ndim} dimensions: use a 2D image or a 3D (Z, Y, X) stack.")


def labels_stack(layer: Labels) -> np.ndarray:
    """A Labels layer's data as (Z, Y, X) (a view for 3D layers)."""
    data = np.asarray(layer.data)
    if data.ndim == 2:
        return data[None]
    if data.ndim == 3:
        return data
    raise ValueError(f"'{layer.name}' has {data.ndim} dimensions: use 2D or 3D labels.")


def slice_updates(current: np.ndarray, new: np.ndarray, slices: list[int]) -> dict[int, tuple]:
    """Which pixels of ``current`` change when ``slices`` get ``new``: {z: (rows, cols, values)}.

    Reads every pixel of those slices, so it runs in a worker, not on the GUI thread.

    Args:
        current: (Z, Y, X) labels as they are; new: (len(slices), Y, X).
    """
    updates = {}
    for z, plane in zip(slices, new):
        rows, cols = np.nonzero(np.asarray(current[z]) != plane)
        if rows.size:
            updates[int(z)] = (rows, cols, plane[rows, cols])
    return updates


def layer_shaped(stack: np.ndarray, ndim: int) -> np.ndarray:
    """Back from (Z, Y, X) to a 2D layer's (Y, X) when the image is 2D."""
    return stack[0] if ndim == 2 else stack


def spatial_ndim(layer) -> int:
    return layer.data.ndim - (1 if getattr(layer, "rgb", False) else 0)


def current_slice(viewer, layer) -> int:
    """The z index the viewer shows for a 3D layer (0 for 2D)."""
    if spatial_ndim(layer) == 2:
        return 0
    z = int(round(viewer.dims.current_step[viewer.dims.ndim - 3]))
    return max(0, min(z, layer.data.shape[0] - 1))


def show_slice(viewer, z: int) -> None:
    """Move the viewer to slice ``z`` of the 3D layers (the axis `current_slice` reads)."""
    step = list(viewer.dims.current_step)
    step[viewer.dims.ndim - 3] = z
    viewer.dims.current_step = tuple(step)


def set_plane_pixels(layer: Labels, z: int, rows: np.ndarray, cols: np.ndarray, values: np.ndarray) -> None:
    """Write ``values`` at (rows, cols) of slice ``z`` of a 2D or 3D Labels layer, as one
    undoable step (``data_setitem``: Ctrl+Z undoes it)."""
    index = (rows, cols) if spatial_ndim(layer) == 2 else ((rows * 0 + z), rows, cols)
    layer.data_setitem(index, values.astype(layer.data.dtype))


def region_boxes(regions: list, planes: bool) -> list[list[list[int]]]:
    """Rectangles for a Shapes layer around (z, (y0, y1, x0, x1)) regions of a montage's
    slices: four corners each, (z, y, x) when the layer has planes, else (y, x)."""
    return [[([z] if planes else []) + corner for corner in ([y0, x0], [y0, x1], [y1, x1], [y1, x0])]
            for z, (y0, y1, x0, x1) in regions]


def follow_new_layers(viewer, widget, combos_by_role: dict) -> None:
    """Refresh ``widget``'s layer choices when layers come and go, and select new layers
    of a given role (e.g. a new prediction) in the matching combo box."""

    import weakref

    ref = weakref.ref(widget)

    def inserted(event) -> None:
        widget = ref()
        if widget is None:
            return
        widget.reset_choices()
        role = plugin_meta(event.value).get("role")
        combo = combos_by_role.get(role)
        if combo is not None:
            try:
                combo.value = event.value
            except ValueError:
                pass

    viewer.layers.events.inserted.connect(inserted)
    viewer.layers.events.removed.connect(lambda event: ref() is not None and ref().reset_choices())


def fov_of(viewer, image: Image, shape: tuple) -> np.ndarray | None:
    """(Z, Y, X) bool field of view the user gave an RGB image, or None (then it is found
    from the image): the FOV layer Predict made (perhaps edited), or a mask opened with
    the image (DRIVE's). None for grey images."""
    if not image.rgb:
        return None
    source = plugin_meta(image).get("source")
    opened_with = [layer for layer in viewer.layers if isinstance(layer, Labels) and source
                   and plugin_meta(layer).get("role") == "fov" and plugin_meta(layer).get("source") == source]
    layers = [layer for layer in linked_layers(viewer, "fov", image, Labels) + opened_with
              if labels_stack(layer).shape == shape]
    return np.array(labels_stack(layers[-1])) != 0 if layers else None
