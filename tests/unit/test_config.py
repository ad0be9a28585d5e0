"""Settings refuse to start without secrets outside testing, naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import AliasChoices, SecretStr

from app.config import ConfigurationError, Settings, load_settings, parse_origins
from app.secret_files import SECRET_SETTINGS, read_secret_file
from tests.helpers import free_port

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


def test_every_missing_required_secret_is_named_in_one_error(
    clean_secret_environment: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`python main.py` (the seed's entry point) without secrets named SESSION_PASSWORD only; set,
    the next start named MOVIEREC_JWT_SECRET: one missing secret per try. Each one the start
    needs is named in one line now (--debug needs no JWT secret)."""
    import main

    with pytest.raises(ConfigurationError) as refused:
        Settings().check_secrets()
    assert "SESSION_PASSWORD" in str(refused.value) and "MOVIEREC_JWT_SECRET" in str(refused.value)
    with pytest.raises(ConfigurationError) as refused:
        Settings(debug=True).check_secrets()
    assert "SESSION_PASSWORD" in str(refused.value) and "MOVIEREC_JWT_SECRET" not in str(refused.value)

    for name in ("MOVIEREC_TESTING", "MOVIEREC_DEBUG"):
        clean_secret_environment.delenv(name, raising=False)
    clean_secret_environment.setattr(main, "run_development_server", lambda *a: pytest.fail("served"))
    assert main.main(["--port", str(free_port())]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("movierec: ") and "SESSION_PASSWORD" in line and "MOVIEREC_JWT_SECRET" in line, (
        line
    )


def test_a_short_admin_password_is_refused_outside_testing_and_debug() -> None:
    """The admin password guards reload and the breaker with only the per-address login limit
    against guessing: one shorter than 12 characters (or a known default) refuses to start,
    naming the variable and how to make one. The session password keeps no minimum (the seed's
    SESSION_PASSWORD=test)."""
    for weak in ("admin", "x" * 11, "super-secret", "Super-Secret"):
        with pytest.raises(
            ConfigurationError,
            match=r"ADMIN_PASSWORD \(or MOVIEREC_ADMIN_PASSWORD\) is too weak.*12.*token_urlsafe",
        ):
            Settings(session_password="pw", admin_password=weak, jwt_secret=STRONG).check_secrets()
        Settings(testing=True, admin_password=weak).check_secrets()
        Settings(session_password="pw", admin_password=weak, debug=True).check_secrets()
    Settings(session_password="pw", admin_password="k7-walrus-tea", jwt_secret=STRONG).check_secrets()
    Settings(session_password="pw", jwt_secret=STRONG).check_secrets()  # no admin password: no admin


@pytest.mark.parametrize(
    ("password", "names"),
    [
        ("session_password", r"MOVIEREC_METRICS_TOKEN is SESSION_PASSWORD \(or MOVIEREC_SESSION_PASSWORD\)"),
        ("admin_password", r"MOVIEREC_METRICS_TOKEN is ADMIN_PASSWORD \(or MOVIEREC_ADMIN_PASSWORD\)"),
    ],
)
@pytest.mark.parametrize("debug", [False, True])
def test_a_metrics_token_equal_to_a_login_password_is_refused(password: str, names: str, debug: bool) -> None:
    """Every Prometheus scraper's configuration holds the metrics token: set to the session or
    admin password, each of them held a login (admin's, too) and the service started anyway.
    Refused, naming the variables and never the value; the development server too."""
    shared = "k7-walrus-tea-shared"
    secrets = {"session_password": "pw", "admin_password": "k7-walrus-tea", password: shared}
    settings = Settings(**secrets, jwt_secret=STRONG, metrics_token=shared, debug=debug)
    with pytest.raises(ConfigurationError, match=names) as refused:
        settings.check_secrets()
    assert shared not in str(refused.value)
    Settings(**secrets, jwt_secret=STRONG, metrics_token="another-token", debug=debug).check_secrets()
    Settings(testing=True, **secrets, metrics_token=shared).check_secrets()


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


def test_a_breaker_min_requests_beyond_the_call_buffer_bound_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each worker keeps max(2,000, min_requests) model calls, walked under the lock the request
    threads' call records need: an unbounded value grew that buffer and that walk without limit."""
    monkeypatch.setenv("MOVIEREC_BREAKER_MIN_REQUESTS", "10001")
    with pytest.raises(ConfigurationError, match="breaker_min_requests"):
        load_settings()
    monkeypatch.setenv("MOVIEREC_BREAKER_MIN_REQUESTS", "10000")
    assert load_settings().breaker_min_requests == 10_000


@pytest.mark.parametrize("value", ["25", "5.5", "-1"])
def test_a_breaker_min_mean_score_outside_the_score_scale_is_refused(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """Scores are 0.5..5: a minimum mean above 5 (25 for 2.5, a percentage) opened the breaker of
    every version as soon as it had its minimum feedback, and kept every probe failing; a negative
    one is no threshold at all. Both started. 0 (the documented "off") and 5 still do."""
    monkeypatch.setenv("MOVIEREC_BREAKER_MIN_MEAN_SCORE", value)
    with pytest.raises(ConfigurationError, match=r"^invalid setting breaker_min_mean_score: "):
        load_settings()
    for accepted in ("0", "5"):
        monkeypatch.setenv("MOVIEREC_BREAKER_MIN_MEAN_SCORE", accepted)
        assert load_settings().breaker_min_mean_score == float(accepted)


PG_URL = "postgresql://movierec:pg-pass%2Fword@db.internal:5432/movierec"
REDIS_URL = "redis://:redis-pass-word@cache.internal:6379/0"
MLFLOW_URI = "https://mlflow-user:mlflow-pass-word@tracking.internal/"


def test_no_secret_shows_in_the_settings_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    """The settings' repr (and that of the app's Services, which hold them) showed the database
    and Redis URLs with their passwords, and the MLflow tracking URI (a database URL or
    https://user:password@host); no secret's value is in it any more."""
    values = {"SESSION_PASSWORD": "session-pw", "MOVIEREC_JWT_SECRET": STRONG,
              "MOVIEREC_DATABASE_URL": PG_URL, "MOVIEREC_REDIS_URL": REDIS_URL,
              "MOVIEREC_MLFLOW_TRACKING_URI": MLFLOW_URI}  # fmt: skip
    for variable, value in values.items():
        monkeypatch.setenv(variable, value)
        monkeypatch.delenv(f"{variable}_FILE", raising=False)
    text = repr(load_settings(testing=True))
    for secret in ("session-pw", STRONG, "pg-pass", "redis-pass-word", "mlflow-pass-word"):
        assert secret not in text


def test_postgres_urls_get_the_psycopg_driver() -> None:
    assert Settings(database_url="postgresql://u@h/db").sqlalchemy_url == "postgresql+psycopg://u@h/db"
    assert Settings(database_url="sqlite:///x.db").sqlalchemy_url == "sqlite:///x.db"


def test_a_bad_metrics_network_is_refused_at_start() -> None:
    """A typo in MOVIEREC_METRICS_ALLOW_CIDRS started the service, then every scrape of /metrics
    answered a 500: it is a configuration error naming the entry."""
    with pytest.raises(ConfigurationError, match=r"metrics_allow_cidrs.*'bogus' is not a network"):
        load_settings(testing=True, metrics_allow_cidrs="10.0.0.0/8, bogus")
    assert load_settings(testing=True, metrics_allow_cidrs="10.0.0.0/8, ::1").metrics_allow_cidrs


def test_a_login_rate_limit_that_is_not_a_limit_is_refused_at_start() -> None:
    """A mistyped MOVIEREC_LOGIN_RATE_LIMIT ('ten per minute') started the service with no login
    limit at all (Flask-Limiter skips a limit it cannot parse: unlimited password guesses), and
    under uwsgi without Redis (each worker's share, app/api/security.py) the app failed to load on
    limits' bare ValueError; '0 per minute' became one try per worker. Refused at start."""
    for bad in ("ten per minute", "", "10/fortnight", "0 per minute", "5/second; 0/minute"):
        with pytest.raises(ConfigurationError, match=r"login_rate_limit"):
            load_settings(testing=True, login_rate_limit=bad)
    for good in ("10 per minute", "10/minute; 100/hour", "3 per 2 seconds"):
        assert load_settings(testing=True, login_rate_limit=good).login_rate_limit == good


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
    with pytest.raises(ConfigurationError, match=r"MOVIEREC_METRICS_TOKEN_FILE: .* is empty"):
        load_settings(testing=True)
    token_file.write_text("  \n")  # a file's content is the token, spaces included: a blank one
    with pytest.raises(ConfigurationError, match=r"metrics_token.*set but empty"):
        load_settings(testing=True)
    token_file.write_text("a-scrapers-token\n")
    assert load_settings(testing=True).metrics_token.get_secret_value() == "a-scrapers-token"
    monkeypatch.delenv("MOVIEREC_METRICS_TOKEN_FILE")
    assert load_settings(testing=True).metrics_token is None


@pytest.mark.parametrize(
    ("origins", "why"),
    [
        ("null", r"'null'.*sandboxed iframe"),
        ("https://ui.example, NULL", r"'NULL'.*sandboxed iframe"),
        ("*", r"'\*'.*list each origin"),
        ("https://ui.example/app", r"'https://ui.example/app'.*scheme://host\[:port\]"),
        ("https://ui.example?x=1", r"scheme://host\[:port\]"),
        ("https://ui.example#top", r"scheme://host\[:port\]"),
        ("https://user@ui.example", r"scheme://host\[:port\]"),
        ("ui.example", r"'ui.example'.*scheme://host\[:port\]"),
        ("https://", r"scheme://host\[:port\]"),
        ("https://ui example", r"scheme://host\[:port\]"),
        ("https://bücher.example", r"scheme://host\[:port\]"),
        ("https://ui.example:99999", r"scheme://host\[:port\]"),
        ("https://ui.example:443", r"write it as 'https://ui.example'"),
        ("HTTPS://UI.Example:8443", r"write it as 'https://ui.example:8443'"),
        ("file:///srv/ui/index.html", r"'null'"),
    ],
)
def test_a_cors_origin_that_is_a_hole_or_never_matches_is_refused_at_start(origins: str, why: str) -> None:
    """`null` was allowed like any origin (every sandboxed iframe and file: page sends it), `*`
    silently allowed nothing, and an origin with a path, a default port or capitals can never
    equal the Origin header a browser sends: all refused, naming the variable."""
    with pytest.raises(ConfigurationError, match=rf"MOVIEREC_CORS_ORIGINS: .*{why}"):
        load_settings(testing=True, cors_origins=origins)


def test_cors_origins_from_the_environment_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOVIEREC_CORS_ORIGINS", "https://ui.example,null")
    with pytest.raises(ConfigurationError, match="MOVIEREC_CORS_ORIGINS: 'null'"):
        load_settings(testing=True)
    # a trailing slash is the one difference taken as meant (it always matched): dropped
    origins = " https://ui.example/, http://localhost:5173,https://[::1]:8443 ,, app://desktop "
    monkeypatch.setenv("MOVIEREC_CORS_ORIGINS", origins)
    assert parse_origins(load_settings(testing=True).cors_origins) == {
        "https://ui.example", "http://localhost:5173", "https://[::1]:8443", "app://desktop"
    }  # fmt: skip
    monkeypatch.setenv("MOVIEREC_CORS_ORIGINS", "")
    assert parse_origins(load_settings(testing=True).cors_origins) == frozenset()


# --------------------------------------------------------------------------- secrets as files


@pytest.fixture
def clean_secret_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No secret, and no secret file, inherited from the environment running the tests."""
    for names in SECRET_SETTINGS.values():
        for name in names:
            monkeypatch.delenv(name, raising=False)
            monkeypatch.delenv(f"{name}_FILE", raising=False)
    return monkeypatch


def test_the_secret_table_names_every_variable_settings_read(
    clean_secret_environment: pytest.MonkeyPatch,
) -> None:
    """app.secret_files.SECRET_SETTINGS (stdlib only: deploy-docker.py delivers these names as
    files) must list the variables pydantic reads for each secret, or a file would go unread."""
    for name, names in SECRET_SETTINGS.items():
        for variable in names:
            value = _secret_value(name, "v" * 40)
            clean_secret_environment.setenv(variable, value)
            assert _plain(getattr(load_settings(testing=True), name)) == value, variable
            clean_secret_environment.delenv(variable)


def _plain(value: SecretStr | str | None) -> str | None:
    """A secret setting's value: most are SecretStr, the database and Redis URLs plain str."""
    return value.get_secret_value() if isinstance(value, SecretStr) else value


_URL_FORMS = {"database_url": "postgresql://movierec:{}@db/movierec", "redis_url": "redis://:{}@cache:6379/0"}


def _secret_value(field: str, text: str) -> str:
    """``text`` as a value the setting takes: inside a URL for the database and Redis URLs (the
    settings refuse what is no URL), as it is for the others."""
    return _URL_FORMS.get(field, "{}").format(text)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("pw\n", "pw"),
        ("pw", "pw"),
        ("pw\r\n", "pw"),
        ("pw\n\n", "pw\n"),
        (" pw \n", " pw "),
        ("a\nb\n", "a\nb"),
    ],
)
def test_a_secret_file_loses_exactly_one_trailing_newline(
    clean_secret_environment: pytest.MonkeyPatch, tmp_path: Path, content: str, expected: str
) -> None:
    """echo's (or an editor's) newline is not part of the secret; anything else is, spaces too."""
    path = tmp_path / "session-password"
    path.write_text(content, newline="")
    clean_secret_environment.setenv("SESSION_PASSWORD_FILE", str(path))
    settings = load_settings(testing=True)
    assert settings.session_password is not None
    assert settings.session_password.get_secret_value() == expected
    assert read_secret_file(path, "SESSION_PASSWORD_FILE") == expected


