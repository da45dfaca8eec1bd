"""``python -m training download``: fetches CelebA from Kaggle into a data folder, resumably.

The default dataset, ``jessicali9530/celeba-dataset``, is Kaggle's copy of CelebA's aligned images
and its attribute, bounding-box, landmark and partition lists. It has no identity labels: those
come from CelebA's official ``identity_CelebA.txt``, which is not on Kaggle, so the user gives it
with ``--identity-file`` and it is validated and copied into the data folder.

The work is done in steps, each of which a rerun after an interruption skips when it is done:

1. The identity file is checked first, before any download: a missing or malformed file is found
   in a second rather than after a 1.3 GB download (``--skip-identities`` to go without).
2. The archive, ``<data-dir>/<slug>.zip``, is downloaded by the Kaggle client, which itself
   resumes a partial file (it keeps a ``.kaggle-partial`` marker next to it while incomplete).
   An archive that opens as a zip and has no such marker is complete and is not fetched again.
3. Archive members that are missing, or whose size differs from the archive's, are extracted;
   each is written under a temporary name and renamed, so an interrupted write is redone.
4. The expected files are checked (``ExpectedFiles``: files that must exist, glob patterns with an
   exact number of matches), then the completion marker ``download-complete.json`` records what
   was checked, and only then is the archive deleted. A rerun with a valid marker checks the files
   again and, when they are all there, downloads nothing.

Errors the user can fix are ``ValueError`` subclasses whose message is one sentence::

    DownloadError(ValueError)
     ├── MissingCredentialsError   no Kaggle credentials found (checked before importing kaggle)
     ├── BadCredentialsError       Kaggle answered HTTP 401
     ├── DatasetNotFoundError      Kaggle answered HTTP 404 for the dataset
     ├── NetworkError              Kaggle could not be reached
     ├── IdentityFileError         identity_CelebA.txt missing, malformed or not matching the images
     └── IncompleteDatasetError    expected files missing after extraction
"""

from __future__ import annotations

import argparse
import contextlib
import filecmp
import glob
import io
import json
import logging
import os
import re
import shutil
import sys
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

logger = logging.getLogger(__name__)

DEFAULT_DATASET = "jessicali9530/celeba-dataset"
DEFAULT_DATA_DIR = Path("data/celeba")
IDENTITY_FILE_NAME = "identity_CelebA.txt"
COMPLETION_MARKER = "download-complete.json"
# The Kaggle client's sidecar that marks an archive as partially downloaded (kaggle 2.2.5).
KAGGLE_PARTIAL_SUFFIX = ".kaggle-partial"
CELEBA_PAGE = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"
KAGGLE_TOKEN_PAGE = "https://www.kaggle.com/settings/api"

# owner/name, optionally /version, as in a dataset's Kaggle URL and as the Kaggle client accepts.
_DATASET_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*(/[0-9]+)?")
_IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})
# How many problems an error message names before it only counts the rest.
_NAMED_IN_MESSAGE = 5


class DownloadError(ValueError):
    """A download problem the user can fix; the message is one sentence that says how."""


class MissingCredentialsError(DownloadError):
    """No Kaggle API credentials were found where the Kaggle client looks for them."""


class BadCredentialsError(DownloadError):
    """Kaggle rejected the credentials (HTTP 401)."""


class DatasetNotFoundError(DownloadError):
    """Kaggle has no dataset by that name that these credentials can see (HTTP 404)."""


class NetworkError(DownloadError):
    """Kaggle could not be reached."""


class IdentityFileError(DownloadError):
    """The identity file is missing, malformed, or names none of the downloaded images."""


class IncompleteDatasetError(DownloadError):
    """Expected files are missing from the data folder after extraction."""


