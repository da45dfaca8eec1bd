"""Static checks of the Dockerfiles, docker-compose.yml and .dockerignore.

No Docker engine runs where the tests run, so nothing here builds an image or starts a container:
the files are parsed, and what they name (paths, commands, settings) is checked against the
repository.
"""

from __future__ import annotations

import ast
import fnmatch
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.settings import ENV_PREFIX, Settings
from training.__main__ import build_parser

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
DOCKERFILES = {
    "gpu": REPO_ROOT / "docker" / "Dockerfile",
    "cpu": REPO_ROOT / "docker" / "Dockerfile.cpu",
}
# `${NAME}`, `${NAME:-default}` and `${NAME-default}` in compose values.
INTERPOLATION = re.compile(r"\$\{(?P<name>\w+)(?::?-(?P<default>[^}]*))?\}")
SHELL_OPERATORS = {"&&", "||", ";", "|", ">", "<", ">>"}


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str


@dataclass(frozen=True)
class Stage:
    base: str
    name: str | None
    instructions: tuple[Instruction, ...]

    def all(self, keyword: str) -> list[Instruction]:
        return [item for item in self.instructions if item.keyword == keyword]


def parse_dockerfile(path: Path) -> list[Stage]:
    """Split a Dockerfile into stages of instructions (comments dropped, continuations joined)."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, f"{path.name} ends inside a continued line"

    stages: list[Stage] = []
    current: list[Instruction] | None = None
    base = ""
    name: str | None = None
    for text in logical:
        keyword, _, arguments = text.partition(" ")
        instruction = Instruction(keyword.upper(), arguments.strip())
        if instruction.keyword == "FROM":
            if current is not None:
                stages.append(Stage(base, name, tuple(current)))
            words = [word for word in instruction.arguments.split() if not word.startswith("--")]
            base = words[0]
            name = words[2] if len(words) == 3 and words[1].lower() == "as" else None
            current = []
        elif current is not None:
            current.append(instruction)
    if current is not None:
        stages.append(Stage(base, name, tuple(current)))
    return stages


def exec_form(arguments: str) -> list[str]:
    """The argv of a JSON (exec form) CMD or ENTRYPOINT."""
    value = json.loads(arguments)
    assert isinstance(value, list) and all(isinstance(item, str) for item in value), arguments
    return value


def env_assignments(arguments: str) -> dict[str, str]:
    """`ENV A=1 B=2` (the legacy `ENV A 1` form is not used here)."""
    pairs = shlex.split(arguments)
    assert all("=" in pair for pair in pairs), f"use ENV NAME=value: {arguments}"
    return dict(pair.split("=", 1) for pair in pairs)


def python_module_argvs(command: str, module: str) -> list[list[str]]:
    """Every `python -m <module> ...` in a shell command, up to the next shell operator."""
    words = shlex.split(command)
    found: list[list[str]] = []
    for index in range(len(words) - 2):
        if Path(words[index]).name.startswith("python") and words[index + 1 : index + 3] == [
            "-m",
            module,
        ]:
            argv: list[str] = []
            for word in words[index + 3 :]:
                if word in SHELL_OPERATORS:
                    break
                argv.append(word)
            found.append(argv)
    return found


def dockerignore_excludes(relative: str) -> bool:
    """Whether .dockerignore keeps `relative` (or a folder above it) out of the build context.

    Docker's rules, simplified: patterns are matched against the path and each of its parents,
    the last matching pattern wins, and `!` re-includes.
    """
    patterns = [
        line.strip()
        for line in (REPO_ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    parts = Path(relative).parts
    candidates = ["/".join(parts[: count + 1]) for count in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        cleaned = pattern.lstrip("!").strip("/")
        cleaned = cleaned.removeprefix("**/")
        if any(
            fnmatch.fnmatchcase(candidate, cleaned)
            or fnmatch.fnmatchcase(Path(candidate).name, cleaned)
            and pattern.lstrip("!").startswith("**/")
            for candidate in candidates
        ):
            excluded = not negated
    return excluded


def without_interpolation(value: str) -> str:
    """A compose value with each `${NAME:-default}` replaced by its default."""
    return INTERPOLATION.sub(lambda match: match.group("default") or "", value)


def environment_of(service: dict[str, Any]) -> dict[str, str | None]:
    environment = service.get("environment", {})
    if isinstance(environment, list):
        return {
            item.partition("=")[0]: (item.partition("=")[2] if "=" in item else None)
            for item in environment
        }
    return {key: None if value is None else str(value) for key, value in environment.items()}


def assert_settings_accept(variables: dict[str, str], where: str) -> None:
    """Every FACEVERIFY_ variable names a Settings field, and the values validate."""
    fields = set(Settings.model_fields)
    values: dict[str, str] = {}
    for name, value in variables.items():
        if not name.startswith(ENV_PREFIX):
            continue
        field = name.removeprefix(ENV_PREFIX).lower()
        assert field in fields, f"{where} sets {name}, which is no setting"
        values[field] = value
    # model_validate checks the values alone, never the process environment or a .env file.
    Settings.model_validate(values)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]  # type: ignore[no-any-return]


def gpu_devices(service: dict[str, Any]) -> list[dict[str, Any]]:
    return service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])  # type: ignore[no-any-return]


# --- Dockerfiles ----------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=sorted(DOCKERFILES), ids=sorted(DOCKERFILES))
def dockerfile(request: pytest.FixtureRequest) -> tuple[Path, list[Stage]]:
    path = DOCKERFILES[request.param]
    return path, parse_dockerfile(path)


def test_dockerfile_is_multi_stage(dockerfile: tuple[Path, list[Stage]]) -> None:
    path, stages = dockerfile
    assert len(stages) >= 2
    names = {stage.name for stage in stages}
    for stage in stages:
        for copy in stage.all("COPY"):
            source_stage = re.search(r"--from=(\S+)", copy.arguments)
            if source_stage:
                assert source_stage.group(1) in names, f"{path.name}: {copy.arguments}"


def test_dockerfile_final_stage_serves(dockerfile: tuple[Path, list[Stage]]) -> None:
    path, stages = dockerfile
    final = stages[-1]
    users = final.all("USER")
    assert users, f"{path.name}: the final stage must not run as root"
    assert users[-1].arguments not in {"root", "0", "0:0"}
    assert [item.arguments for item in final.all("EXPOSE")] == ["8000"]
    cmd = exec_form(final.all("CMD")[-1].arguments)
    assert cmd == ["python", "-m", "app"]
    assert (REPO_ROOT / "app" / "__main__.py").is_file()
    # Only built artifacts reach the final stage: the venv and the models, never the source.
    assert all("--from=" in copy.arguments for copy in final.all("COPY"))


def test_dockerfile_builds_the_default_model(dockerfile: tuple[Path, list[Stage]]) -> None:
    path, stages = dockerfile
    argvs = [
        argv
        for stage in stages
        for run in stage.all("RUN")
        for argv in python_module_argvs(run.arguments, "training")
    ]
    import_dlib = [argv for argv in argvs if argv and argv[0] == "import-dlib"]
    assert import_dlib, f"{path.name} does not build the default model"
    for argv in argvs:
        build_parser().parse_args(argv)
    models_root = build_parser().parse_args(import_dlib[0]).models_root
    env: dict[str, str] = {}
    for instruction in stages[-1].all("ENV"):
        env.update(env_assignments(instruction.arguments))
    # The default model directory is where import-dlib wrote it, and it reaches the final stage.
    assert env["FACEVERIFY_MODEL_DIR"] == f"{models_root}/dlib_resnet_v1/1"
    assert any(str(models_root) in copy.arguments for copy in stages[-1].all("COPY"))


def test_dockerfile_installs_the_project_non_editable(dockerfile: tuple[Path, list[Stage]]) -> None:
    path, stages = dockerfile
    runs = " ".join(run.arguments for stage in stages for run in stage.all("RUN"))
    assert "pip install --no-cache-dir -c constraints.txt ." in runs
    assert " -e " not in runs and "--editable" not in runs
    if path.name == "Dockerfile":
        assert '"tensorflow[and-cuda]==2.21.0"' in runs


def test_dockerfile_healthcheck_is_ready_endpoint(dockerfile: tuple[Path, list[Stage]]) -> None:
    path, stages = dockerfile
    healthchecks = stages[-1].all("HEALTHCHECK")
    assert len(healthchecks) == 1, path.name
    options, _, command = healthchecks[0].arguments.partition("CMD ")
    start_period = re.search(r"--start-period=(\d+)s", options)
    assert start_period and int(start_period.group(1)) >= 60
    argv = exec_form(command)
    assert argv[:2] == ["python", "-c"] and "/health/ready" in argv[2]
    ast.parse(argv[2])


def test_dockerfile_copy_sources_exist_and_reach_the_context(
    dockerfile: tuple[Path, list[Stage]],
) -> None:
    path, stages = dockerfile
    copies = [copy for stage in stages for copy in stage.all("COPY")]
    local = [copy for copy in copies if "--from=" not in copy.arguments]
    assert local
    for copy in local:
        words = [word for word in copy.arguments.split() if not word.startswith("--")]
        for source in words[:-1]:
            assert (REPO_ROOT / source).exists(), f"{path.name}: COPY {source}: no such path"
            assert not dockerignore_excludes(source), f".dockerignore excludes {source}"


def test_dockerfile_env_vars_are_settings(dockerfile: tuple[Path, list[Stage]]) -> None:
    path, stages = dockerfile
    env: dict[str, str] = {}
    for instruction in stages[-1].all("ENV"):
        env.update(env_assignments(instruction.arguments))
    assert env["FACEVERIFY_HOST"] == "0.0.0.0"
    assert_settings_accept(env, path.name)


def test_gpu_dockerfile_has_a_train_stage() -> None:
    stages = {stage.name: stage for stage in parse_dockerfile(DOCKERFILES["gpu"])}
    train = stages["train"]
    runs = " ".join(run.arguments for run in train.all("RUN"))
    assert '".[train]"' in runs
    assert exec_form(train.all("ENTRYPOINT")[-1].arguments) == ["python", "-m", "training"]
    assert train.all("USER")


def test_dockerignore_keeps_out_the_heavy_and_the_secret() -> None:
    for path in (".venv/bin/python", ".git/HEAD", "models/dlib_resnet_v1/1", "data/x.jpg", ".env"):
        assert dockerignore_excludes(path), path
    for path in ("runs/evaluation", "tests/conftest.py", "app/__pycache__/main.cpython-311.pyc"):
        assert dockerignore_excludes(path), path
    assert not dockerignore_excludes("app/main.py")


# --- docker-compose.yml ---------------------------------------------------------------------------


def test_compose_build_contexts_and_dockerfiles_exist(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        build = service["build"]
        context = REPO_ROOT / build["context"]
        assert context.is_dir(), name
        dockerfile = context / build["dockerfile"]
        assert dockerfile.is_file(), name
        stage_names = {stage.name for stage in parse_dockerfile(dockerfile)}
        assert build.get("target") in stage_names, f"{name}: no stage {build.get('target')}"


def test_compose_api_service(services: dict[str, dict[str, Any]]) -> None:
    api = services["api"]
    assert "profiles" not in api, "`docker compose up` must start the GPU service"
    assert api["build"]["dockerfile"] == "docker/Dockerfile"
    assert "8000:8000" in api["ports"]
    assert api["restart"] == "unless-stopped"
    env_files = api["env_file"]
    assert any((item if isinstance(item, str) else item["path"]) == ".env" for item in env_files)
    assert "/health/ready" in " ".join(api["healthcheck"]["test"])
    assert api["healthcheck"]["start_period"] in {"60s", "90s", "120s"}
    devices = gpu_devices(api)
    assert devices and devices[0]["driver"] == "nvidia"
    assert "gpu" in devices[0]["capabilities"]


@pytest.mark.parametrize("name", ["api", "api-cpu"])
def test_compose_models_are_mounted_read_only(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    assert "./models:/models:ro" in services[name]["volumes"]


def test_compose_cpu_profile(services: dict[str, dict[str, Any]]) -> None:
    cpu = services["api-cpu"]
    assert cpu["profiles"] == ["cpu"]
    assert cpu["build"]["dockerfile"] == "docker/Dockerfile.cpu"
    assert not gpu_devices(cpu)
    assert "start_period" in cpu["healthcheck"]
    assert environment_of(cpu)["FACEVERIFY_DEVICE"] == "cpu"


def test_compose_train_profile(services: dict[str, dict[str, Any]]) -> None:
    train = services["train"]
    assert train["profiles"] == ["train"]
    assert train["build"]["target"] == "train"
    assert train["entrypoint"] == ["python", "-m", "training"]
    assert (REPO_ROOT / "training" / "__main__.py").is_file()
    with pytest.raises(SystemExit) as exit_info:  # the default command, --help, exits 0
        build_parser().parse_args(train["command"])
    assert exit_info.value.code == 0
    assert {"./data:/data", "./models:/models"} <= set(train["volumes"])
    assert {"KAGGLE_USERNAME", "KAGGLE_KEY"} <= set(environment_of(train))
    assert gpu_devices(train)[0]["driver"] == "nvidia"


def test_compose_env_vars_are_settings(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        variables = {
            key: without_interpolation(value)
            for key, value in environment_of(service).items()
            if value is not None
        }
        assert_settings_accept(variables, f"docker-compose.yml ({name})")


def test_readme_style_train_command_parses() -> None:
    # The command the Docker documentation shows for the train profile.
    argv = shlex.split(
        "evaluate --model /models/dlib_resnet_v1/1 --pairs /data/pairs.csv --images /data/images"
    )
    assert build_parser().parse_args(argv).command == "evaluate"
