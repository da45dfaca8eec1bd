"""Reading and building verification pairs."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import pytest

from training.pairs import Pair, make_pairs, read_identity_file, read_pairs, write_pairs_csv

ROOT = Path("/data/lfw")


def write(tmp_path: Path, text: str, name: str = "pairs.txt") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_reads_lfw_pairs_with_a_folds_header(tmp_path: Path) -> None:
    text = "10 300\nAbel_Pacheco\t1\t4\n\nAaron_Peirsol 2  Ben_Affleck\t13\n"
    pairs = read_pairs(write(tmp_path, text), images_root=ROOT)
    assert pairs == [
        Pair(
            ROOT / "Abel_Pacheco/Abel_Pacheco_0001.jpg",
            ROOT / "Abel_Pacheco/Abel_Pacheco_0004.jpg",
            same=True,
        ),
        Pair(
            ROOT / "Aaron_Peirsol/Aaron_Peirsol_0002.jpg",
            ROOT / "Ben_Affleck/Ben_Affleck_0013.jpg",
            same=False,
        ),
    ]


@pytest.mark.parametrize("header", ["", "2\n", "1 1\n"])
def test_lfw_header_is_optional(tmp_path: Path, header: str) -> None:
    pairs = read_pairs(write(tmp_path, header + "A 1 2\nA 1 B 1\n"), images_root=ROOT)
    assert [pair.same for pair in pairs] == [True, False]


def test_warns_when_the_header_count_disagrees(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        read_pairs(write(tmp_path, "10 300\nA 1 2\n"), images_root=ROOT)
    assert "announces 6000 pairs but the file has 1" in caplog.text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("A 1 2\nA 1\n", "line 2: expected 'name i j'"),
        ("A 1 2\nA 1 B\n", "line 2: image number 'B'"),
        ("A 1 2\n\nA 1 B 2 C\n", "line 3: expected"),
        ("A one 2\n", "line 1: image number 'one'"),
        ("A 0 2\n", "line 1: image number '0'"),
        ("", "has no pairs"),
        ("10 300\n", "header but no pairs"),
    ],
)
def test_rejects_malformed_lfw_lines(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        read_pairs(write(tmp_path, text), images_root=ROOT)


def test_reads_csv_pairs(tmp_path: Path) -> None:
    text = (
        "path_a,path_b,same\n"
        "a/1.jpg,a/2.jpg,1\n"
        "\n"
        "a/1.jpg,/abs/b.jpg,No\n"
        "x.jpg, y.jpg ,TRUE\n"
        "x.jpg,y.jpg,false\n"
        "x.jpg,y.jpg,yes\n"
        "x.jpg,y.jpg,0\n"
    )
    pairs = read_pairs(write(tmp_path, text, "pairs.csv"), images_root=ROOT)
    assert pairs[0] == Pair(ROOT / "a/1.jpg", ROOT / "a/2.jpg", same=True)
    assert pairs[1] == Pair(ROOT / "a/1.jpg", Path("/abs/b.jpg"), same=False)
    assert pairs[2] == Pair(ROOT / "x.jpg", ROOT / "y.jpg", same=True)
    assert [pair.same for pair in pairs] == [True, False, True, False, True, False]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("path_a,path_b,same\na.jpg,b.jpg,maybe\n", "line 2: 'same' is 'maybe'"),
        ("path_a,path_b,same\n\na.jpg,b.jpg\n", "line 3: expected 3 comma-separated"),
        ("path_a,path_b,same\na.jpg,,1\n", "line 2: an image path is empty"),
        ("path_a,path_b,label\na.jpg,b.jpg,1\n", "must have the header"),
    ],
)
def test_rejects_malformed_csv_lines(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        read_pairs(write(tmp_path, text, "pairs.csv"), images_root=ROOT)


def test_csv_round_trip(tmp_path: Path) -> None:
    root = tmp_path / "images"
    pairs = [
        Pair(root / "a" / "1.jpg", root / "a" / "2.jpg", same=True),
        Pair(root / "a" / "1.jpg", root / "b with, comma.jpg", same=False),
    ]
    written = write_pairs_csv(pairs, tmp_path / "out" / "pairs.csv", images_root=root)
    assert written.read_text().splitlines()[:2] == ["path_a,path_b,same", "a/1.jpg,a/2.jpg,1"]
    assert read_pairs(written, images_root=root) == pairs


def test_write_rejects_paths_outside_the_root(tmp_path: Path) -> None:
    pairs = [Pair(tmp_path / "a.jpg", Path("/elsewhere/b.jpg"), same=False)]
    with pytest.raises(ValueError, match="is not inside"):
        write_pairs_csv(pairs, tmp_path / "pairs.csv", images_root=tmp_path)


def labels_for(counts: dict[str, int]) -> dict[Path, str]:
    return {
        Path(f"/img/{identity}_{index}.jpg"): identity
        for identity, count in counts.items()
        for index in range(count)
    }


def test_make_pairs_is_seeded_deduplicated_and_well_formed() -> None:
    labels = labels_for({f"id{n}": 1 + n % 5 for n in range(40)})
    pairs = make_pairs(labels, same_pairs=30, different_pairs=50, seed=7)
    reordered = dict(reversed(list(labels.items())))
    assert make_pairs(reordered, same_pairs=30, different_pairs=50, seed=7) == pairs
    assert make_pairs(labels, same_pairs=30, different_pairs=50, seed=8) != pairs
    same = [pair for pair in pairs if pair.same]
    different = [pair for pair in pairs if not pair.same]
    assert (len(same), len(different)) == (30, 50)
    assert len({frozenset((pair.path_a, pair.path_b)) for pair in pairs}) == len(pairs)
    for pair in same:
        assert pair.path_a != pair.path_b
        assert labels[pair.path_a] == labels[pair.path_b]
    for pair in different:
        assert labels[pair.path_a] != labels[pair.path_b]
    # Spread: 32 identities have 2+ images, so 30 same pairs come from 30 different identities.
    assert len({labels[pair.path_a] for pair in same}) == 30
    # Shuffled, so contiguous folds mix both kinds.
    assert any(pair.same for pair in pairs[:20]) and not all(pair.same for pair in pairs[:20])


def test_make_pairs_round_robin_when_identities_run_short() -> None:
    labels = labels_for({"a": 2, "b": 3, "c": 4, "d": 1})
    pairs = make_pairs(labels, same_pairs=5, different_pairs=0, seed=0)
    per_identity = Counter(labels[pair.path_a] for pair in pairs)
    # Rounds: a, b, c each once, then b and c (a's single pair is used up).
    assert per_identity == {"a": 1, "b": 2, "c": 2}


def test_make_pairs_returns_what_exists_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    labels = labels_for({"a": 3, "b": 2, "c": 1})
    with caplog.at_level(logging.WARNING):
        pairs = make_pairs(labels, same_pairs=100, different_pairs=1000, seed=1)
    same = [pair for pair in pairs if pair.same]
    assert len(same) == 3 + 1
    # Different pairs: 3*2 + 3*1 + 2*1.
    assert len(pairs) - len(same) == 11
    assert "only 4 unique ones exist" in caplog.text
    assert "only 11 unique ones exist" in caplog.text


def test_make_pairs_dense_different_pairs_are_unique() -> None:
    labels = labels_for({"a": 4, "b": 4, "c": 4})
    pairs = make_pairs(labels, same_pairs=0, different_pairs=40, seed=3)
    assert len({frozenset((pair.path_a, pair.path_b)) for pair in pairs}) == 40


def test_make_pairs_rejects_negative_counts() -> None:
    with pytest.raises(ValueError, match="zero or positive"):
        make_pairs(labels_for({"a": 2}), same_pairs=-1, different_pairs=0, seed=0)


def test_reads_the_identity_file_for_present_images(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for name in ("000001.jpg", "000003.jpg"):
        (images / name).write_bytes(b"")
    identity_file = write(
        tmp_path, "image identity\n000001.jpg 2880\n000002.jpg 2937\n\n000003.jpg 2880\n", "id.txt"
    )
    assert read_identity_file(identity_file, images_dir=images) == {
        images / "000001.jpg": "2880",
        images / "000003.jpg": "2880",
    }
    write(tmp_path, "000001.jpg 2880\n000002.jpg\n", "bad.txt")
    with pytest.raises(ValueError, match="line 2: expected 'image identity'"):
        read_identity_file(tmp_path / "bad.txt", images_dir=images)
    with pytest.raises(ValueError, match="is not a directory"):
        read_identity_file(identity_file, images_dir=tmp_path / "nowhere")


def test_split_by_identity_is_disjoint_and_seeded() -> None:
    from training.pairs import split_by_identity

    labels = {Path(f"{index:03d}.jpg"): f"person{index % 10}" for index in range(60)}
    tuning, held_out = split_by_identity(labels, seed=3)
    assert set(tuning) | set(held_out) == set(labels)
    assert not set(tuning.values()) & set(held_out.values())
    assert len(set(tuning.values())) == 5
    assert split_by_identity(labels, seed=3) == (tuning, held_out)
    assert split_by_identity(labels, seed=4) != (tuning, held_out)
