"""Online pair sampling: fresh, balanced same/different pairs for every epoch.

Each epoch draws new pairs from a generator seeded by (seed, epoch), so a run is reproducible and
a resumed run sees the pairs an uninterrupted one would have. Same-person pairs take an anchor
uniformly among the examples whose identity has at least two, and a second example of the same
identity; different-person pairs take an anchor uniformly among all examples and a partner of
another identity. Optionally a share of the different-person pairs are hard negatives: within a
random pool of examples embedded with the current tower, each anchor is paired with the nearest
example of another identity.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

IndexArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class PairIndices:
    """Pairs as indices into the examples, with 1.0 for the same person and 0.0 otherwise."""

    first: IndexArray
    second: IndexArray
    same: npt.NDArray[np.float32]

    def __len__(self) -> int:
        return int(self.first.size)


class PairSampler:
    """Draws balanced pairs of example indices from the examples' identity labels."""

    def __init__(
        self,
        identities: npt.ArrayLike,
        *,
        seed: int,
        pairs_per_epoch: int | None = None,
        hard_negative_fraction: float = 0.0,
        hard_negative_pool: int = 2048,
    ) -> None:
        labels = np.asarray(identities)
        if labels.ndim != 1 or labels.size < 2:
            raise ValueError("Pair sampling needs a flat list of at least two identity labels.")
        if not 0.0 <= hard_negative_fraction <= 1.0:
            raise ValueError(
                f"The hard-negative fraction must be in [0, 1], got {hard_negative_fraction}."
            )
        if hard_negative_pool < 2:
            raise ValueError(
                f"The hard-negative pool must be at least 2, got {hard_negative_pool}."
            )
        _, self._codes = np.unique(labels, return_inverse=True)
        counts = np.bincount(self._codes)
        if counts.size < 2:
            raise ValueError("Pair sampling needs at least two identities for different pairs.")
        # Examples of each identity, and which examples can anchor a same-person pair.
        order = np.argsort(self._codes, kind="stable")
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self._by_identity_order = order
        self._starts = starts
        self._counts = counts
        # Each example's rank among its identity's examples, to step to another of them.
        self._ranks = np.empty(labels.size, dtype=np.int64)
        self._ranks[order] = np.arange(labels.size) - np.repeat(starts, counts)
        self._same_anchors = np.flatnonzero(counts[self._codes] >= 2)
        if self._same_anchors.size == 0:
            raise ValueError(
                "No identity has two examples, so there are no same-person pairs; each person "
                "needs at least two photos with a face found."
            )
        self.seed = seed
        self.size = int(labels.size)
        self.pairs_per_epoch = pairs_per_epoch if pairs_per_epoch is not None else self.size
        if self.pairs_per_epoch < 2:
            raise ValueError(f"pairs_per_epoch must be at least 2, got {self.pairs_per_epoch}.")
        self.hard_negative_fraction = hard_negative_fraction
        self.hard_negative_pool = hard_negative_pool

    @property
    def identity_codes(self) -> IndexArray:
        """Each example's identity as an integer code."""
        return self._codes.astype(np.int64)

    def rng(self, epoch: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch])

    def hard_negative_candidates(self, epoch: int) -> IndexArray:
        """The examples to embed for this epoch's hard negatives (empty when mining is off)."""
        if self.hard_negative_fraction == 0.0:
            return np.zeros(0, dtype=np.int64)
        pool = min(self.hard_negative_pool, self.size)
        # A generator of its own, so the pairs do not depend on whether mining is on.
        rng = np.random.default_rng([self.seed, epoch, 1])
        return np.sort(rng.choice(self.size, size=pool, replace=False)).astype(np.int64)

    def epoch_pairs(
        self, epoch: int, *, candidate_embeddings: npt.ArrayLike | None = None
    ) -> PairIndices:
        """The shuffled pairs of one epoch: half same-person, half different-person.

        ``candidate_embeddings``: the embeddings of ``hard_negative_candidates(epoch)``, in order,
        when hard-negative mining is on; without them every different pair is random.
        """
        rng = self.rng(epoch)
        same_count = self.pairs_per_epoch // 2
        different_count = self.pairs_per_epoch - same_count
        same_first, same_second = self._same_pairs(rng, same_count)
        hard_count = 0
        hard_first = hard_second = np.zeros(0, dtype=np.int64)
        if candidate_embeddings is not None and self.hard_negative_fraction > 0:
            hard_count = int(round(different_count * self.hard_negative_fraction))
            hard_first, hard_second = self._hard_pairs(
                rng, hard_count, self.hard_negative_candidates(epoch), candidate_embeddings
            )
            hard_count = int(hard_first.size)
        random_first, random_second = self._different_pairs(rng, different_count - hard_count)
        first = np.concatenate([same_first, hard_first, random_first])
        second = np.concatenate([same_second, hard_second, random_second])
        same = np.concatenate(
            [np.ones(same_count, np.float32), np.zeros(different_count, np.float32)]
        )
        order = rng.permutation(first.size)
        return PairIndices(first=first[order], second=second[order], same=same[order])

    def _same_pairs(self, rng: np.random.Generator, count: int) -> tuple[IndexArray, IndexArray]:
        anchors = rng.choice(self._same_anchors, size=count)
        codes = self._codes[anchors]
        counts = self._counts[codes]
        # Another example of the anchor's identity: a random offset past the anchor's own rank.
        ranks = self._ranks[anchors]
        offsets = rng.integers(1, counts)
        partner_ranks = (ranks + offsets) % counts
        partners = self._by_identity_order[self._starts[codes] + partner_ranks]
        return anchors.astype(np.int64), partners.astype(np.int64)

    def _different_pairs(
        self, rng: np.random.Generator, count: int
    ) -> tuple[IndexArray, IndexArray]:
        anchors = rng.integers(0, self.size, size=count)
        partners = rng.integers(0, self.size, size=count)
        # Redraw the partners that share the anchor's identity until none do.
        clash = self._codes[anchors] == self._codes[partners]
        while np.any(clash):
            partners[clash] = rng.integers(0, self.size, size=int(np.count_nonzero(clash)))
            clash = self._codes[anchors] == self._codes[partners]
        return anchors.astype(np.int64), partners.astype(np.int64)

    def _hard_pairs(
        self,
        rng: np.random.Generator,
        count: int,
        candidates: IndexArray,
        embeddings: npt.ArrayLike,
    ) -> tuple[IndexArray, IndexArray]:
        vectors = np.asarray(embeddings, dtype=np.float32)
        if vectors.shape[0] != candidates.size:
            raise ValueError(
                f"Got {vectors.shape[0]} embeddings for {candidates.size} hard-negative candidates."
            )
        if count == 0 or candidates.size < 2:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        squared = np.sum(vectors**2, axis=1)
        distances = squared[:, None] + squared[None, :] - 2.0 * vectors @ vectors.T
        codes = self._codes[candidates]
        distances[codes[:, None] == codes[None, :]] = np.inf
        nearest = np.argmin(distances, axis=1)
        usable = np.flatnonzero(np.isfinite(distances[np.arange(candidates.size), nearest]))
        if usable.size == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        chosen = rng.choice(usable, size=count)
        return candidates[chosen], candidates[nearest[chosen]]
