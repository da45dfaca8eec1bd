"""Export an embedding tower as a SavedModel in TF Serving's layout, with its metadata.json.

The serving signatures take RGB chips in 0..255 and return ``{"embedding": float32 [N, D]}``:
``serving_default`` takes float32, ``serving_uint8`` takes uint8. The tower's own normalisation is
part of the graph, so callers never repeat it.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import keras

from app.pipeline.metadata import ModelMetadata

logger = logging.getLogger(__name__)


def export_saved_model(
    model: keras.Model,
    *,
    directory: str | Path,
    metadata: ModelMetadata,
    overwrite: bool = False,
) -> Path:
    """Writes the SavedModel and ``metadata.json`` to ``directory`` atomically; returns it.

    The export is written next to its destination and renamed into place, so an interrupted export
    never leaves a half-written model that looks complete.
    """
    import tensorflow as tf

    destination = Path(directory)
    if destination.exists() and not overwrite:
        raise FileExistsError(f"{destination} already exists; pass overwrite to replace it.")
    rows, cols = metadata.input_size
    if tuple(model.input_shape[1:]) != (rows, cols, 3):
        raise ValueError(
            f"The model takes {model.input_shape[1:]}, but the metadata says {rows}x{cols}x3."
        )
    signature = metadata.signature

    def serve_float(images: Any) -> dict[str, Any]:
        return {signature.output: tf.cast(model(images, training=False), tf.float32)}

    def serve_uint8(images: Any) -> dict[str, Any]:
        return serve_float(tf.cast(images, tf.float32))

    # A plain tf.Module rather than keras.export.ExportArchive, which (Keras 3.15) writes every
    # variable twice and doubles the artifact's size.
    module = tf.Module()
    module.model = model
    signatures = {}
    rows_cols = [None, rows, cols, 3]
    module.serve = tf.function(
        serve_float, input_signature=[tf.TensorSpec(rows_cols, tf.float32, name=signature.input)]
    )
    signatures[signature.name] = module.serve
    if signature.uint8_name:
        module.serve_uint8 = tf.function(
            serve_uint8, input_signature=[tf.TensorSpec(rows_cols, tf.uint8, name=signature.input)]
        )
        signatures[signature.uint8_name] = module.serve_uint8

    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}-", dir=destination.parent))
    try:
        tf.saved_model.save(module, str(staging), signatures=signatures)
        staging.chmod(0o755)  # mkdtemp makes it private; the service may run as another user
        metadata.write(staging)
        if destination.exists():
            shutil.rmtree(destination)
        staging.rename(destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("Exported %s version %s to %s", metadata.name, metadata.version, destination)
    return destination