@pytest.mark.parametrize("ending", ["\n", "\r\n", ""])
def test_a_secret_file_written_with_a_byte_order_mark_loses_it(
    clean_secret_environment: pytest.MonkeyPatch, tmp_path: Path, ending: str
) -> None:
    """Windows PowerShell's ``Set-Content -Encoding UTF8`` and ``Out-File -Encoding utf8`` (and
    older Notepad) begin a UTF-8 file with a byte-order mark: it was read as a U+FEFF first
    character of the password, so the password typed was "invalid session password" with no
    clue why (and a JWT secret file differed from the same secret without one). The mark is not
    part of the secret; the newline rule is the same."""
    path = tmp_path / "session-password"
    path.write_bytes(b"\xef\xbb\xbf" + f"pw{ending}".encode())
    clean_secret_environment.setenv("SESSION_PASSWORD_FILE", str(path))
    settings = load_settings(testing=True)
    assert settings.session_password is not None
    assert settings.session_password.get_secret_value() == "pw"
    assert read_secret_file(path, "SESSION_PASSWORD_FILE") == "pw"
    path.write_bytes(b"\xef\xbb\xbf\n")
    with pytest.raises(ConfigurationError, match="is empty"):
        load_settings(testing=True)


@pytest.mark.parametrize(
    ("variable", "field"),
    [
        ("SESSION_PASSWORD", "session_password"),
        ("MOVIEREC_SESSION_PASSWORD", "session_password"),
        ("ADMIN_PASSWORD", "admin_password"),
        ("MOVIEREC_ADMIN_PASSWORD", "admin_password"),
        ("MOVIEREC_JWT_SECRET", "jwt_secret"),
        ("MOVIEREC_METRICS_TOKEN", "metrics_token"),
        ("MOVIEREC_DATABASE_URL", "database_url"),
        ("MOVIEREC_REDIS_URL", "redis_url"),
        ("MOVIEREC_MLFLOW_TRACKING_URI", "mlflow_tracking_uri"),
    ],
)
def test_every_secret_comes_from_its_file_or_its_variable(
    clean_secret_environment: pytest.MonkeyPatch, tmp_path: Path, variable: str, field: str
) -> None:
    path = tmp_path / variable
    from_file, from_env = _secret_value(field, STRONG), _secret_value(field, "from-env-" + STRONG)
    path.write_text(from_file + "\n")
    clean_secret_environment.setenv(f"{variable}_FILE", str(path))
    assert _plain(getattr(load_settings(testing=True), field)) == from_file
    clean_secret_environment.delenv(f"{variable}_FILE")
    clean_secret_environment.setenv(variable, from_env)
    assert _plain(getattr(load_settings(testing=True), field)) == from_env


