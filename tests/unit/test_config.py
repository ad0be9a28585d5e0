"""Settings refuse to start without secrets outside testing, naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config import ConfigurationError, Settings, load_settings

pytestmark = pytest.mark.unit

STRONG = "s" * 20 + "0123456789abcdefghij"


def test_missing_session_password_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SESSION_PASSWORD", raising=False)
    with pytest.raises(ConfigurationError, match="SESSION_PASSWORD"):
        Settings(jwt_secret=STRONG).check_secrets()


def test_missing_or_weak_jwt_secret_is_named() -> None:
    with pytest.raises(ConfigurationError, match="MOVIEREC_JWT_SECRET is not set"):
        Settings(session_password="pw").check_secrets()
    for weak in ("secret", "short", "changeme"):
        with pytest.raises(ConfigurationError, match="too weak"):
            Settings(session_password="pw", jwt_secret=weak).check_secrets()
    Settings(session_password="pw", jwt_secret=STRONG).check_secrets()


def test_debug_may_run_without_a_jwt_secret_but_not_without_a_password() -> None:
    Settings(session_password="pw", debug=True).check_secrets()
    with pytest.raises(ConfigurationError, match="SESSION_PASSWORD"):
        Settings(debug=True).check_secrets()


def test_seed_environment_names_and_secret_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secret_file = tmp_path / "jwt"
    secret_file.write_text(STRONG + "\n")
    monkeypatch.setenv("SESSION_PASSWORD", "from-env")
    monkeypatch.setenv("ML_MODEL_PATH", "/models/x")
    monkeypatch.setenv("MOVIEREC_JWT_SECRET_FILE", str(secret_file))
    settings = load_settings()
    assert settings.session_password and settings.session_password.get_secret_value() == "from-env"
    assert settings.jwt_secret and settings.jwt_secret.get_secret_value() == STRONG
    assert settings.model_path == Path("/models/x")
    assert "from-env" not in repr(settings)  # secrets never print


def test_invalid_values_name_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOVIEREC_TOKEN_TTL_SECONDS", "soon")
    with pytest.raises(ConfigurationError, match="token_ttl_seconds"):
        load_settings()


def test_postgres_urls_get_the_psycopg_driver() -> None:
    assert Settings(database_url="postgresql://u@h/db").sqlalchemy_url == "postgresql+psycopg://u@h/db"
    assert Settings(database_url="sqlite:///x.db").sqlalchemy_url == "sqlite:///x.db"


def test_a_bad_metrics_network_is_refused_at_start() -> None:
    """A typo in MOVIEREC_METRICS_ALLOW_CIDRS started the service, then every scrape of /metrics
    answered a 500: it is a configuration error naming the entry."""
    with pytest.raises(ConfigurationError, match=r"metrics_allow_cidrs.*'bogus' is not a network"):
        load_settings(testing=True, metrics_allow_cidrs="10.0.0.0/8, bogus")
    assert load_settings(testing=True, metrics_allow_cidrs="10.0.0.0/8, ::1").metrics_allow_cidrs


def test_a_bad_log_level_is_refused_at_start() -> None:
    """MOVIEREC_LOG_LEVEL=verbose (or empty) passed settings and crashed create_app with
    logging's bare ValueError ("Unknown level"), naming neither the variable nor the choices."""
    for bad in ("verbose", ""):
        with pytest.raises(ConfigurationError, match=r"log_level.*DEBUG, INFO, WARNING, ERROR, CRITICAL"):
            load_settings(testing=True, log_level=bad)
    assert load_settings(testing=True, log_level="warning").log_level == "WARNING"


def test_an_empty_metrics_token_is_refused_at_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MOVIEREC_METRICS_TOKEN= (or a token file still empty) was taken as no token: /metrics
    answered every address, the opposite of what setting it asked for."""
    for empty in ("", "  "):
        with pytest.raises(ConfigurationError, match=r"metrics_token.*set but empty"):
            load_settings(testing=True, metrics_token=empty)
    token_file = tmp_path / "token"
    token_file.write_text("\n")
    monkeypatch.setenv("MOVIEREC_METRICS_TOKEN_FILE", str(token_file))
    monkeypatch.delenv("MOVIEREC_METRICS_TOKEN", raising=False)
    with pytest.raises(ConfigurationError, match=r"metrics_token.*set but empty"):
        load_settings(testing=True)
    token_file.write_text("a-scrapers-token\n")
    assert load_settings(testing=True).metrics_token.get_secret_value() == "a-scrapers-token"
    monkeypatch.delenv("MOVIEREC_METRICS_TOKEN_FILE")
    assert load_settings(testing=True).metrics_token is None