class DatasetClient(Protocol):
    """The part of ``kaggle.api.kaggle_api_extended.KaggleApi`` this module uses.

    ``dataset_download_files`` writes ``<path>/<slug>.zip`` and returns once it is complete; with
    ``force=False`` it resumes a partial archive or skips an up-to-date one.
    """

    def dataset_download_files(
        self,
        dataset: str,
        path: str | None = None,
        force: bool = False,
        quiet: bool = True,
        unzip: bool = False,
    ) -> None: ...


@dataclass(frozen=True)
class ExpectedFiles:
    """What a complete download holds, as paths relative to the data folder.

    ``files`` must exist and be non-empty; each ``counts`` entry is a glob pattern and the exact
    number of files it must match; ``images_dir`` is the folder whose file names the identity file
    lists, for a cross-check (``None``: no cross-check).
    """

    files: tuple[str, ...] = ()
    counts: tuple[tuple[str, int], ...] = ()
    images_dir: str | None = None


KNOWN_DATASETS: Mapping[str, ExpectedFiles] = {
    DEFAULT_DATASET: ExpectedFiles(
        files=(
            "list_eval_partition.csv",
            "list_attr_celeba.csv",
            "list_bbox_celeba.csv",
            "list_landmarks_align_celeba.csv",
        ),
        counts=(("img_align_celeba/img_align_celeba/*.jpg", 202_599),),
        images_dir="img_align_celeba/img_align_celeba",
    ),
}


def expected_files_for(
    dataset: str, *, extra: Iterable[str] = (), builtin: bool = True
) -> ExpectedFiles:
    """The known check for ``dataset`` (none for an unknown one), plus ``extra`` required files.

    ``builtin=False`` drops the known check, for a dataset whose layout differs from the table's.
    """
    known = KNOWN_DATASETS.get(dataset, ExpectedFiles()) if builtin else ExpectedFiles()
    files = known.files + tuple(name for name in extra if name not in known.files)
    return ExpectedFiles(files=files, counts=known.counts, images_dir=known.images_dir)


@dataclass(frozen=True)
class DownloadResult:
    """What ``download_dataset`` found and did."""

    data_dir: Path
    dataset: str
    downloaded: bool  # whether the Kaggle client was called this run
    extracted: int  # archive members written this run
    identity_file: Path | None
    marker: Path
    checked: dict[str, Any]  # what the completion marker records as checked


def archive_name(dataset: str) -> str:
    """The archive the Kaggle client writes for ``dataset``: ``<slug>.zip``."""
    return dataset.split("/")[1] + ".zip"


def download_dataset(
    *,
    data_dir: Path,
    dataset: str = DEFAULT_DATASET,
    identity_file: Path | None = None,
    require_identities: bool = True,
    expected: ExpectedFiles | None = None,
    keep_archive: bool = False,
    client_factory: Callable[[], DatasetClient] | None = None,
) -> DownloadResult:
    """Downloads ``dataset`` into ``data_dir``, extracts and checks it; resumes earlier runs.

    ``identity_file`` is validated and copied to ``data_dir/identity_CelebA.txt``; without it a
    copy already there is used. With neither, ``require_identities`` makes this fail before any
    download. ``expected`` defaults to ``expected_files_for(dataset)``. ``client_factory`` makes
    the Kaggle client (default: ``default_client_factory``, which checks credentials first); it is
    called only when the archive has to be fetched.
    """
    if _DATASET_PATTERN.fullmatch(dataset) is None:
        raise ValueError(
            f"Dataset {dataset!r} is not a Kaggle dataset name; give owner/name as in the "
            "dataset's URL (e.g. jessicali9530/celeba-dataset)."
        )
    if expected is None:
        expected = expected_files_for(dataset)
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    labels, identity_copy = _settle_identity_file(
        identity_file, data_dir=data_dir, required=require_identities
    )

    marker = data_dir / COMPLETION_MARKER
    archive = data_dir / archive_name(dataset)
    checked = _check_marked_download(marker, data_dir=data_dir, dataset=dataset, expected=expected)
    downloaded = False
    extracted = 0
    if checked is not None:
        logger.info("%s already holds a complete download of %s", data_dir, dataset)
    else:
        if _archive_complete(archive):
            logger.info("%s is already downloaded; extracting what is missing", archive)
        else:
            client = (client_factory or default_client_factory)()
            logger.info("Downloading %s into %s", dataset, data_dir)
            _download(client, dataset=dataset, data_dir=data_dir)
            downloaded = True
            # The client returned without an error, so it holds the archive complete; a partial
            # marker left behind (an interruption between its last write and its clean-up) is stale.
            archive.with_name(archive.name + KAGGLE_PARTIAL_SUFFIX).unlink(missing_ok=True)
            if not _archive_complete(archive):
                raise DownloadError(
                    f"The Kaggle client finished but {archive} is missing or not a complete zip "
                    "archive; delete it and run the command again."
                )
        extracted = extract_archive(archive, data_dir)
        checked = verify_files(data_dir, expected)
    _cross_check_identities(labels, identity_copy, data_dir=data_dir, expected=expected)
    # The marker is written before the archive goes: an interruption in between leaves a marked,
    # complete folder and a leftover archive, which the next run removes.
    _write_marker(marker, dataset=dataset, archive=archive, checked=checked, labels=labels)
    if not keep_archive:
        _remove_archive(archive)
    logger.info("%s is complete in %s", dataset, data_dir)
    return DownloadResult(
        data_dir=data_dir,
        dataset=dataset,
        downloaded=downloaded,
        extracted=extracted,
        identity_file=identity_copy,
        marker=marker,
        checked=checked,
    )