def test_the_database_and_redis_urls_may_be_secret_files(
    clean_secret_environment: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A PostgreSQL or Redis URL carries its password: in MOVIEREC_DATABASE_URL / _REDIS_URL it was
    in the container's configuration (docker inspect) and every process's /proc/<pid>/environ,
    with no file form to keep it out. Read from the file, it is used as the variable would be."""
    (tmp_path / "database-url").write_text(PG_URL + "\n")
    (tmp_path / "redis-url").write_text(REDIS_URL + "\n")
    clean_secret_environment.setenv("MOVIEREC_DATABASE_URL_FILE", str(tmp_path / "database-url"))
    clean_secret_environment.setenv("MOVIEREC_REDIS_URL_FILE", str(tmp_path / "redis-url"))
    settings = load_settings(testing=True)
    assert settings.database_url == PG_URL
    assert settings.sqlalchemy_url == PG_URL.replace("postgresql://", "postgresql+psycopg://")
    assert settings.redis_url == REDIS_URL


def test_an_empty_variable_beside_its_file_is_not_a_second_value(
    clean_secret_environment: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The image sets MOVIEREC_DATABASE_URL (its SQLite file); emptying it (``-e
    MOVIEREC_DATABASE_URL=``, as deploy-docker.py does) lets the file give the URL."""
    (tmp_path / "database-url").write_text(PG_URL + "\n")
    clean_secret_environment.setenv("MOVIEREC_DATABASE_URL", "")
    clean_secret_environment.setenv("MOVIEREC_DATABASE_URL_FILE", str(tmp_path / "database-url"))
    assert load_settings(testing=True).database_url == PG_URL


@pytest.mark.parametrize(
    ("value_variable", "file_variable"),
    [
        ("SESSION_PASSWORD", "SESSION_PASSWORD_FILE"),
        ("MOVIEREC_SESSION_PASSWORD", "SESSION_PASSWORD_FILE"),
        ("MOVIEREC_JWT_SECRET", "MOVIEREC_JWT_SECRET_FILE"),
        ("MOVIEREC_ADMIN_PASSWORD", "MOVIEREC_ADMIN_PASSWORD_FILE"),
        ("MOVIEREC_METRICS_TOKEN", "MOVIEREC_METRICS_TOKEN_FILE"),
        ("MOVIEREC_DATABASE_URL", "MOVIEREC_DATABASE_URL_FILE"),
        ("MOVIEREC_REDIS_URL", "MOVIEREC_REDIS_URL_FILE"),
        ("MOVIEREC_MLFLOW_TRACKING_URI", "MOVIEREC_MLFLOW_TRACKING_URI_FILE"),
    ],
)
def test_a_secret_given_both_as_a_value_and_a_file_is_refused(
    clean_secret_environment: pytest.MonkeyPatch, tmp_path: Path, value_variable: str, file_variable: str
) -> None:
    """Which one wins was a silent precedence rule: a stale variable left in a unit file beat the
    rotated secret file (or the reverse). Both set is a start-up error naming both."""
    path = tmp_path / "secret"
    path.write_text(STRONG + "\n")
    clean_secret_environment.setenv(file_variable, str(path))
    clean_secret_environment.setenv(value_variable, "other-" + STRONG)
    with pytest.raises(ConfigurationError, match=rf"{value_variable} and {file_variable} are both set"):
        load_settings(testing=True)


@pytest.mark.parametrize(
    ("seed_name", "prefixed_name"),
    [("SESSION_PASSWORD", "MOVIEREC_SESSION_PASSWORD"), ("ADMIN_PASSWORD", "MOVIEREC_ADMIN_PASSWORD")],
)
def test_a_password_set_under_both_its_names_with_two_values_is_refused(
    clean_secret_environment: pytest.MonkeyPatch, seed_name: str, prefixed_name: str
) -> None:
    """The seed's name won silently over the MOVIEREC_ one: an admin password rotated in
    MOVIEREC_ADMIN_PASSWORD (the name docker.md and compose use) beside a stale ADMIN_PASSWORD
    (README's var/secrets.env exports it) left the old password working and the new one refused.
    Two values are a start-up error naming both; the same value under both names is one secret."""
    clean_secret_environment.setenv(seed_name, "stale-password-" + STRONG)
    clean_secret_environment.setenv(prefixed_name, "rotated-password-" + STRONG)
    with pytest.raises(ConfigurationError, match=rf"{seed_name} and {prefixed_name} are both set") as error:
        load_settings(testing=True)
    assert STRONG not in str(error.value), "the message names the variables, never a value"
    clean_secret_environment.setenv(prefixed_name, "stale-password-" + STRONG)
    field = seed_name.lower()
    assert _plain(getattr(load_settings(testing=True), field)) == "stale-password-" + STRONG


def test_two_files_for_one_secret_are_refused(
    clean_secret_environment: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("a", "b"):
        (tmp_path / name).write_text(f"{name}-password\n")
    clean_secret_environment.setenv("ADMIN_PASSWORD_FILE", str(tmp_path / "a"))
    clean_secret_environment.setenv("MOVIEREC_ADMIN_PASSWORD_FILE", str(tmp_path / "b"))
    with pytest.raises(ConfigurationError, match="ADMIN_PASSWORD_FILE and MOVIEREC_ADMIN_PASSWORD_FILE"):
        load_settings(testing=True)


@pytest.mark.parametrize(
    "variable",
    ["MOVIEREC_JWT_SECRET", "MOVIEREC_DATABASE_URL", "MOVIEREC_REDIS_URL", "MOVIEREC_MLFLOW_TRACKING_URI"],
)
@pytest.mark.parametrize("content", ["", "\n", "\r\n"])
def test_an_empty_secret_file_is_refused_naming_the_setting(
    clean_secret_environment: pytest.MonkeyPatch, tmp_path: Path, content: str, variable: str
) -> None:
    """An empty file is a secret not written yet, not an empty password: refused even when testing,
    like an empty value, and the error names the variable and the file."""
    path = tmp_path / "secret"
    path.write_text(content, newline="")
    clean_secret_environment.setenv(f"{variable}_FILE", str(path))
    with pytest.raises(ConfigurationError, match=rf"{variable}_FILE: {path} is empty"):
        load_settings(testing=True)


@pytest.mark.parametrize("variable", ["SESSION_PASSWORD", "MOVIEREC_DATABASE_URL", "MOVIEREC_REDIS_URL"])
def test_an_unreadable_secret_file_is_refused_naming_the_setting(
    clean_secret_environment: pytest.MonkeyPatch, tmp_path: Path, variable: str
) -> None:
    clean_secret_environment.setenv(f"{variable}_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigurationError, match=rf"{variable}_FILE: cannot read .*missing"):
        load_settings(testing=True)


def test_a_secret_from_a_file_passes_the_start_up_checks(
    clean_secret_environment: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """What deploy-docker.py gives the container: only *_FILE variables, no secret value."""
    for name, value in (("SESSION_PASSWORD", "pw"), ("MOVIEREC_JWT_SECRET", STRONG)):
        (tmp_path / name).write_text(value + "\n")
        clean_secret_environment.setenv(f"{name}_FILE", str(tmp_path / name))
    settings = load_settings()
    settings.check_secrets()
    assert settings.session_password is not None and settings.session_password.get_secret_value() == "pw"
    assert "pw" not in repr(settings).replace("password", "")


@pytest.mark.parametrize("command", [["db", "upgrade"], ["serve"]])
def test_a_bad_setting_is_a_one_line_cli_error(
    command: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`movierec db upgrade` let a missing secret file out as a traceback; every command now
    says which variable and file, in one line, and exits 1."""
    from click.testing import CliRunner

    from app.cli import cli

    missing = tmp_path / "no-such-file"
    monkeypatch.delenv("MOVIEREC_DATABASE_URL", raising=False)
    monkeypatch.setenv("MOVIEREC_DATABASE_URL_FILE", str(missing))
    port = ["--port", str(free_port())] if command == ["serve"] else []  # not :5000, `make run`'s
    result = CliRunner().invoke(cli, [*command, *port])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert f"MOVIEREC_DATABASE_URL_FILE: cannot read {missing}" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("value", ["0", "101", "-3"])
def test_a_default_max_recs_the_api_would_refuse_is_refused_at_start(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """The web form was pre-filled with MOVIEREC_DEFAULT_MAX_RECS, which the form then refused."""
    monkeypatch.setenv("MOVIEREC_DEFAULT_MAX_RECS", value)
    with pytest.raises(ConfigurationError, match=r"default_max_recs: .*between 1 and 100"):
        load_settings(testing=True)
    monkeypatch.setenv("MOVIEREC_DEFAULT_MAX_RECS", "100")
    assert load_settings(testing=True).default_max_recs == 100


def test_serve_without_a_session_password_is_a_one_line_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The secrets are checked when the app is built, after the settings are read: `movierec
    serve` without SESSION_PASSWORD ended in a ConfigurationError traceback."""
    from click.testing import CliRunner

    from app.cli import cli

    for name in ("SESSION_PASSWORD", "MOVIEREC_SESSION_PASSWORD", "MOVIEREC_TESTING"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MOVIEREC_DATABASE_URL", f"sqlite:///{tmp_path / 'service.db'}")
    monkeypatch.setattr("app.run_development_server", lambda *args: pytest.fail("the server was started"))
    result = CliRunner().invoke(cli, ["serve", "--debug", "--port", str(free_port())])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "SESSION_PASSWORD" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    "variable",
    ["SESSION_PASSWORD", "MOVIEREC_ADMIN_PASSWORD", "MOVIEREC_JWT_SECRET", "MOVIEREC_METRICS_TOKEN"],
)
def test_a_secret_that_is_not_utf8_is_refused_naming_its_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    """A secret variable holding bytes that are not UTF-8 (a Latin-1 ``café``: Python reads the
    ``\\xe9`` as the lone surrogate ``\\udce9``) started the service, and every login (or every
    scrape) was a 500: the comparison and the JWT signature encode the secret as UTF-8, and no
    typed password could ever match it. Refused at start, naming the variable, as a secret file
    that is not UTF-8 already was."""
    values = {
        "SESSION_PASSWORD": "session-pw",
        "MOVIEREC_ADMIN_PASSWORD": "admin-password-long",
        "MOVIEREC_JWT_SECRET": STRONG,
        "MOVIEREC_METRICS_TOKEN": "scrape-token",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(variable, values[variable] + "-caf\udce9")  # the byte 0xe9 in the environment
    with pytest.raises(ConfigurationError, match=rf"{variable}.*UTF-8"):
        load_settings().check_secrets()


FLOAT_SETTINGS = sorted(
    name
    for name, field in Settings.model_fields.items()
    if field.annotation is float or float in getattr(field.annotation, "__args__", ())
)


def test_the_float_settings_are_found() -> None:
    """The parametrisation below is not empty, and covers the ones that once took inf or nan."""
    assert {
        "gate_tolerance",
        "breaker_max_latency_ms",
        "breaker_max_rmse",
        "breaker_min_mean_score",
        "drift_psi_threshold",
        "quality_window_seconds",
    } <= set(FLOAT_SETTINGS)


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "Infinity"])
@pytest.mark.parametrize("field", FLOAT_SETTINGS)
def test_a_float_setting_that_is_not_a_finite_number_is_refused_at_start(
    monkeypatch: pytest.MonkeyPatch, field: str, value: str
) -> None:
    """Every number setting is finite: MOVIEREC_BREAKER_MAX_LATENCY_MS=inf switched the latency
    check off, MOVIEREC_BREAKER_MAX_RMSE=nan never opened the breaker (nan compares false),
    MOVIEREC_DRIFT_PSI_THRESHOLD=inf never alerted, MOVIEREC_GATE_TOLERANCE=inf passed every
    candidate; no setting needs inf to mean "off" (docs/operations.md: set it out of reach)."""
    monkeypatch.setenv(f"MOVIEREC_{field.upper()}", value)
    with pytest.raises(ConfigurationError, match=rf"^invalid setting {field}: .*finite"):
        load_settings()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        # short: pydantic quotes a long value's beginning and end only (a password's end, then)
        ("MOVIEREC_DATABASE_URL", "postgres://u:secret-pw@db:x/d"),
        ("MOVIEREC_REDIS_URL", "http://:secret-pw@cache:6379/0"),
        ("SESSION_PASSWORD", "secret-pw-caf\udce9"),  # not UTF-8
        ("ADMIN_PASSWORD", "secret-pw" + "x" * 1024),  # longer than a login takes
    ],
)
def test_a_refused_setting_is_not_in_the_traceback_of_its_error(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    """uwsgi creates the app at import (app/wsgi.py) and prints the whole traceback of a failure,
    the chained ValidationError included, whose text quoted the refused value
    (``input_value='postgresql://movierec:secret-pw@…'``): a malformed database URL, a Redis URL
    or a password that is not UTF-8 reached the log with its password. The message names the
    variable; neither it nor the exception it was raised from shows the value."""
    import traceback

    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    printed = "".join(traceback.format_exception(caught.value))
    assert "ValidationError" in printed  # the cause is still shown, without its input
    assert "secret-pw" not in printed, printed


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("abc", "comma-separated integers"),
        ("0,x", "comma-separated integers"),
        ("-1", "non-negative"),
        ("0,-3", "non-negative"),
        ("", "at least one split seed"),
        (" , ", "at least one split seed"),
    ],
)
def test_pipeline_seeds_that_are_no_seeds_are_refused_at_start(
    monkeypatch: pytest.MonkeyPatch, value: str, why: str
) -> None:
    """MOVIEREC_PIPELINE_SEEDS is checked with the other settings (parse_seeds), not by the
    Metaflow flow's start step, seconds into a run (the scheduler's every night)."""
    monkeypatch.setenv("MOVIEREC_PIPELINE_SEEDS", value)
    with pytest.raises(ConfigurationError, match=rf"^invalid setting pipeline_seeds: .*{why}"):
        load_settings()


def test_pipeline_seeds_keep_the_text_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOVIEREC_PIPELINE_SEEDS", "4, 2,2")
    assert load_settings().pipeline_seeds == "4, 2,2"


def _variables(field: str) -> list[str]:
    """The environment variables a setting is read from."""
    alias = Settings.model_fields[field].validation_alias
    if isinstance(alias, AliasChoices):
        return [str(name) for name in alias.choices]
    return [f"MOVIEREC_{field.upper()}"]


PATH_SETTINGS = sorted(
    name
    for name, field in Settings.model_fields.items()
    if field.annotation is Path or Path in getattr(field.annotation, "__args__", ())
)


def test_the_path_settings_are_found() -> None:
    assert {"model_path", "model_dir", "data_dir", "var_dir", "feedback_journal_dir"} <= set(PATH_SETTINGS)


@pytest.mark.parametrize(
    "variable", [(field, name) for field in PATH_SETTINGS for name in _variables(field)], ids=str
)
def test_an_empty_path_variable_is_unset(monkeypatch: pytest.MonkeyPatch, variable: tuple[str, str]) -> None:
    """``ML_MODEL_PATH=`` (a compose file's ``${VAR:-}``, a Makefile variable left empty) read as
    Path(""), the current directory: the service looked for its model in the working directory
    and the journal of acknowledged scores went there. Empty is unset, as the CLI's click options
    already read MOVIEREC_DATA_DIR and MOVIEREC_MODEL_DIR."""
    field, name = variable
    monkeypatch.setenv(name, "")
    settings = load_settings()
    assert getattr(settings, field) == Settings.model_fields[field].default
    monkeypatch.setenv(name, "elsewhere")
    assert getattr(load_settings(), field) == Path("elsewhere")


def test_an_empty_journal_variable_keeps_the_journal_under_var(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOVIEREC_VAR_DIR", "/srv/movierec")
    monkeypatch.setenv("MOVIEREC_FEEDBACK_JOURNAL_DIR", "")
    assert load_settings().feedback_journal.parent == Path("/srv/movierec/feedback-journal")


_RETRY = "MOVIEREC_SCHEDULE_RETRY_SECONDS"
_RETRY_MAX = "MOVIEREC_SCHEDULE_RETRY_MAX_SECONDS"


@pytest.mark.parametrize(
    ("variables", "refused"),
    [
        ({_RETRY: "-1"}, "schedule_retry_seconds: Input should be greater than or equal to 0"),
        ({_RETRY: "2 days"}, "schedule_retry_seconds: Input should be a valid number"),
        ({_RETRY: "172800"}, "schedule_retry_seconds: Input should be less than or equal to 86400"),
        ({_RETRY_MAX: "0"}, "schedule_retry_max_seconds: Input should be greater than 0"),
        ({_RETRY: "600", _RETRY_MAX: "300"},
         f"schedule_retry_max_seconds: Value error, must be at least {_RETRY} (600)"),
    ],
)  # fmt: skip
def test_the_scheduler_s_retry_waits_are_checked_at_start(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], refused: str
) -> None:
    """The waits between the tries of a failed tick while there is no champion (docs/pipeline.md,
    "The schedule"): a negative wait, one past a day (the cron expression's work) or a cap below
    the first wait is refused at start, naming the setting."""
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as refusal:
        load_settings(testing=True)
    assert str(refusal.value).startswith(f"invalid setting {refused}"), refusal.value
    for name in variables:
        monkeypatch.delenv(name)
    settings = load_settings(testing=True, schedule_retry_seconds=0)  # 0: no tries, the cron time
    assert (settings.schedule_retry_seconds, settings.schedule_retry_max_seconds) == (0, 3600)
