"""Fixtures for the training tests: a tiny CelebA-layout dataset and its prepared chips."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.training.tiny_celeba import TinyCeleba, make_tiny_celeba

# The prepared fixture's shard size: small enough that every split of the tiny dataset is cut
# into more than one shard where it can be (train has 23 images: shards of 8, 8 and 7).
TINY_SHARD_SIZE = 8


@pytest.fixture(scope="session")
def tiny_celeba(tmp_path_factory: pytest.TempPathFactory) -> TinyCeleba:
    """6 identities x 5 face images, 2 no-face images and 1 corrupt file, in CelebA's layout.

    4 identities are in train, 1 in validation and 1 in test (Kaggle's list_eval_partition.csv);
    the no-face and corrupt images are labelled with train identities. Do not modify it: copy it.
    """
    return make_tiny_celeba(tmp_path_factory.mktemp("tiny_celeba"), corrupt_images=1)


@pytest.fixture(scope="session")
def tiny_prepared(
    tiny_celeba: TinyCeleba, default_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """``python -m training prepare`` output for ``tiny_celeba`` (its partition file, JPEG chips,
    the default model's template, shards of 8 images, in this process). Do not modify: copy it.
    """
    from training.data.prepare import prepare_dataset

    output = tmp_path_factory.mktemp("tiny_prepared")
    prepare_dataset(
        output_dir=output,
        images_dir=tiny_celeba.images_dir,
        identity_file=tiny_celeba.identity_file,
        partition_file=tiny_celeba.partition_file,
        alignment_model=default_model_dir,
        workers=0,
        shard_size=TINY_SHARD_SIZE,
    )
    return output