# --- credentials and the Kaggle client -----------------------------------------------------------


def _kaggle_config_dir() -> Path:
    """Where kaggle 2.2.5 looks for kaggle.json (``KaggleApi.config_dir``)."""
    configured = os.environ.get("KAGGLE_CONFIG_DIR")
    if configured:
        return Path(configured)
    legacy = Path(os.path.expanduser("~")) / ".kaggle"
    if sys.platform.startswith("linux") and not legacy.exists():
        xdg = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
        return Path(xdg) / "kaggle"
    return legacy


def _suggested_config_file() -> Path:
    """Where to tell the user to save kaggle.json: a file there is always found by the client."""
    configured = os.environ.get("KAGGLE_CONFIG_DIR")
    home = Path(os.path.expanduser("~"))
    return Path(configured) / "kaggle.json" if configured else home / ".kaggle" / "kaggle.json"


def _non_empty_file(path: Path) -> bool:
    try:
        return path.is_file() and bool(path.read_text(encoding="utf-8").strip())
    except (OSError, UnicodeDecodeError):
        return False


def find_kaggle_credentials() -> str:
    """Says where the Kaggle client will find credentials, or raises ``MissingCredentialsError``.

    Mirrors kaggle 2.2.5's ``KaggleApi.authenticate``: an API token (``KAGGLE_API_TOKEN`` or
    ``~/.kaggle/access_token``), then a legacy key (``username`` and ``key`` from kaggle.json in
    the config folder, each overridden by ``KAGGLE_USERNAME``/``KAGGLE_KEY``), then OAuth
    credentials from ``kaggle auth login`` (``~/.kaggle/credentials.json``). It only looks; whether
    Kaggle accepts them is known at the first request.
    """
    if os.environ.get("KAGGLE_API_TOKEN"):
        return "the KAGGLE_API_TOKEN environment variable"
    home_kaggle = Path(os.path.expanduser("~")) / ".kaggle"
    for token_file in (home_kaggle / "access_token", home_kaggle / "access_token.txt"):
        if _non_empty_file(token_file):
            return str(token_file)

    env_username, env_key = os.environ.get("KAGGLE_USERNAME"), os.environ.get("KAGGLE_KEY")
    if env_username and env_key:
        return "KAGGLE_USERNAME and KAGGLE_KEY"
    config_file = _kaggle_config_dir() / "kaggle.json"
    problem = None
    if config_file.is_file():
        try:
            loaded = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            loaded = None
        if not isinstance(loaded, dict):
            problem = "is not a JSON object with 'username' and 'key'"
        elif (env_username or loaded.get("username")) and (env_key or loaded.get("key")):
            return str(config_file)
        else:
            problem = "lacks 'username' or 'key'"
    if (home_kaggle / "credentials.json").is_file():
        return str(home_kaggle / "credentials.json")
    if problem is not None:
        raise MissingCredentialsError(
            f"{config_file} {problem}; download a new API token (kaggle.json) from "
            f"{KAGGLE_TOKEN_PAGE} and save it there, or set KAGGLE_USERNAME and KAGGLE_KEY."
        )
    raise MissingCredentialsError(
        f"No Kaggle API credentials found: create an API token at {KAGGLE_TOKEN_PAGE} and save "
        f"the downloaded kaggle.json as {_suggested_config_file()} (chmod 600), or set "
        "KAGGLE_USERNAME and KAGGLE_KEY (or KAGGLE_API_TOKEN) in the environment."
    )


