"""Settings fail fast with messages that name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from app.settings import Settings


def test_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("NOMINAL_DATABASE_URL", "NOMINAL_ADMIN_KEY", "NOMINAL_MAX_UPLOAD_BYTES",
                 "NOMINAL_MAX_IMAGE_PIXELS", "NOMINAL_AUTH_ENABLED", "NOMINAL_METRICS_ACCESS",
                 "NOMINAL_LOG_FORMAT", "NOMINAL_LOG_LEVEL"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.database_url == "sqlite:///./data/nominal.db"
    assert (tmp_path / "data").is_dir()  # the folder is created
    assert settings.max_upload_bytes == 20 * 1024 * 1024
    assert settings.max_image_pixels == 40_000_000
    assert settings.admin_key is None
    # Secure by default: authentication is on unless turned off explicitly.
    assert settings.auth_enabled is True
    assert settings.metrics_access == "open"
    assert (settings.log_format, settings.log_level) == ("json", "INFO")


def test_auth_is_turned_off_only_explicitly(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    monkeypatch.setenv("NOMINAL_DATABASE_URL", f"sqlite:///{tmp_path}/n.db")
    monkeypatch.setenv("NOMINAL_AUTH_ENABLED", "false")
    assert Settings().auth_enabled is False
    monkeypatch.setenv("NOMINAL_AUTH_ENABLED", "maybe")
    with pytest.raises(ValidationError, match="auth_enabled"):
        Settings()


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NOMINAL_DATABASE_URL", f"sqlite:///{tmp_path}/x/y.db")
    monkeypatch.setenv("NOMINAL_MAX_BATCH_FILES", "7")
    monkeypatch.setenv("NOMINAL_ADMIN_KEY", "")
    settings = Settings()
    assert settings.max_batch_files == 7 and settings.admin_key is None
    assert (tmp_path / "x").is_dir()


@pytest.mark.parametrize("url, message", [
    ("mysql://x@y/z", "sqlite"),
    ("postgresql+psycopg2://u@h/d", "psycopg 3"),
    ("sqlite://", "SQLite file"),
    ("not a url", "not a database URL"),
])
def test_bad_database_urls(url: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(database_url=url)


def test_plain_postgres_url_uses_psycopg() -> None:
    settings = Settings(database_url="postgresql://postgres@127.0.0.1:5432/test")
    assert settings.database_url.startswith("postgresql+psycopg://")


@pytest.mark.parametrize("field, value", [
    ("max_upload_bytes", 0), ("max_image_pixels", -1), ("model_cache_size", 0),
    ("inference_threads", 0), ("job_poll_interval_s", 0), ("training_workers", -1),
])
def test_bad_limits(tmp_path: Path, field: str, value: int) -> None:
    with pytest.raises(ValidationError, match=field):
        Settings(database_url=f"sqlite:///{tmp_path}/n.db", **{field: value})


def test_related_limits(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="NOMINAL_MAX_REQUEST_BYTES"):
        Settings(database_url=f"sqlite:///{tmp_path}/n.db", max_upload_bytes=10_000,
                 max_request_bytes=5_000)
    with pytest.raises(ValidationError, match="unknown backbones"):
        Settings(database_url=f"sqlite:///{tmp_path}/n.db", preload_backbones=("nope",))


def test_errors_never_echo_secrets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    from app.cli import main
    from app.settings import SettingsError, get_settings

    secret_key, password = "Sec1-not-16", "hunter2-password"
    monkeypatch.setenv("NOMINAL_ADMIN_KEY", secret_key)
    monkeypatch.setenv("NOMINAL_DATABASE_URL", f"postgresql+asyncpg://u:{password}@db/nominal")
    monkeypatch.setenv("NOMINAL_MAX_BATCH_FILES", "many")
    get_settings.cache_clear()
    try:
        with pytest.raises(SettingsError) as caught:
            get_settings()
        problems = caught.value.problems
        assert [p.split(":")[0] for p in problems] == [
            "NOMINAL_DATABASE_URL", "NOMINAL_ADMIN_KEY", "NOMINAL_MAX_BATCH_FILES"]
        text = str(caught.value)
        assert secret_key not in text and password not in text
        assert "16 characters" in text and "'many'" in text  # other values are still shown
        # The command: one line per problem on stderr, exit status 2, no traceback.
        assert main(["serve", "--port", "1"]) == 2
        err = capsys.readouterr().err
        assert secret_key not in err and password not in err and "Traceback" not in err
        assert "NOMINAL_ADMIN_KEY: NOMINAL_ADMIN_KEY must be at least 16 characters" in err
    finally:
        get_settings.cache_clear()


def test_an_unparsable_database_url_is_not_echoed() -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(database_url="user:hunter2 at db")
    assert [e["msg"] for e in caught.value.errors()] == [
        "Value error, NOMINAL_DATABASE_URL is not a database URL; expected "
        "sqlite:///path/to/file.db or postgresql+psycopg://user:password@host:5432/dbname"]


def test_settings_take_providers_as_a_json_list(monkeypatch: pytest.MonkeyPatch) -> None:
    providers = '["CUDAExecutionProvider", "CPUExecutionProvider"]'
    monkeypatch.setenv("NOMINAL_EXECUTION_PROVIDERS", providers)
    assert Settings().execution_providers == ("CUDAExecutionProvider", "CPUExecutionProvider")
