"""The prepared dataset's format: records, chips, the manifest and reading a split back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from app.pipeline.metadata import AlignmentInfo
from training.data import records
from training.data.records import (
    CHIP_FORMATS,
    MANIFEST_FILE,
    SHARDS_DIR,
    SPLITS,
    PreparedManifest,
    SourceInfo,
    SplitInfo,
    decode_chip,
    decode_chip_tensor,
    encode_chip,
    load_split,
    parse_example,
    read_manifest,
    serialize_example,
    write_manifest,
)

TEMPLATE = ((46.9, 44.0), (99.7, 43.8), (72.8, 76.7), (49.6, 100.2), (96.9, 99.8))


def smooth_chip(seed: int = 0) -> npt.NDArray[np.uint8]:
    """A 150x150 RGB chip with smooth content, which JPEG keeps close to the original."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:150, 0:150]
    colours = rng.uniform(0.3, 1.0, size=3)
    chip = np.stack([(rows + cols) * colours[0], rows * colours[1] * 1.5, cols * colours[2]], -1)
    clipped: npt.NDArray[np.uint8] = np.clip(chip, 0, 255).astype(np.uint8)
    return clipped


def make_manifest(**overrides: object) -> PreparedManifest:
    fields: dict[str, object] = {
        "chip_size": (150, 150),
        "chip_format": "jpeg",
        "alignment": AlignmentInfo(template=TEMPLATE),
        "alignment_model": "models/dlib_resnet_v1/1",
        "detector": {"max_side": 640, "min_face_size": 20, "min_score": 0.8},
        "source": SourceInfo(kind="folder", images="/photos"),
        "split_method": "seeded_by_identity",
        "split_seed": 0,
        "splits": {
            split: SplitInfo(images=0, chips=0, identities=0, missing_faces=0, shards=())
            for split in SPLITS
        },
        "excluded_identities": 0,
        "fingerprint": "0" * 64,
        "created_at": "2026-01-01T00:00:00+00:00",
    }
    fields.update(overrides)
    return PreparedManifest.model_validate(fields)


@pytest.mark.parametrize("chip_format", CHIP_FORMATS)
def test_a_record_round_trips_through_tensorflow_and_pillow(chip_format):
    import tensorflow as tf

    chip = smooth_chip()
    encoded = encode_chip(chip, chip_format)
    serialized = serialize_example(chip=encoded, identity="2880", source="Zoë/0001.jpg")

    parsed = parse_example(tf.constant(serialized))
    assert parsed["chip"].numpy() == encoded
    assert parsed["identity"].numpy().decode("utf-8") == "2880"
    assert parsed["source"].numpy().decode("utf-8") == "Zoë/0001.jpg"
    batch = parse_example(tf.constant([serialized, serialized]))
    assert batch["chip"].shape == (2,)

    decoded = decode_chip(encoded)
    assert decoded.shape == (150, 150, 3) and decoded.dtype == np.uint8
    in_tensorflow = decode_chip_tensor(parsed["chip"], chip_format=chip_format).numpy()
    assert np.array_equal(decoded, in_tensorflow)
    difference = np.abs(decoded.astype(int) - chip.astype(int))
    if chip_format == "png":
        assert difference.max() == 0
    else:
        assert encoded[:2] == b"\xff\xd8"
        assert difference.mean() < 2.0


def test_encode_chip_refuses_an_unknown_format():
    with pytest.raises(ValueError, match="Unknown chip format 'gif'"):
        encode_chip(smooth_chip(), "gif")  # type: ignore[arg-type]


def test_a_manifest_round_trips_and_keeps_the_split_order(tmp_path):
    manifest = make_manifest(
        splits={
            "test": SplitInfo(images=1, chips=1, identities=1, missing_faces=0, shards=("t",)),
            "train": SplitInfo(images=3, chips=2, identities=2, missing_faces=1, shards=("a",)),
            "validation": SplitInfo(images=0, chips=0, identities=0, missing_faces=0, shards=()),
        }
    )
    assert list(manifest.splits) == list(SPLITS)
    write_manifest(tmp_path, manifest)
    assert read_manifest(tmp_path) == manifest
    assert not list(tmp_path.glob("*.partial"))


def test_a_missing_manifest_says_how_to_make_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m training prepare"):
        read_manifest(tmp_path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda raw: raw["splits"].pop("validation"), "splits must be exactly"),
        (lambda raw: raw.update(format_version=2), "format_version"),
        (lambda raw: raw.update(unexpected=1), "unexpected"),
        (lambda raw: raw.update(chip_format="gif"), "chip_format"),
        (lambda raw: raw["splits"]["train"].update(images=-1), "images"),
    ],
)
def test_an_invalid_manifest_is_refused_with_advice(tmp_path, change, message):
    raw = json.loads(make_manifest().model_dump_json())
    change(raw)
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(raw), encoding="utf-8")
    with pytest.raises(ValueError, match="--overwrite") as error:
        read_manifest(tmp_path)
    assert message in str(error.value)


def write_prepared(root: Path, shards: dict[str, list[list[tuple[str, str]]]]) -> dict[str, bytes]:
    """Writes shards of (identity, source) records with distinct chips and their manifest."""
    import tensorflow as tf

    (root / SHARDS_DIR).mkdir(parents=True)
    chips: dict[str, bytes] = {}
    infos = {}
    for split in SPLITS:
        names = []
        for index, rows in enumerate(shards.get(split, [])):
            name = f"{records.shard_stem(split, index)}.tfrecord"
            with tf.io.TFRecordWriter(str(root / SHARDS_DIR / name)) as writer:
                for identity, source in rows:
                    chips[source] = encode_chip(smooth_chip(len(chips)), "png")
                    writer.write(
                        serialize_example(chip=chips[source], identity=identity, source=source)
                    )
            names.append(name)
        count = sum(len(rows) for rows in shards.get(split, []))
        infos[split] = SplitInfo(
            images=count, chips=count, identities=0, missing_faces=0, shards=tuple(names)
        )
    write_manifest(root, make_manifest(splits=infos, chip_format="png"))
    return chips


def test_load_split_reads_every_shard_in_manifest_order(tmp_path):
    train = [[("1", "b.jpg"), ("2", "a.jpg")], [("1", "c.jpg")], []]
    chips = write_prepared(tmp_path, {"train": train, "test": [[("3", "d.jpg")]]})

    data = load_split(tmp_path, "train")
    assert len(data) == 3
    assert data.sources.tolist() == ["b.jpg", "a.jpg", "c.jpg"]
    assert data.identities.tolist() == ["1", "2", "1"]
    assert data.chips.dtype == object and data.identities.dtype.kind == "U"
    assert [bytes(chip) for chip in data.chips] == [chips[name] for name in data.sources]

    empty = load_split(tmp_path, "validation")
    assert len(empty) == 0 and empty.chips.shape == (0,)


def test_load_split_refuses_an_unknown_split_and_missing_shards(tmp_path):
    write_prepared(tmp_path, {"train": [[("1", "a.jpg")]]})
    with pytest.raises(ValueError, match="Unknown split 'dev'"):
        load_split(tmp_path, "dev")
    (tmp_path / SHARDS_DIR / "train-00000.tfrecord").unlink()
    with pytest.raises(FileNotFoundError, match="run `python -m training prepare` again"):
        load_split(tmp_path, "train")