def default_client_factory() -> DatasetClient:
    """An authenticated ``KaggleApi``, after checking that credentials exist.

    kaggle 2.2.5 authenticates a module-level client when the package is imported; on failure it
    prints a help text to stdout and swallows the error. The credentials are therefore checked
    here first, and what the import and the authentication print is captured and logged at debug
    level, so the user sees one sentence of ours.
    """
    source = find_kaggle_credentials()
    logger.info("Using the Kaggle credentials from %s", source)
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            from kaggle.api.kaggle_api_extended import KaggleApi

            api = KaggleApi()
            api.authenticate()
    except ImportError as error:
        raise DownloadError(
            f"The Kaggle client is not installed ({error}); install the training extras with "
            "pip install -e '.[train]'."
        ) from None
    except SystemExit:
        # KaggleApi.authenticate calls exit(1) when it finds nothing it can use.
        raise MissingCredentialsError(
            f"The Kaggle client found no usable credentials in {source}; create a new API token "
            f"at {KAGGLE_TOKEN_PAGE} and save it as {_suggested_config_file()}."
        ) from None
    except Exception as error:
        raise _explain_client_error(error, dataset=None) from None
    finally:
        if printed.getvalue().strip():
            logger.debug("The Kaggle client printed: %s", printed.getvalue().strip())
    client: DatasetClient = api
    return client


def _download(client: DatasetClient, *, dataset: str, data_dir: Path) -> None:
    try:
        # quiet=False shows the client's own progress bar; unzip=False keeps the archive, which
        # this module extracts resumably and deletes only once the files are checked.
        client.dataset_download_files(dataset, path=str(data_dir), force=False, quiet=False)
    except DownloadError:
        raise
    except Exception as error:
        raise _explain_client_error(error, dataset=dataset) from None


