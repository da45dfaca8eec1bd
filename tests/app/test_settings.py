"""Settings from the environment: lists, secrets, validation messages."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from app.settings import Settings, describe_settings_error

REPO_ROOT = Path(__file__).resolve().parents[2]


def from_env(monkeypatch: pytest.MonkeyPatch, **variables: str) -> Settings:
    for name, value in variables.items():
        monkeypatch.setenv(f"FACEVERIFY_{name.upper()}", value)
    return Settings(_env_file=None)  # type: ignore[call-arg]


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = from_env(monkeypatch)
    assert settings.host == "127.0.0.1" and settings.port == 8000
    assert settings.api_keys == [] and settings.cors_origins == []
    assert settings.threshold is None and settings.flip_augmentation is None
    assert settings.max_image_bytes == 10 * 1024 * 1024
    assert settings.device == "auto" and settings.log_format == "text"


@pytest.mark.parametrize("value", ["sesame-1, sesame-2 ,", '["sesame-1", "sesame-2"]'])
def test_api_keys_comma_separated_or_json_and_secret(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    settings = from_env(monkeypatch, api_keys=value)
    assert [key.get_secret_value() for key in settings.api_keys] == ["sesame-1", "sesame-2"]
    assert "sesame" not in repr(settings) and "sesame" not in str(settings.model_dump())


def test_cors_origins_and_case(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = from_env(
        monkeypatch, cors_origins="https://a.example,https://b.example", log_level="DEBUG"
    )
    assert settings.cors_origins == ["https://a.example", "https://b.example"]
    assert settings.log_level == "debug"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("port", "eighty", "FACEVERIFY_PORT: Input should be a valid integer"),
        ("device", "tpu", "FACEVERIFY_DEVICE: Input should be 'auto', 'cpu' or 'gpu'"),
        ("threshold", "-1", "FACEVERIFY_THRESHOLD: Input should be greater than 0"),
        ("api_keys", '["a", ', "FACEVERIFY_API_KEYS: Value error, must be a JSON list"),
        ("api_keys", '[" "]', "FACEVERIFY_API_KEYS: Value error, API keys must not be empty"),
        ("min_face_score", "2", "FACEVERIFY_MIN_FACE_SCORE: Input should be less than or equal"),
    ],
)
def test_invalid_values_are_named_as_variables(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    with pytest.raises(ValidationError) as raised:
        from_env(monkeypatch, **{name: value})
    described = describe_settings_error(raised.value)
    assert described.startswith("Invalid settings:")
    assert message in described
    assert value not in described or len(value) < 3, "the value (maybe a key) is not repeated"


def test_env_example_lists_every_setting_with_its_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    example = REPO_ROOT / ".env.example"
    names = {
        line.split("=", 1)[0]
        for line in example.read_text(encoding="utf-8").splitlines()
        if line and not line.startswith("#")
    }
    assert names == {f"FACEVERIFY_{name.upper()}" for name in Settings.model_fields}
    for name in names:
        monkeypatch.delenv(name, raising=False)
    assert Settings(_env_file=example) == Settings(_env_file=None)  # type: ignore[call-arg]
