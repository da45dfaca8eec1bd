"""Where inference runs: TensorFlow's device choice, made once before the model loads."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

logger = logging.getLogger(__name__)

DeviceChoice = Literal["auto", "cpu", "gpu"]


@dataclass(frozen=True)
class Device:
    tensorflow_name: str  # e.g. "GPU:0" or "CPU:0", for the detector
    description: str  # for the log, e.g. "GPU:0 (NVIDIA H200)"


def configure_device(choice: DeviceChoice) -> Device:
    """Applies the choice to TensorFlow and turns on memory growth on every GPU.

    With memory growth TensorFlow takes GPU memory as it needs it instead of nearly all of it at
    start, so the detector, the model and other processes can share the card. Both settings only
    take effect before TensorFlow first touches the GPU; when it already has (a second app in one
    process), the current state is kept and logged.
    """
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if choice == "gpu" and not gpus:
        raise RuntimeError(
            "FACEVERIFY_DEVICE is gpu but TensorFlow sees no GPU; check the driver and CUDA "
            "libraries, or set FACEVERIFY_DEVICE=auto or cpu."
        )
    if choice == "cpu" or not gpus:
        if gpus:
            try:
                tf.config.set_visible_devices([], "GPU")
            except RuntimeError:
                logger.warning(
                    "TensorFlow has already initialised the GPU; it stays visible to the model"
                )
        return Device("CPU:0", "CPU")
    for gpu in gpus:
        if tf.config.experimental.get_memory_growth(gpu):
            continue
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            logger.warning(
                "TensorFlow has already initialised %s; its memory growth stays off", gpu.name
            )
    details = tf.config.experimental.get_device_details(gpus[0])
    name = details.get("device_name", gpus[0].name)
    return Device("GPU:0", f"GPU:0 ({name})")