def _explain_client_error(error: Exception, *, dataset: str | None) -> Exception:
    """Turns the Kaggle client's errors into one sentence; returns anything else unchanged.

    kaggle 2.2.5 raises ``requests.HTTPError`` (with the response) for an error status, and
    ``requests.ConnectionError``/``Timeout`` or urllib3 errors for network failures, after its
    own retries. Its ``download_file`` raises ``ValueError`` when the size does not match.
    """
    import requests
    import urllib3.exceptions

    logger.debug("The Kaggle client raised %r", error)
    name = f"dataset {dataset!r}" if dataset else "the request"
    resume = "run the command again, which resumes the download"
    if isinstance(error, requests.HTTPError):
        status = error.response.status_code if error.response is not None else None
        if status == 401:
            return BadCredentialsError(
                f"Kaggle rejected your API credentials (HTTP 401); create a new API token at "
                f"{KAGGLE_TOKEN_PAGE} and replace kaggle.json or KAGGLE_USERNAME and KAGGLE_KEY."
            )
        if status == 403:
            return DownloadError(
                f"Kaggle refused access to {name} (HTTP 403); check that your API token is "
                "current and that the dataset is public, accepting its terms on its Kaggle page "
                "if it has any."
            )
        if status == 404:
            return DatasetNotFoundError(
                f"Kaggle has no {name} that you can access (HTTP 404); check --dataset, "
                "which is owner/name as in the dataset's Kaggle URL."
            )
        if status == 429:
            return DownloadError(
                f"Kaggle is rate-limiting requests (HTTP 429); wait, then {resume}."
            )
        return DownloadError(f"Kaggle answered HTTP {status} for {name}; {resume} later.")
    if isinstance(
        error,
        requests.ConnectionError
        | requests.Timeout
        | requests.exceptions.ChunkedEncodingError
        | urllib3.exceptions.HTTPError,
    ):
        return NetworkError(
            f"Could not reach Kaggle ({type(error).__name__}); check the internet connection "
            f"or proxy, then {resume}."
        )
    if isinstance(error, ValueError):
        message = " ".join(str(error).split())
        return DownloadError(f"The Kaggle client failed for {name} ({message}); {resume}.")
    if isinstance(error, OSError):
        return DownloadError(
            f"Writing the download failed ({type(error).__name__}: {error.strerror or error}); "
            f"free some disk space or fix the folder's permissions, then {resume}."
        )
    return error


# --- the identity file ---------------------------------------------------------------------------


def read_identity_labels(path: Path) -> dict[str, str]:
    """Reads and validates CelebA's ``identity_CelebA.txt``: image file name to identity.

    Each line is ``image identity`` (``000001.jpg 2880``), after an optional header line
    ``image identity``; blank lines are skipped. An image must be a bare file name ending in
    .jpg/.jpeg/.png and be listed once. Any other content raises ``IdentityFileError`` naming the
    line.
    """
    labels: dict[str, str] = {}
    try:
        with Path(path).open(encoding="utf-8-sig") as stream:
            for number, line in enumerate(stream, start=1):
                fields = line.split()
                if not fields:
                    continue
                if not labels and [field.lower() for field in fields] == ["image", "identity"]:
                    continue
                where = f"{path}, line {number}"
                if len(fields) != 2:
                    raise IdentityFileError(
                        f"{where}: expected 'image identity' (e.g. '000001.jpg 2880') but found "
                        f"{len(fields)} fields; give CelebA's {IDENTITY_FILE_NAME}."
                    )
                image, identity = fields
                if (
                    "/" in image
                    or "\\" in image
                    or Path(image).suffix.lower() not in _IMAGE_SUFFIXES
                ):
                    raise IdentityFileError(
                        f"{where}: {image!r} is not an image file name such as 000001.jpg; "
                        f"give CelebA's {IDENTITY_FILE_NAME}."
                    )
                if image in labels:
                    raise IdentityFileError(
                        f"{where}: {image} is listed a second time; give a file that lists each "
                        "image once."
                    )
                labels[image] = identity
    except UnicodeDecodeError:
        raise IdentityFileError(
            f"{path} is not a text file; give CelebA's {IDENTITY_FILE_NAME}."
        ) from None
    except OSError as error:
        raise IdentityFileError(
            f"{path} cannot be read ({error.strerror or error}); give the path of CelebA's "
            f"{IDENTITY_FILE_NAME}."
        ) from None
    if not labels:
        raise IdentityFileError(f"{path} lists no images; give CelebA's {IDENTITY_FILE_NAME}.")
    return labels


def _missing_identity_message(data_dir: Path) -> str:
    return (
        f"The Kaggle dataset has no identity labels and {data_dir / IDENTITY_FILE_NAME} does not "
        f"exist: download CelebA's official {IDENTITY_FILE_NAME} (Anno/{IDENTITY_FILE_NAME} in "
        f"the CelebA annotations, linked from {CELEBA_PAGE} to its Google Drive; it is not on "
        "Kaggle) and pass it with --identity-file, or pass --skip-identities to download the "
        "images now and add the file later."
    )


