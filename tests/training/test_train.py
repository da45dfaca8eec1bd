"""Training end to end on a tiny generated CelebA: prepare, train, evaluate, calibrate, export, and
load the export in the service's pipeline; resuming; the input pipeline and the validation maths."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

from app.pipeline.metadata import read_metadata
from tests.training.tiny_celeba import TinyCeleba, make_tiny_celeba
from training.__main__ import main
from training.data.records import decode_chip, load_split, read_manifest
from training.data.sampler import PairIndices
from training.model import ContrastiveLoss, TowerConfig, build_tower
from training.train import (
    BEST_TOWER_WEIGHTS,
    CHECKPOINTS,
    LOG_FILE,
    STATE_FILE,
    configure_precision,
    contrastive_loss_value,
    pair_dataset,
    split_pairs,
)

# Small enough for this CPU; one epoch in the head phase (backbone frozen) runs in seconds.
TRAIN_ARGUMENTS = [
    "--epochs",
    "1",
    "--freeze-epochs",
    "1",
    "--pairs-per-epoch",
    "32",
    "--batch-size",
    "8",
    "--validation-pairs",
    "40",
    "--quiet",
]


@pytest.fixture(scope="module")
def celeba(tmp_path_factory: pytest.TempPathFactory) -> TinyCeleba:
    """8 identities x 4 faces: 4 in train, 2 in validation and 2 in test (different pairs need
    two people in a split)."""
    return make_tiny_celeba(
        tmp_path_factory.mktemp("celeba"),
        identities=8,
        images_per_identity=4,
        no_face_images=1,
        splits=(4, 2, 2),
        seed=1,
    )


@pytest.fixture(scope="module")
def trained(
    celeba: TinyCeleba, default_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """``prepare`` and ``train`` (which evaluates, calibrates and exports) through the CLI."""
    work = tmp_path_factory.mktemp("training")
    data = work / "prepared"
    prepared = main(
        [
            "prepare",
            "--images",
            str(celeba.images_dir),
            "--identity-file",
            str(celeba.identity_file),
            "--partition-file",
            str(celeba.partition_file),
            "--alignment-model",
            str(default_model_dir),
            "--output",
            str(data),
            "--workers",
            "0",
        ]
    )
    assert prepared == 0
    run = work / "runs" / "tiny"
    models = work / "models"
    code = main(
        [
            "train",
            "--data",
            str(data),
            "--run-dir",
            str(run),
            "--models-root",
            str(models),
            "--name",
            "tiny",
            *TRAIN_ARGUMENTS,
        ]
    )
    assert code == 0
    return {"data": data, "run": run, "export": models / "tiny" / "1", "models": models}


def test_training_writes_its_run_folder(trained: dict[str, Path]) -> None:
    run = trained["run"]
    state = json.loads((run / STATE_FILE).read_text())
    assert state["epochs_done"] == 1
    assert state["phase"] == "head"
    assert set(state["baseline"]) >= {"val_auc", "val_accuracy", "val_loss"}
    assert len(state["history"]) == 1
    with (run / LOG_FILE).open() as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 1
    assert {"loss", "val_auc", "val_loss", "images_per_second"} <= set(rows[0])
    assert float(rows[0]["images_per_second"]) > 0
    assert any((run / "tensorboard").rglob("events.out.tfevents.*"))
    for name in ("last.weights.h5", "last_tower.weights.h5", BEST_TOWER_WEIGHTS):
        assert (run / CHECKPOINTS / name).is_file()
    assert (run / "evaluation" / "evaluation.json").is_file()
    config = json.loads((run / "config.json").read_text())
    assert config["data_fingerprint"] == read_manifest(trained["data"]).fingerprint


def test_export_carries_calibration_evaluation_and_training(trained: dict[str, Path]) -> None:
    metadata = read_metadata(trained["export"])
    manifest = read_manifest(trained["data"])
    assert metadata.name == "tiny"
    assert metadata.input_size == (150, 150)
    assert metadata.embedding_size == 128
    assert metadata.calibration is not None
    assert metadata.threshold == metadata.calibration["threshold"] > 0
    assert "validation split" in metadata.calibration["source"]
    assert metadata.evaluation is not None
    assert metadata.evaluation["threshold"] == metadata.threshold
    assert "test split" in metadata.evaluation["pairs_source"]
    assert metadata.alignment is not None
    assert metadata.alignment.template == manifest.alignment.template
    assert metadata.provenance.source_sha256 == manifest.fingerprint
    assert metadata.training is not None
    assert metadata.training["config"]["tower"]["backbone"] == "dlib_resnet"
    assert metadata.training["data_fingerprint"] == manifest.fingerprint


def test_export_round_trips_the_trained_tower(trained: dict[str, Path]) -> None:
    from app.pipeline.embed import Embedder

    tower = build_tower(TowerConfig(), pretrained=False)
    tower.load_weights(trained["run"] / CHECKPOINTS / BEST_TOWER_WEIGHTS)
    chips = np.stack([decode_chip(chip) for chip in load_split(trained["data"], "test").chips])
    served = Embedder(trained["export"]).embed(chips)
    np.testing.assert_allclose(served, np.asarray(tower(chips.astype(np.float32))), atol=1e-4)


def test_the_service_pipeline_loads_the_export(
    trained: dict[str, Path], celeba: TinyCeleba
) -> None:
    from app.pipeline.pipeline import FacePipeline

    pipeline = FacePipeline.from_model_dir(trained["export"])
    by_identity: dict[str, list[str]] = {}
    for name in celeba.face_images:
        by_identity.setdefault(celeba.labels[name], []).append(name)
    first, second = next(iter(by_identity.values()))[:2]
    verdict = pipeline.verify(
        (celeba.images_dir / first).read_bytes(), (celeba.images_dir / second).read_bytes()
    )
    assert verdict.threshold == pipeline.metadata.threshold
    assert np.isfinite(verdict.distance)
    # The calibration's Platt scaling came with the export: the verdict has a confidence.
    assert verdict.confidence is not None
    assert 0.0 <= verdict.confidence <= 1.0


def test_resume_continues_and_guards_its_settings(trained: dict[str, Path], tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    common = ["train", "--data", str(trained["data"]), "--run-dir", str(run), "--name", "tiny"]
    arguments = [*common, *TRAIN_ARGUMENTS]
    # Not without --resume, and not with a changed setting.
    assert main(arguments) == 2
    assert main([*arguments, "--resume", "--margin", "0.5"]) == 2
    before = (run / CHECKPOINTS / "last_tower.weights.h5").read_bytes()
    longer = [*arguments]
    longer[longer.index("--epochs") + 1] = "2"  # the second epoch unfreezes the backbone
    code = main([*longer, "--resume", "--no-export"])
    assert code == 0
    state = json.loads((run / STATE_FILE).read_text())
    assert state["epochs_done"] == 2
    assert state["phase"] == "full"
    assert [row["epoch"] for row in state["history"]] == [1, 2]
    with (run / LOG_FILE).open() as stream:
        assert [row["epoch"] for row in csv.DictReader(stream)] == ["0", "1"]
    assert (run / CHECKPOINTS / "last_tower.weights.h5").read_bytes() != before


def test_export_command_refuses_to_replace_a_model(trained: dict[str, Path]) -> None:
    arguments = ["export", "--run", str(trained["run"]), "--models-root", str(trained["models"])]
    assert main([*arguments, "--name", "tiny"]) == 2


def test_evaluate_and_calibrate_take_a_prepared_split(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    model = tmp_path / "model"
    shutil.copytree(trained["export"], model)
    data = ["--model", str(model), "--data", str(trained["data"]), "--split-pairs", "40"]
    assert main(["evaluate", *data, "--output", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "evaluation.json").is_file()
    assert main(["calibrate", *data, "--split", "test"]) == 0
    calibration = read_metadata(model).calibration
    assert calibration is not None
    assert "test split" in calibration["source"]
    # Pairs and a prepared split are alternatives.
    assert main(["evaluate", *data, "--pairs", str(tmp_path / "p.csv")]) == 2


def test_pair_dataset_is_seeded_and_keeps_pixels_in_range(trained: dict[str, Path]) -> None:
    import tensorflow as tf

    split = load_split(trained["data"], "train")
    chips = tf.constant(list(split.chips), dtype=tf.string)
    pairs = PairIndices(
        first=np.array([0, 1, 2]), second=np.array([3, 4, 5]), same=np.array([1, 0, 1], "f4")
    )

    def batches(seed: int, augment: bool) -> list[np.ndarray]:
        dataset = pair_dataset(
            chips,
            pairs,
            chip_size=(150, 150),
            chip_format="jpeg",
            batch_size=2,
            augment=augment,
            seed=seed,
            epoch=0,
        )
        return [images for (images, _), _ in dataset.as_numpy_iterator()]

    plain = batches(0, augment=False)
    assert [batch.shape for batch in plain] == [(2, 150, 150, 3), (1, 150, 150, 3)]
    np.testing.assert_array_equal(plain[0][0], decode_chip(split.chips[0]))
    augmented, again, other = batches(0, True), batches(0, True), batches(1, True)
    np.testing.assert_array_equal(augmented[0], again[0])
    assert not np.array_equal(augmented[0], other[0])
    assert 0.0 <= augmented[0].min() and augmented[0].max() <= 255.0
    labels = np.concatenate(
        [
            same
            for _, same in pair_dataset(
                chips,
                pairs,
                chip_size=(150, 150),
                chip_format="jpeg",
                batch_size=2,
                augment=False,
                seed=0,
                epoch=0,
            ).as_numpy_iterator()
        ]
    )
    np.testing.assert_array_equal(labels, [1, 0, 1])


def test_validation_loss_matches_the_training_loss() -> None:
    rng = np.random.default_rng(0)
    distances = rng.uniform(0, 2, 50)
    same = rng.integers(0, 2, 50).astype(np.float32)
    expected = float(ContrastiveLoss(margin=1.2)(same, distances[:, None].astype(np.float32)))
    assert contrastive_loss_value(distances, same, margin=1.2) == pytest.approx(expected, rel=1e-5)


def test_split_pairs_are_distinct_and_balanced() -> None:
    identities = np.repeat(["a", "b", "c"], 3)
    pairs = split_pairs(identities, count=500, seed=0)
    unordered = {tuple(sorted(pair)) for pair in zip(pairs.first, pairs.second, strict=True)}
    assert len(unordered) == len(pairs)
    assert int(pairs.same.sum()) * 2 == len(pairs)
    # 9 same-person pairs exist in all (3 per identity), so at most 9 of each.
    assert len(pairs) == 18


def test_precision_follows_the_device() -> None:
    try:
        assert configure_precision("auto") == "float32"  # no GPU on the test machines
        assert configure_precision("mixed_float16") == "mixed_float16"
        assert keras.mixed_precision.global_policy().name == "mixed_float16"
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.data
@pytest.mark.slow
def test_fine_tuning_on_real_photos_keeps_the_model_working(
    shared_data: Path, default_model_dir: Path, tmp_path: Path
) -> None:
    """A few hundred real CelebA photos: prepare, fine-tune the dlib tower for an epoch, export;
    the export must verify real faces about as well as the default model on the same test pairs."""
    from training.train import evaluate_on_split

    celeba = shared_data / "celeba"
    data = tmp_path / "prepared"
    assert (
        main(
            [
                "prepare",
                "--images",
                str(celeba / "img_align_celeba_half"),
                "--identity-file",
                str(celeba / "identity_CelebA.txt"),
                "--alignment-model",
                str(default_model_dir),
                "--output",
                str(data),
                "--limit",
                "150",
                "--workers",
                "0",
            ]
        )
        == 0
    )
    manifest = read_manifest(data)
    assert 300 <= sum(split.chips for split in manifest.splits.values()) <= 450
    run = tmp_path / "run"
    arguments = [
        "train",
        "--data",
        str(data),
        "--run-dir",
        str(run),
        "--models-root",
        str(tmp_path / "models"),
        "--name",
        "finetuned",
        "--epochs",
        "1",
        "--head-learning-rate",
        "1e-4",
        "--pairs-per-epoch",
        "128",
        "--batch-size",
        "16",
        "--validation-pairs",
        "200",
        "--quiet",
    ]
    assert main(arguments) == 0
    state = json.loads((run / STATE_FILE).read_text())
    assert state["best_score"] >= state["baseline"]["val_auc"]

    def figures(model: Path) -> dict[str, float]:
        result = evaluate_on_split(
            model_dir=model,
            data_dir=data,
            split="test",
            pairs=400,
            seed=5,
            output_dir=tmp_path / model.name,
        )
        return {"auc": result["roc_auc"], "accuracy": result["ten_fold_accuracy"]["mean"]}

    default = figures(default_model_dir)
    finetuned = figures(tmp_path / "models" / "finetuned" / "1")
    assert default["auc"] > 0.85  # the real photos are verifiable at all
    assert finetuned["auc"] >= default["auc"] - 0.02
    assert finetuned["accuracy"] >= default["accuracy"] - 0.03


def test_training_refuses_splits_without_pairs(trained: dict[str, Path], tmp_path: Path) -> None:
    data = tmp_path / "prepared"
    shutil.copytree(trained["data"], data)
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["splits"]["test"]["identities"] = 1
    (data / "manifest.json").write_text(json.dumps(manifest))
    arguments = ["train", "--data", str(data), "--run-dir", str(tmp_path / "run")]
    assert main([*arguments, *TRAIN_ARGUMENTS]) == 2
    assert not (tmp_path / "run").exists()


def test_training_refuses_an_existing_export_before_training(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    run = tmp_path / "run"
    arguments = [
        "train",
        "--data",
        str(trained["data"]),
        "--run-dir",
        str(run),
        "--models-root",
        str(trained["models"]),
        "--name",
        "tiny",
    ]
    assert main([*arguments, *TRAIN_ARGUMENTS]) == 2
    assert not run.exists()
