"""napari-unet: correct and teach a U-Net for EM membranes and fundus vessels in napari.

Importing the package stays light on purpose: no Qt, napari or torch is pulled in here.
"""

__version__ = "0.1.0"