def _settle_identity_file(
    identity_file: Path | None, *, data_dir: Path, required: bool
) -> tuple[dict[str, str] | None, Path | None]:
    """Validates the identity file and copies it into ``data_dir``, before anything is downloaded.

    Returns the labels and the copy's path, or ``(None, None)`` when there is no file and none is
    required. Running first means a missing file is reported in a second, not after the download.
    """
    copy = data_dir / IDENTITY_FILE_NAME
    if identity_file is None:
        if copy.is_file():
            labels = read_identity_labels(copy)
            logger.info("Using %s (%d images)", copy, len(labels))
            return labels, copy
        if required:
            raise IdentityFileError(_missing_identity_message(data_dir))
        logger.warning("No identity file: %s", _missing_identity_message(data_dir))
        return None, None
    identity_file = Path(identity_file)
    if not identity_file.is_file():
        raise IdentityFileError(
            f"--identity-file {identity_file} is not a file; give the path of CelebA's "
            f"{IDENTITY_FILE_NAME} (Anno/{IDENTITY_FILE_NAME}, linked from {CELEBA_PAGE})."
        )
    labels = read_identity_labels(identity_file)
    same = copy.exists() and (
        os.path.samefile(identity_file, copy) or filecmp.cmp(identity_file, copy, shallow=False)
    )
    if not same:
        partial = copy.with_name(copy.name + ".part")
        shutil.copyfile(identity_file, partial)
        os.replace(partial, copy)
        logger.info("Copied %s to %s", identity_file, copy)
    logger.info("%s lists %d images of %d identities", copy, len(labels), len(set(labels.values())))
    return labels, copy


def _cross_check_identities(
    labels: dict[str, str] | None,
    identity_copy: Path | None,
    *,
    data_dir: Path,
    expected: ExpectedFiles,
) -> None:
    """Checks that the identity file names the downloaded images; at least one must match."""
    if labels is None or expected.images_dir is None:
        return
    images_dir = data_dir / expected.images_dir
    present = {entry.name for entry in os.scandir(images_dir) if entry.is_file()}
    found = sum(1 for image in labels if image in present)
    if found == 0:
        raise IdentityFileError(
            f"None of the {len(labels)} images listed in {identity_copy} are in {images_dir}; "
            f"give CelebA's {IDENTITY_FILE_NAME} for this dataset with --identity-file."
        )
    if found < len(labels) or found < len(present):
        logger.warning(
            "%s labels %d of the %d images in %s (it lists %d)",
            identity_copy,
            found,
            len(present),
            images_dir,
            len(labels),
        )


# --- the archive and the check -------------------------------------------------------------------


def _archive_complete(archive: Path) -> bool:
    """Whether the archive is fully downloaded: a zip that the client no longer marks partial."""
    partial_marker = archive.with_name(archive.name + KAGGLE_PARTIAL_SUFFIX)
    return archive.is_file() and not partial_marker.exists() and zipfile.is_zipfile(archive)


def _member_target(destination: Path, name: str) -> Path:
    path = PurePosixPath(name)
    if "\\" in name or path.is_absolute() or ".." in path.parts or not path.parts:
        raise DownloadError(
            f"The archive holds the unsafe path {name!r}; check --dataset, since this archive "
            "cannot be extracted safely."
        )
    return destination.joinpath(*path.parts)


