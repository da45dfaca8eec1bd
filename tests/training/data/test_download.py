"""``python -m training download``: resumable download, extraction, checks and clear errors."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
import urllib3.exceptions

from training.data import download
from training.data.download import (
    COMPLETION_MARKER,
    DEFAULT_DATASET,
    IDENTITY_FILE_NAME,
    KNOWN_DATASETS,
    BadCredentialsError,
    DatasetClient,
    DatasetNotFoundError,
    DownloadError,
    ExpectedFiles,
    IdentityFileError,
    IncompleteDatasetError,
    MissingCredentialsError,
    NetworkError,
    default_client_factory,
    download_dataset,
    expected_files_for,
    find_kaggle_credentials,
    read_identity_labels,
)

IMAGES = "img_align_celeba/img_align_celeba"
IMAGE_COUNT = 3
# The real CelebA layout with 3 images instead of 202,599.
SMALL = dataclasses.replace(
    KNOWN_DATASETS[DEFAULT_DATASET], counts=((f"{IMAGES}/*.jpg", IMAGE_COUNT),)
)
ARCHIVE = "celeba-dataset.zip"


def celeba_members(images: int = IMAGE_COUNT, *, drop: str | None = None) -> dict[str, bytes]:
    members = {name: f"{name} header\n1,2\n".encode() for name in SMALL.files}
    for number in range(1, images + 1):
        members[f"{IMAGES}/{number:06d}.jpg"] = b"\xff\xd8jpeg" * (number + 10)
    members.pop(drop or "", None)
    return members


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        for name, data in members.items():
            bundle.writestr(name, data)
    return path


def write_identities(path: Path, images: int = IMAGE_COUNT, *, header: bool = False) -> Path:
    lines = ["image identity"] if header else []
    lines += [f"{number:06d}.jpg {100 + number % 2}" for number in range(1, images + 1)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


class FakeKaggle:
    """Stands in for ``KaggleApi``: writes ``<path>/<slug>.zip`` or raises ``error``."""

    def __init__(
        self, members: dict[str, bytes] | None = None, error: Exception | None = None
    ) -> None:
        self.members = celeba_members() if members is None else members
        self.error = error
        self.calls: list[dict[str, object]] = []

    def dataset_download_files(
        self,
        dataset: str,
        path: str | None = None,
        force: bool = False,
        quiet: bool = True,
        unzip: bool = False,
    ) -> None:
        self.calls.append({"dataset": dataset, "path": path, "force": force, "unzip": unzip})
        if self.error is not None:
            raise self.error
        assert path is not None
        archive = write_zip(Path(path) / f"{dataset.split('/')[1]}.zip", self.members)
        # Like kaggle 2.2.5, which drops its resume marker once the archive is complete.
        archive.with_name(archive.name + ".kaggle-partial").unlink(missing_ok=True)

    def factory(self) -> DatasetClient:
        return self


def never_called() -> DatasetClient:
    pytest.fail("the Kaggle client was created although nothing had to be downloaded")


def one_sentence(error: BaseException) -> str:
    text = str(error)
    assert "\n" not in text and "Traceback" not in text
    assert text.endswith(".")
    return text


@pytest.fixture(autouse=True)
def no_kaggle_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home without credentials, so no test depends on (or touches) the real ones."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in (
        "KAGGLE_USERNAME",
        "KAGGLE_KEY",
        "KAGGLE_API_TOKEN",
        "KAGGLE_CONFIG_DIR",
        "XDG_CONFIG_HOME",
    ):
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture
def identity_file(tmp_path: Path) -> Path:
    return write_identities(tmp_path / "identity_source.txt", header=True)


# --- download, extraction and the check ----------------------------------------------------------


def test_downloads_extracts_checks_and_marks(tmp_path: Path, identity_file: Path) -> None:
    data_dir = tmp_path / "celeba"
    fake = FakeKaggle()
    result = download_dataset(
        data_dir=data_dir, identity_file=identity_file, expected=SMALL, client_factory=fake.factory
    )

    assert fake.calls == [
        {"dataset": DEFAULT_DATASET, "path": str(data_dir), "force": False, "unzip": False}
    ]
    assert result.downloaded and result.extracted == len(celeba_members())
    for name, data in celeba_members().items():
        assert (data_dir / name).read_bytes() == data
    assert not (data_dir / ARCHIVE).exists()
    assert (data_dir / IDENTITY_FILE_NAME).read_bytes() == identity_file.read_bytes()
    assert result.identity_file == data_dir / IDENTITY_FILE_NAME
    marker = json.loads((data_dir / COMPLETION_MARKER).read_text(encoding="utf-8"))
    assert marker["dataset"] == DEFAULT_DATASET
    assert marker["checked"] == {
        "files": list(SMALL.files),
        "counts": {f"{IMAGES}/*.jpg": IMAGE_COUNT},
    }
    assert marker["identity_file"] == {"file": IDENTITY_FILE_NAME, "images": 3, "identities": 2}


def test_rerun_after_completion_downloads_nothing(tmp_path: Path, identity_file: Path) -> None:
    data_dir = tmp_path / "celeba"
    fake = FakeKaggle()
    download_dataset(
        data_dir=data_dir, identity_file=identity_file, expected=SMALL, client_factory=fake.factory
    )
    # The identity file copied by the first run is used without --identity-file.
    result = download_dataset(data_dir=data_dir, expected=SMALL, client_factory=never_called)
    assert not result.downloaded and result.extracted == 0
    assert len(fake.calls) == 1


def test_resumes_an_interrupted_extraction_without_downloading_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "celeba"
    fake = FakeKaggle()
    real_copy = shutil.copyfileobj
    copied: list[object] = []

    def interrupt_after_three(*args: object, **kwargs: object) -> None:
        if len(copied) == 3:
            raise KeyboardInterrupt
        copied.append(args)
        real_copy(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(shutil, "copyfileobj", interrupt_after_three)
    with pytest.raises(KeyboardInterrupt):
        download_dataset(
            data_dir=data_dir,
            require_identities=False,
            expected=SMALL,
            client_factory=fake.factory,
        )
    monkeypatch.setattr(shutil, "copyfileobj", real_copy)
    assert (data_dir / ARCHIVE).is_file()  # Kept until the extraction has completed.
    assert not (data_dir / COMPLETION_MARKER).exists()

    result = download_dataset(
        data_dir=data_dir, require_identities=False, expected=SMALL, client_factory=never_called
    )
    assert result.extracted == len(celeba_members()) - 3
    assert len(fake.calls) == 1
    assert not list(data_dir.rglob("*.part"))
    assert (data_dir / COMPLETION_MARKER).is_file()


def test_extracts_only_missing_or_wrong_sized_members(tmp_path: Path) -> None:
    data_dir = tmp_path / "celeba"
    members = celeba_members()
    write_zip(data_dir / ARCHIVE, members)  # A completed download from an earlier run.
    intact = data_dir / "list_eval_partition.csv"
    intact.write_bytes(members["list_eval_partition.csv"])
    before = intact.stat()
    truncated = data_dir / IMAGES / "000001.jpg"
    truncated.parent.mkdir(parents=True)
    truncated.write_bytes(members[f"{IMAGES}/000001.jpg"][:5])
    (data_dir / IMAGES / "000002.jpg.part").write_bytes(b"cut short")

    result = download_dataset(
        data_dir=data_dir, require_identities=False, expected=SMALL, client_factory=never_called
    )

    assert not result.downloaded
    assert result.extracted == len(members) - 1
    assert intact.stat().st_mtime_ns == before.st_mtime_ns and intact.stat().st_ino == before.st_ino
    assert truncated.read_bytes() == members[f"{IMAGES}/000001.jpg"]
    assert not list(data_dir.rglob("*.part"))


def test_a_partial_archive_goes_back_to_the_client(tmp_path: Path) -> None:
    data_dir = tmp_path / "celeba"
    archive = write_zip(data_dir / ARCHIVE, celeba_members())
    archive.write_bytes(archive.read_bytes()[:100])
    (data_dir / f"{ARCHIVE}.kaggle-partial").write_text('{"validator": "x", "size": 1}')
    fake = FakeKaggle()

    result = download_dataset(
        data_dir=data_dir, require_identities=False, expected=SMALL, client_factory=fake.factory
    )

    assert result.downloaded and len(fake.calls) == 1
    assert not (data_dir / f"{ARCHIVE}.kaggle-partial").exists()


def test_keep_archive_keeps_the_zip(tmp_path: Path) -> None:
    data_dir = tmp_path / "celeba"
    download_dataset(
        data_dir=data_dir,
        require_identities=False,
        expected=SMALL,
        keep_archive=True,
        client_factory=FakeKaggle().factory,
    )
    assert zipfile.is_zipfile(data_dir / ARCHIVE)


def test_missing_expected_file_is_reported_and_the_archive_kept(tmp_path: Path) -> None:
    data_dir = tmp_path / "celeba"
    fake = FakeKaggle(celeba_members(drop="list_bbox_celeba.csv"))
    with pytest.raises(IncompleteDatasetError) as caught:
        download_dataset(
            data_dir=data_dir, require_identities=False, expected=SMALL, client_factory=fake.factory
        )
    assert "missing list_bbox_celeba.csv" in one_sentence(caught.value)
    assert (data_dir / ARCHIVE).is_file()
    assert not (data_dir / COMPLETION_MARKER).exists()


def test_wrong_image_count_is_reported(tmp_path: Path) -> None:
    fake = FakeKaggle(celeba_members(images=2))
    with pytest.raises(IncompleteDatasetError) as caught:
        download_dataset(
            data_dir=tmp_path / "celeba",
            require_identities=False,
            expected=SMALL,
            client_factory=fake.factory,
        )
    assert f"2 files match {IMAGES}/*.jpg instead of 3" in one_sentence(caught.value)


def test_files_removed_after_completion_are_downloaded_again(tmp_path: Path) -> None:
    data_dir = tmp_path / "celeba"
    fake = FakeKaggle()
    download_dataset(
        data_dir=data_dir, require_identities=False, expected=SMALL, client_factory=fake.factory
    )
    (data_dir / "list_attr_celeba.csv").unlink()
    result = download_dataset(
        data_dir=data_dir, require_identities=False, expected=SMALL, client_factory=fake.factory
    )
    assert result.downloaded and result.extracted == 1 and len(fake.calls) == 2


def test_the_check_is_data_driven() -> None:
    assert expected_files_for(DEFAULT_DATASET) == KNOWN_DATASETS[DEFAULT_DATASET]
    assert dict(KNOWN_DATASETS[DEFAULT_DATASET].counts) == {f"{IMAGES}/*.jpg": 202_599}
    assert expected_files_for("someone/faces") == ExpectedFiles()
    assert expected_files_for("someone/faces", extra=["labels.csv"]).files == ("labels.csv",)
    relaxed = expected_files_for(DEFAULT_DATASET, extra=["a.csv"], builtin=False)
    assert relaxed == ExpectedFiles(files=("a.csv",))


def test_another_dataset_with_its_own_files(tmp_path: Path) -> None:
    data_dir = tmp_path / "faces"
    fake = FakeKaggle({"people/a.png": b"png", "labels.csv": b"a,1\n"})
    result = download_dataset(
        data_dir=data_dir,
        dataset="someone/faces",
        require_identities=False,
        expected=expected_files_for("someone/faces", extra=["labels.csv"]),
        client_factory=fake.factory,
    )
    assert (data_dir / "people/a.png").read_bytes() == b"png"
    assert result.checked == {"files": ["labels.csv"], "counts": {}}


def test_an_archive_with_an_unsafe_path_is_refused(tmp_path: Path) -> None:
    fake = FakeKaggle({"../outside.txt": b"x"})
    with pytest.raises(DownloadError, match="unsafe path") as caught:
        download_dataset(
            data_dir=tmp_path / "celeba",
            require_identities=False,
            expected=ExpectedFiles(),
            client_factory=fake.factory,
        )
    one_sentence(caught.value)
    assert not (tmp_path / "outside.txt").exists()


def test_a_damaged_archive_says_to_delete_it(tmp_path: Path) -> None:
    data_dir = tmp_path / "celeba"
    archive = data_dir / ARCHIVE
    data_dir.mkdir()
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as bundle:
        bundle.writestr("list_eval_partition.csv", b"0123456789abcdef")
    archive.write_bytes(archive.read_bytes().replace(b"0123456789abcdef", b"0123456789abcdeX"))
    with pytest.raises(DownloadError, match="delete it") as caught:
        download_dataset(
            data_dir=data_dir,
            require_identities=False,
            expected=ExpectedFiles(),
            client_factory=never_called,
        )
    one_sentence(caught.value)


def test_a_folder_holding_another_dataset_is_refused(tmp_path: Path) -> None:
    data_dir = tmp_path / "celeba"
    data_dir.mkdir()
    (data_dir / COMPLETION_MARKER).write_text(json.dumps({"dataset": "someone/faces"}))
    with pytest.raises(DownloadError, match="choose another --data-dir") as caught:
        download_dataset(data_dir=data_dir, require_identities=False, client_factory=never_called)
    one_sentence(caught.value)


def test_a_bad_dataset_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="owner/name"):
        download_dataset(
            data_dir=tmp_path,
            dataset="celeba",
            require_identities=False,
            client_factory=never_called,
        )


# --- credentials ---------------------------------------------------------------------------------


def test_missing_credentials_give_one_sentence_before_kaggle_is_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_kaggle_credentials: Path
) -> None:
    # Importing kaggle would raise ImportError, which would surface as a different error.
    monkeypatch.setitem(sys.modules, "kaggle", None)
    with pytest.raises(MissingCredentialsError) as caught:
        download_dataset(data_dir=tmp_path / "celeba", require_identities=False)
    text = one_sentence(caught.value)
    assert "No Kaggle API credentials found" in text
    assert "KAGGLE_USERNAME and KAGGLE_KEY" in text
    assert "kaggle.json" in text
    assert not (tmp_path / "celeba" / ARCHIVE).exists()
    with pytest.raises(MissingCredentialsError):
        default_client_factory()


def test_credentials_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "secret")
    assert find_kaggle_credentials() == "KAGGLE_USERNAME and KAGGLE_KEY"


def test_the_environment_completes_kaggle_json(
    no_kaggle_credentials: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = no_kaggle_credentials / ".kaggle" / "kaggle.json"
    config.parent.mkdir()
    config.write_text(json.dumps({"username": "someone"}))
    monkeypatch.setenv("KAGGLE_KEY", "secret")
    assert find_kaggle_credentials() == str(config)


def test_credentials_from_an_api_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAGGLE_API_TOKEN", "KGAT_token")
    assert "KAGGLE_API_TOKEN" in find_kaggle_credentials()


def test_credentials_from_kaggle_json(no_kaggle_credentials: Path) -> None:
    config = no_kaggle_credentials / ".kaggle" / "kaggle.json"
    config.parent.mkdir()
    config.write_text(json.dumps({"username": "someone", "key": "secret"}))
    assert find_kaggle_credentials() == str(config)


def test_credentials_from_kaggle_config_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config" / "kaggle.json"
    config.parent.mkdir()
    config.write_text(json.dumps({"username": "someone", "key": "secret"}))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(config.parent))
    assert find_kaggle_credentials() == str(config)


@pytest.mark.parametrize("content", ["not json", '["a"]', '{"username": "someone"}'])
def test_a_broken_kaggle_json_is_named(no_kaggle_credentials: Path, content: str) -> None:
    config = no_kaggle_credentials / ".kaggle" / "kaggle.json"
    config.parent.mkdir()
    config.write_text(content)
    with pytest.raises(MissingCredentialsError) as caught:
        find_kaggle_credentials()
    assert str(config) in one_sentence(caught.value)


def http_error(status: int) -> requests.HTTPError:
    response = requests.Response()
    response.status_code = status
    return requests.HTTPError(f"{status} Client Error", response=response)


@pytest.mark.parametrize(
    ("error", "kind", "words"),
    [
        (http_error(401), BadCredentialsError, "rejected your API credentials (HTTP 401)"),
        (http_error(403), DownloadError, "refused access to dataset"),
        (http_error(404), DatasetNotFoundError, "has no dataset 'someone/nothing'"),
        (http_error(503), DownloadError, "HTTP 503"),
        (requests.ConnectionError("Max retries exceeded"), NetworkError, "Could not reach Kaggle"),
        (requests.Timeout("read timed out"), NetworkError, "Could not reach Kaggle"),
        (urllib3.exceptions.ProtocolError("reset"), NetworkError, "Could not reach Kaggle"),
        (OSError(28, "No space left on device"), DownloadError, "No space left on device"),
        (ValueError("Downloaded file size (1) does not match"), DownloadError, "run the command"),
    ],
)
def test_client_errors_become_one_sentence(
    tmp_path: Path, error: Exception, kind: type[DownloadError], words: str
) -> None:
    fake = FakeKaggle(error=error)
    with pytest.raises(kind) as caught:
        download_dataset(
            data_dir=tmp_path / "celeba",
            dataset="someone/nothing",
            require_identities=False,
            client_factory=fake.factory,
        )
    assert words in one_sentence(caught.value)


def test_unexpected_client_errors_are_not_hidden(tmp_path: Path) -> None:
    fake = FakeKaggle(error=RuntimeError("a bug"))
    with pytest.raises(RuntimeError, match="a bug"):
        download_dataset(
            data_dir=tmp_path / "celeba", require_identities=False, client_factory=fake.factory
        )


# --- the identity file ---------------------------------------------------------------------------


def test_missing_identity_file_is_explained_before_downloading(tmp_path: Path) -> None:
    with pytest.raises(IdentityFileError) as caught:
        download_dataset(data_dir=tmp_path / "celeba", client_factory=never_called)
    text = one_sentence(caught.value)
    for words in (
        "no identity labels",
        f"Anno/{IDENTITY_FILE_NAME}",
        "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html",
        "Google Drive",
        "not on Kaggle",
        "--identity-file",
        "--skip-identities",
    ):
        assert words in text


def test_identity_file_path_that_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(IdentityFileError, match="is not a file"):
        download_dataset(
            data_dir=tmp_path / "celeba",
            identity_file=tmp_path / "nowhere.txt",
            client_factory=never_called,
        )


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("000001.jpg 1\n000002.jpg 1 extra\n", "line 2: expected 'image identity'"),
        ("image identity\n000001.txt 1\n", "line 2: '000001.txt' is not an image file name"),
        ("000001.jpg 1\n\n000001.jpg 2\n", "line 3: 000001.jpg is listed a second time"),
        ("img/000001.jpg 1\n", "line 1: 'img/000001.jpg' is not an image file name"),
        ("image identity\n\n", "lists no images"),
        ("", "lists no images"),
    ],
)
def test_a_bad_identity_file_is_refused_before_downloading(
    tmp_path: Path, text: str, words: str
) -> None:
    bad = tmp_path / "identity.txt"
    bad.write_text(text, encoding="utf-8")
    with pytest.raises(IdentityFileError) as caught:
        download_dataset(
            data_dir=tmp_path / "celeba", identity_file=bad, client_factory=never_called
        )
    assert words in one_sentence(caught.value)
    assert not (tmp_path / "celeba" / IDENTITY_FILE_NAME).exists()


def test_read_identity_labels_accepts_the_header(tmp_path: Path) -> None:
    path = write_identities(tmp_path / "identity.txt", header=True)
    assert read_identity_labels(path) == {
        "000001.jpg": "101",
        "000002.jpg": "100",
        "000003.jpg": "101",
    }


def test_an_identity_file_for_other_images_is_refused_then_replaced(tmp_path: Path) -> None:
    data_dir = tmp_path / "celeba"
    other = tmp_path / "other.txt"
    other.write_text("900001.jpg 1\n900002.jpg 2\n", encoding="utf-8")
    fake = FakeKaggle()
    with pytest.raises(IdentityFileError, match="None of the 2 images") as caught:
        download_dataset(
            data_dir=data_dir, identity_file=other, expected=SMALL, client_factory=fake.factory
        )
    one_sentence(caught.value)

    right = write_identities(tmp_path / "right.txt")
    result = download_dataset(
        data_dir=data_dir, identity_file=right, expected=SMALL, client_factory=never_called
    )
    assert result.extracted == 0 and len(fake.calls) == 1
    assert (data_dir / IDENTITY_FILE_NAME).read_bytes() == right.read_bytes()


def test_skip_identities_downloads_without_labels(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        result = download_dataset(
            data_dir=tmp_path / "celeba",
            require_identities=False,
            expected=SMALL,
            client_factory=FakeKaggle().factory,
        )
    assert result.identity_file is None
    assert "No identity file" in caplog.text


# --- the command line ----------------------------------------------------------------------------


def run_command(argv: list[str], caplog: pytest.LogCaptureFixture) -> int:
    """Parses like ``python -m training`` and maps errors to exit codes as its ``main`` does."""
    parser = argparse.ArgumentParser(prog="python -m training")
    download.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], None] = args.handler
    with caplog.at_level(logging.INFO):
        try:
            handler(args)
        except (ValueError, FileNotFoundError, FileExistsError) as error:
            logging.getLogger("training").error("%s", error)
            return 2
    return 0


def test_command_defaults() -> None:
    parser = argparse.ArgumentParser()
    download.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["download"])
    assert args.dataset == DEFAULT_DATASET
    assert args.data_dir == Path("data/celeba")
    assert args.identity_file is None and not args.skip_identities
    assert args.check and args.expect is None and not args.keep_archive


def test_command_downloads(
    tmp_path: Path,
    identity_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = FakeKaggle()
    monkeypatch.setattr(download, "default_client_factory", fake.factory)
    data_dir = tmp_path / "celeba"
    argv = ["download", "--data-dir", str(data_dir), "--identity-file", str(identity_file)]
    # The built-in check expects 202,599 images; the fake dataset has 3.
    argv += ["--no-check", "--expect", "list_eval_partition.csv", "--keep-archive"]
    assert run_command(argv, caplog) == 0
    assert len(fake.calls) == 1
    assert (data_dir / ARCHIVE).is_file()
    assert (data_dir / IDENTITY_FILE_NAME).is_file()
    assert f"Data ready in {data_dir}" in caplog.text


def test_command_with_the_builtin_check_reports_the_image_count(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(download, "default_client_factory", FakeKaggle().factory)
    argv = ["download", "--data-dir", str(tmp_path / "celeba"), "--skip-identities"]
    assert run_command(argv, caplog) == 2
    assert "3 files match" in caplog.text and "instead of 202,599" in caplog.text


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--skip-identities"], "No Kaggle API credentials found"),
        ([], "no identity labels"),
        (["--dataset", "celeba", "--skip-identities"], "--dataset must be owner/name"),
        (["--expect", "../x", "--skip-identities"], "--expect '../x' must be a path relative"),
    ],
)
def test_command_errors_exit_2_with_one_sentence(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, extra: list[str], words: str
) -> None:
    argv = ["download", "--data-dir", str(tmp_path / "celeba"), *extra]
    assert run_command(argv, caplog) == 2
    errors = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert len(errors) == 1 and words in errors[0].getMessage()
    assert "Traceback" not in caplog.text


def test_command_refuses_contradicting_identity_options(
    tmp_path: Path, identity_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    argv = ["download", "--data-dir", str(tmp_path), "--skip-identities"]
    argv += ["--identity-file", str(identity_file)]
    assert run_command(argv, caplog) == 2
    assert "contradict" in caplog.text
