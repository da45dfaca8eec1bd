"""Embed aligned face chips with an exported SavedModel embedding tower."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from app.pipeline.errors import ModelLoadError
from app.pipeline.metadata import ModelMetadata, read_metadata

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]


def flip_averaged(
    embed: Callable[[npt.NDArray[Any]], npt.ArrayLike], chips: npt.ArrayLike
) -> FloatArray:
    """The mean of the embeddings of each chip and of its mirror image, in one call of ``embed``.

    Models whose metadata asks for flip augmentation are calibrated on these averages, so serving,
    evaluation and training all compute them here.
    """
    batch = np.asarray(chips)
    both = np.asarray(embed(np.concatenate([batch, batch[:, :, ::-1]])), dtype=np.float32)
    return np.asarray((both[: len(batch)] + both[len(batch) :]) / 2.0, dtype=np.float32)


class Embedder:
    """Loads ``<model_dir>`` (SavedModel + metadata.json) once and embeds batches of chips.

    Chips are RGB, ``[N, rows, cols, 3]`` as in ``metadata.input_size``, uint8 or float in 0..255.
    The model's own normalisation runs inside its serving signature.
    """

    def __init__(self, model_dir: str | Path, *, max_batch_size: int = 64) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}.")
        self.model_dir = Path(model_dir)
        self.metadata: ModelMetadata = read_metadata(self.model_dir)
        self.max_batch_size = max_batch_size
        # TensorFlow is imported here, not at module import, so importing the pipeline is cheap.
        import tensorflow as tf

        self._tf = tf
        try:
            self._loaded = tf.saved_model.load(str(self.model_dir))
        except (OSError, ValueError, tf.errors.OpError) as error:
            raise ModelLoadError(
                f"{self.model_dir} holds no loadable SavedModel ({type(error).__name__})."
            ) from error
        signature = self.metadata.signature
        try:
            self._serve = self._loaded.signatures[signature.name]
        except KeyError:
            raise ModelLoadError(
                f"The SavedModel in {self.model_dir} has no signature {signature.name!r}."
            ) from None
        self._serve_uint8 = (
            self._loaded.signatures.get(signature.uint8_name) if signature.uint8_name else None
        )
        # Concurrent callers share one model; TensorFlow's functions are thread-safe, the lock only
        # keeps large batches from interleaving and multiplying peak memory.
        self._lock = threading.Lock()
        logger.info(
            "Loaded model %s version %s from %s",
            self.metadata.name,
            self.metadata.version,
            self.model_dir,
        )

    @property
    def input_shape(self) -> tuple[int, int, int]:
        rows, cols = self.metadata.input_size
        return rows, cols, 3

    def embed(self, chips: npt.ArrayLike) -> FloatArray:
        """Returns float32 embeddings ``[N, embedding_size]`` for chips ``[N, rows, cols, 3]``."""
        batch = np.asarray(chips)
        if batch.ndim == 3:
            batch = batch[np.newaxis]
        if batch.ndim != 4 or batch.shape[1:] != self.input_shape:
            raise ValueError(
                f"Chips must have shape [N, {', '.join(map(str, self.input_shape))}], "
                f"got {list(batch.shape)}."
            )
        if batch.shape[0] == 0:
            return np.zeros((0, self.metadata.embedding_size), dtype=np.float32)
        outputs = [
            self._run(batch[start : start + self.max_batch_size])
            for start in range(0, batch.shape[0], self.max_batch_size)
        ]
        return np.concatenate(outputs, axis=0)

    def _run(self, batch: npt.NDArray[Any]) -> FloatArray:
        signature = self.metadata.signature
        if batch.dtype == np.uint8 and self._serve_uint8 is not None:
            serve, tensor = self._serve_uint8, self._tf.constant(batch)
        else:
            serve, tensor = self._serve, self._tf.constant(batch, dtype=self._tf.float32)
        with self._lock:
            result = serve(**{signature.input: tensor})
        return np.asarray(result[signature.output].numpy(), dtype=np.float32)