def extract_archive(archive: Path, destination: Path) -> int:
    """Extracts the members missing from ``destination`` or differing in size; returns how many.

    Each member is written as ``<name>.part`` and renamed when complete, so a member cut short by
    an interruption is extracted again by the next run while completed ones are kept.
    """
    from tqdm import tqdm

    try:
        with zipfile.ZipFile(archive) as bundle:
            members = [info for info in bundle.infolist() if not info.is_dir()]
            pending: list[tuple[zipfile.ZipInfo, Path]] = []
            for info in members:
                target = _member_target(destination, info.filename)
                try:
                    size: int | None = os.stat(target).st_size
                except FileNotFoundError:
                    size = None
                if size != info.file_size:
                    pending.append((info, target))
            logger.info("%s: %d of %d files to extract", archive.name, len(pending), len(members))
            made: set[Path] = set()
            for info, target in tqdm(pending, desc="Extracting", unit="file", disable=not pending):
                if target.parent not in made:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    made.add(target.parent)
                partial = target.with_name(target.name + ".part")
                with bundle.open(info) as source, partial.open("wb") as sink:
                    shutil.copyfileobj(source, sink, 1 << 20)
                os.replace(partial, target)
    except zipfile.BadZipFile as error:
        raise DownloadError(
            f"{archive} is damaged ({error}); delete it and run the command again to download it "
            "anew."
        ) from None
    return len(pending)


def _first_few(names: list[str]) -> str:
    shown = ", ".join(names[:_NAMED_IN_MESSAGE])
    more = len(names) - _NAMED_IN_MESSAGE
    return f"{shown} and {more} more" if more > 0 else shown


def verify_files(data_dir: Path, expected: ExpectedFiles) -> dict[str, Any]:
    """Checks ``expected`` in ``data_dir``; returns what was checked, for the completion marker.

    Raises ``IncompleteDatasetError`` naming the missing files and the counts that differ.
    """
    missing = [name for name in expected.files if not _is_non_empty_file(data_dir / name)]
    if expected.images_dir is not None and not (data_dir / expected.images_dir).is_dir():
        missing.append(f"the folder {expected.images_dir}")
    counts: dict[str, int] = {}
    wrong: list[str] = []
    for pattern, count in expected.counts:
        counts[pattern] = len(glob.glob(pattern, root_dir=data_dir))
        if counts[pattern] != count:
            wrong.append(f"{counts[pattern]:,} files match {pattern} instead of {count:,}")
    if missing or wrong:
        problems = ([f"missing {_first_few(missing)}"] if missing else []) + wrong
        raise IncompleteDatasetError(
            f"{data_dir} is incomplete ({'; '.join(problems)}); if the archive lacks these the "
            "dataset is not laid out as expected, so check --dataset, or drop the built-in check "
            "with --no-check and name the files to require with --expect."
        )
    logger.info(
        "Checked %d files and %d file counts in %s", len(expected.files), len(counts), data_dir
    )
    return {"files": list(expected.files), "counts": counts}


def _is_non_empty_file(path: Path) -> bool:
    try:
        return path.is_file() and path.stat().st_size > 0
    except OSError:
        return False


def _check_marked_download(
    marker: Path, *, data_dir: Path, dataset: str, expected: ExpectedFiles
) -> dict[str, Any] | None:
    """What was checked, when a completion marker for ``dataset`` exists and the files still pass.

    ``None`` means the download has to be (re)done: no marker, an unreadable one, or files that
    went missing since, in which case the marker is removed.
    """
    if not marker.is_file():
        return None
    try:
        recorded = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        logger.warning("%s is unreadable; checking the download again", marker)
        return None
    if not isinstance(recorded, dict) or recorded.get("dataset") != dataset:
        other = recorded.get("dataset") if isinstance(recorded, dict) else None
        raise DownloadError(
            f"{data_dir} already holds the dataset {other!r}, not {dataset!r}; choose another "
            "--data-dir."
        )
    try:
        return verify_files(data_dir, expected)
    except IncompleteDatasetError as error:
        logger.debug("%s", error)
        logger.warning("The download in %s no longer passes its check; repairing it", data_dir)
        marker.unlink()
        return None


