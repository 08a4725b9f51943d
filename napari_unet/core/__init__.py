"""The science of napari-unet: model, data, losses, training, tiled prediction, metrics.

Nothing in this subpackage imports Qt, napari or magicgui, so it runs headless (CLI,
servers, GPU machines without a display).
"""
