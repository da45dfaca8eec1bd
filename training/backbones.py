"""The tower backbones by name; kept free of heavy imports so the command line lists them fast."""

from __future__ import annotations

DLIB_BACKBONE = "dlib_resnet"
# Command-line name -> keras.applications constructor.
EFFICIENTNETS = {f"efficientnet_b{index}": f"EfficientNetB{index}" for index in range(8)}
DENSENET = "densenet121"
BACKBONES: tuple[str, ...] = (DLIB_BACKBONE, *EFFICIENTNETS, DENSENET)