def _write_marker(
    marker: Path,
    *,
    dataset: str,
    archive: Path,
    checked: dict[str, Any],
    labels: dict[str, str] | None,
) -> None:
    record = {
        "dataset": dataset,
        "archive": archive.name,
        "checked": checked,
        "identity_file": None
        if labels is None
        else {
            "file": IDENTITY_FILE_NAME,
            "images": len(labels),
            "identities": len(set(labels.values())),
        },
        "checked_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    partial = marker.with_name(marker.name + ".part")
    partial.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(partial, marker)


def _remove_archive(archive: Path) -> None:
    for path in (archive, archive.with_name(archive.name + KAGGLE_PARTIAL_SUFFIX)):
        if path.exists():
            path.unlink()
            logger.info("Removed %s", path)


# --- the command ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DownloadConfig:
    dataset: str
    data_dir: Path
    identity_file: Path | None
    skip_identities: bool
    expect: tuple[str, ...]
    check: bool
    keep_archive: bool

    def __post_init__(self) -> None:
        if _DATASET_PATTERN.fullmatch(self.dataset) is None:
            raise ValueError(
                f"--dataset must be owner/name as in the dataset's Kaggle URL, got "
                f"{self.dataset!r}."
            )
        if self.data_dir.exists() and not self.data_dir.is_dir():
            raise ValueError(f"--data-dir {self.data_dir} is a file; give a folder.")
        if self.identity_file is not None and self.skip_identities:
            raise ValueError("--identity-file and --skip-identities contradict; give one of them.")
        if self.identity_file is not None and not self.identity_file.is_file():
            raise ValueError(
                f"--identity-file {self.identity_file} is not a file; give the path of CelebA's "
                f"{IDENTITY_FILE_NAME}."
            )
        for name in self.expect:
            path = PurePosixPath(name)
            if not name or path.is_absolute() or ".." in path.parts:
                raise ValueError(
                    f"--expect {name!r} must be a path relative to --data-dir, without '..'."
                )


def _download_command(args: argparse.Namespace) -> None:
    config = DownloadConfig(
        dataset=args.dataset,
        data_dir=args.data_dir,
        identity_file=args.identity_file,
        skip_identities=args.skip_identities,
        expect=tuple(args.expect or ()),
        check=args.check,
        keep_archive=args.keep_archive,
    )
    result = download_dataset(
        data_dir=config.data_dir,
        dataset=config.dataset,
        identity_file=config.identity_file,
        require_identities=not config.skip_identities,
        expected=expected_files_for(config.dataset, extra=config.expect, builtin=config.check),
        keep_archive=config.keep_archive,
    )
    logger.info(
        "Data ready in %s (identity labels: %s)",
        result.data_dir,
        result.identity_file if result.identity_file is not None else "none",
    )


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds the ``download`` command to ``python -m training``'s subcommands."""
    download = commands.add_parser(
        "download",
        help="download CelebA from Kaggle into a data folder (resumable)",
        description="Downloads a Kaggle dataset (default: CelebA's aligned images) with the "
        "Kaggle API, extracts it and checks the expected files; a rerun resumes an interrupted "
        "one. Credentials: ~/.kaggle/kaggle.json or KAGGLE_USERNAME and KAGGLE_KEY. CelebA's "
        f"identity labels are not on Kaggle: give {IDENTITY_FILE_NAME} (from {CELEBA_PAGE}) "
        "with --identity-file; it is copied into the data folder.",
    )
    download.add_argument("--dataset", default=DEFAULT_DATASET, help="Kaggle owner/name")
    download.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    download.add_argument(
        "--identity-file", type=Path, default=None, help=f"CelebA's {IDENTITY_FILE_NAME}"
    )
    download.add_argument(
        "--skip-identities", action="store_true", help="download without the identity file"
    )
    download.add_argument(
        "--expect",
        action="append",
        metavar="PATH",
        help="also require this file, relative to --data-dir (repeatable)",
    )
    download.add_argument(
        "--no-check",
        dest="check",
        action="store_false",
        help="skip the built-in check of the dataset's files (for a differently laid out dataset)",
    )
    download.add_argument(
        "--keep-archive", action="store_true", help="keep the zip after extraction"
    )
    download.set_defaults(handler=_download_command)
