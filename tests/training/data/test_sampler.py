"""The online pair sampler: balance, labels, seeding and hard negatives."""

from __future__ import annotations

import numpy as np
import pytest

from training.data.sampler import PairSampler


def _identities() -> np.ndarray:
    # Seven identities with 1 to 7 examples: one with a single example can never anchor a same pair.
    return np.repeat([f"person{index}" for index in range(7)], np.arange(1, 8))


def test_pairs_are_balanced_and_correctly_labelled() -> None:
    identities = _identities()
    sampler = PairSampler(identities, seed=0, pairs_per_epoch=1001)
    pairs = sampler.epoch_pairs(0)
    assert len(pairs) == 1001
    assert int(pairs.same.sum()) == 500
    same = pairs.same.astype(bool)
    assert np.all(identities[pairs.first[same]] == identities[pairs.second[same]])
    assert np.all(pairs.first[same] != pairs.second[same])
    assert np.all(identities[pairs.first[~same]] != identities[pairs.second[~same]])
    # The singleton identity only ever appears in different pairs.
    singleton = np.flatnonzero(identities == "person0")
    assert not np.isin(pairs.first[same], singleton).any()


def test_pairs_are_seeded_per_epoch() -> None:
    sampler = PairSampler(_identities(), seed=3, pairs_per_epoch=200)
    again = PairSampler(_identities(), seed=3, pairs_per_epoch=200)
    first, repeat, later = sampler.epoch_pairs(0), again.epoch_pairs(0), sampler.epoch_pairs(1)
    assert np.array_equal(first.first, repeat.first)
    assert np.array_equal(first.second, repeat.second)
    assert not np.array_equal(first.first, later.first)
    other_seed = PairSampler(_identities(), seed=4, pairs_per_epoch=200).epoch_pairs(0)
    assert not np.array_equal(first.first, other_seed.first)


def test_same_pairs_cover_every_partner() -> None:
    identities = np.repeat(["a", "b"], 3)
    pairs = PairSampler(identities, seed=0, pairs_per_epoch=2000).epoch_pairs(0)
    same = pairs.same.astype(bool)
    seen = {(int(a), int(b)) for a, b in zip(pairs.first[same], pairs.second[same], strict=True)}
    expected = {(a, b) for a in range(6) for b in range(6) if a != b and a // 3 == b // 3}
    assert seen == expected


def test_hard_negatives_are_the_nearest_other_identity() -> None:
    identities = np.repeat(["a", "b", "c"], 4)
    sampler = PairSampler(
        identities, seed=0, pairs_per_epoch=40, hard_negative_fraction=1.0, hard_negative_pool=12
    )
    candidates = sampler.hard_negative_candidates(0)
    assert np.array_equal(candidates, np.arange(12))
    # Identity a sits at 0, b at 1, c far away at 10: a's hardest negatives are b and vice versa.
    positions = np.array([0.0] * 4 + [1.0] * 4 + [10.0] * 4)
    embeddings = np.stack([positions, np.zeros(12)], axis=1)
    pairs = sampler.epoch_pairs(0, candidate_embeddings=embeddings)
    different = ~pairs.same.astype(bool)
    assert int(different.sum()) == 20
    for anchor, partner in zip(pairs.first[different], pairs.second[different], strict=True):
        expected = {"a": "b", "b": "a", "c": "b"}[identities[anchor]]
        assert identities[partner] == expected
    # Without embeddings the same sampler falls back to random negatives.
    random_pairs = sampler.epoch_pairs(0)
    assert not np.array_equal(random_pairs.second, pairs.second)


@pytest.mark.parametrize(
    ("identities", "message"),
    [
        (["a"], "at least two identity labels"),
        (["a", "a", "a"], "at least two identities"),
        (["a", "b", "c"], "no same-person pairs"),
    ],
)
def test_unusable_labels_are_refused(identities: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PairSampler(identities, seed=0)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="hard-negative fraction"):
        PairSampler(_identities(), seed=0, hard_negative_fraction=1.5)
    with pytest.raises(ValueError, match="pairs_per_epoch"):
        PairSampler(_identities(), seed=0, pairs_per_epoch=1)
