"""Settings: typed, from the environment, validated once at start-up (twelve-factor).

Environment variables use the ``MOVIEREC_`` prefix, plus the seed's own names
``ML_MODEL_PATH``, ``SESSION_PASSWORD`` and ``ADMIN_PASSWORD``. Any secret, the database,
Redis and MLflow tracking URLs (which carry their passwords) included, may instead be given as
a file path in ``<NAME>_FILE`` (Docker/Kubernetes secrets; never both, see
app/secret_files.py). Outside
testing the service refuses to start without a session password and a strong JWT secret, or
with an admin password shorter than 12 characters (except with --debug), and the error names
the variable.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import unicodedata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from limits import parse_many
from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.monitoring.logs import LOG_LEVELS
from app.recommender.seeds import parse_seeds
from app.secret_files import FILE_SUFFIX, SECRET_SETTINGS, SecretFileError, read_secret_file

MIN_SECRET_LENGTH = 32
MIN_ADMIN_PASSWORD_LENGTH = 12
"""The admin password guards reload and the breaker, and only the per-address login limit slows
guessing it; the session password has no minimum (the seed runs with ``SESSION_PASSWORD=test``)."""
WEAK_SECRETS = frozenset(
    {"secret", "changeme", "change-me", "jwt-secret", "super-secret", "test", "password"}
)


def comparable_secret(value: str) -> str:
    """A password or token as it is compared: in Unicode normalization form NFC.

    The same typed text may reach the service as different code points: "é" is one (NFC) from
    Windows and Linux keyboards and most editors, and "e" plus a combining accent (NFD) from
    macOS text fields and files written there. Compared as given, the configured password typed
    on another system was wrong. Both sides of every comparison (a login, a scrape, two settings
    that must differ) go through this.
    """
    return unicodedata.normalize("NFC", value)


MAX_RECS = 100
"""The longest list ``/api/recommend`` serves (``max_recs``); here, not in the API's schemas, so
that reading the settings does not import the web stack."""
MAX_PASSWORD_LENGTH = 1024
"""The longest password ``/api/login`` and ``/ui/login`` take (``LoginRequest``), so the longest
SESSION_PASSWORD or ADMIN_PASSWORD the settings take."""
MAX_TOKEN_TTL_SECONDS = 36525 * 86400
"""The longest token lifetime taken: 100 years. From about 7,970 years on, a token's expiry fell
past the year 9999, which ``datetime`` cannot hold: the service started, and every login was a 500."""


MAX_SCHEDULE_RETRY_SECONDS = 86400
"""The longest wait between two tries of a failed tick while there is no champion (a day)."""


JWT_LEEWAY_SECONDS = 2
"""How far apart two replicas' clocks may be for a token of one to be accepted by the other: a
token is accepted until this long after its ``exp`` (app/api), so its revocation is kept as long
(app/services/revocation.py)."""


class ConfigurationError(RuntimeError):
    """The service cannot start with this configuration; the message names the variable."""


class Settings(BaseSettings):
    # hide_input_in_errors: a refused value is never quoted in the ValidationError's text, which a
    # traceback shows as the cause of ConfigurationError (uwsgi prints it whole when the app cannot
    # be created): a database or Redis URL carries a password, and so is a password not UTF-8.
    # Every number is finite (allow_inf_nan): inf or nan from the environment silently switched a
    # check off or made it always fire (MOVIEREC_BREAKER_MAX_LATENCY_MS=inf, …_MAX_RMSE=nan:
    # nan compares false with every value, MOVIEREC_GATE_TOLERANCE=inf passed every candidate).
    # None needs inf to mean "off": a threshold is switched off by setting it out of reach.
    model_config = SettingsConfigDict(
        env_prefix="MOVIEREC_",
        extra="ignore",
        populate_by_name=True,
        hide_input_in_errors=True,
        allow_inf_nan=False,
    )

    testing: bool = False
    debug: bool = False

    session_password: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("SESSION_PASSWORD", "MOVIEREC_SESSION_PASSWORD")
    )
    admin_password: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("ADMIN_PASSWORD", "MOVIEREC_ADMIN_PASSWORD")
    )
    jwt_secret: SecretStr | None = None
    token_ttl_seconds: int = Field(default=3600, ge=1, le=MAX_TOKEN_TTL_SECONDS)

    model_path: Path = Field(
        default=Path("model"), validation_alias=AliasChoices("ML_MODEL_PATH", "MOVIEREC_MODEL_PATH")
    )
    model_dir: Path = Path("model")
    data_dir: Path = Path("data")
    # Both may hold a password (``postgresql://user:password@host/db``): secret settings
    # (``<NAME>_FILE``, app/secret_files.py), left out of the settings' repr. Plain str, not
    # SecretStr: every reader needs the URL itself, and the places that show one mask its
    # password (``render_as_string(hide_password=True)``).
    database_url: str = Field(default="sqlite:///var/movierec.db", repr=False)
    redis_url: str | None = Field(default=None, repr=False)
    # the longest the service waits for PostgreSQL to answer a statement (a hung database:
    # app/storage/db.py StatementDeadlines); well under uwsgi's harakiri (30 s)
    database_statement_seconds: float = Field(default=15.0, gt=0)

    # ML life cycle (app/pipeline, app/registry; docs/pipeline.md)
    var_dir: Path = Path("var")  # MLflow SQLite + artifacts and the Metaflow datastore live under it
    features_root: str | None = None  # local dir or fsspec URL (s3://…); default <data_dir>/features
    # complete snapshots a build keeps (the newest; LATEST's and the service database's always);
    # 0 = keep every one (app/pipeline/features_store.py FeatureStore.remove_old)
    features_keep_snapshots: int = Field(default=5, ge=0)
    # the longest a training flow may run before its launcher kills it with its workers (a hung
    # flow held the flow lock for good: every later tick dropped); 0 = no limit
    pipeline_timeout_seconds: float = Field(default=7200.0, ge=0)
    # bundles the model store keeps after a flow's export (the most recently exported; the served
    # ones and those the registry cannot export again always); 0 = keep every one
    # (app/registry/export.py remove_old_bundles). 12: the dashboard's version history
    model_keep_bundles: int = Field(default=12, ge=0)
    # pipeline runs whose MLflow runs (every candidate's bundle and reports) and Metaflow run
    # directories stay after a successful flow, the newest; those of the registered versions in
    # use always; 0 = keep every one (app/pipeline/retention.py)
    pipeline_keep_runs: int = Field(default=20, ge=0)
    # a tracking server for teams; default SQLite under var_dir. A secret setting, out of the
    # repr, like the URLs above: a database URL or https://user:password@host carries a password
    # (shown by Registry.display_uri, which masks it)
    mlflow_tracking_uri: str | None = Field(default=None, repr=False)
    mlflow_experiment: str = "movierec"
    registered_model: str = "movierec"
    pipeline_candidates: str | None = None  # comma-separated; default: models.DEFAULT_CANDIDATES
    pipeline_seeds: str = "0,1,2,3,4"  # protocol A/B split seeds every candidate is evaluated on
    gate_tolerance: float = Field(default=0.005, ge=0)  # NDCG@10 a challenger may lose
    gate_latency_ms: float = Field(default=5.0, gt=0)  # smoke test: p99 of one lookup
    # the least share of the champion's training ratings, users and movies a run's data may have
    # for its candidates to replace the champion (app/pipeline/gate.py data_size_check); 0 = off,
    # as `movierec pipeline run --allow-less-data` sets it for one run
    gate_min_data_fraction: float = Field(default=0.9, ge=0, le=1)
    schedule_cron: str = "0 3 * * *"  # `movierec schedule`: crontab expression (UTC)
    # while there is no champion, a tick that failed is tried again after this many seconds, the
    # wait doubling at each failure up to schedule_retry_max_seconds (app/pipeline/schedule.py
    # serve); 0 = wait for the next cron time. At most a day: later is the cron schedule's work
    schedule_retry_seconds: float = Field(default=60.0, ge=0, le=MAX_SCHEDULE_RETRY_SECONDS)
    schedule_retry_max_seconds: float = Field(default=3600.0, gt=0, le=MAX_SCHEDULE_RETRY_SECONDS)
    service_url: str = "http://127.0.0.1:5000"  # asked to reload after a new champion; "" = don't

    # the longest request body (app/api); 0 or less made every login and score a 413
    max_body_bytes: int = Field(default=64 * 1024, gt=0)
    # abuse and browser hardening (app/api/security.py)
    login_rate_limit: str = "10 per minute"  # per client address, shared through Redis when configured
    # proxies in front that append the peer to X-Forwarded-For (a load balancer: 1); the login
    # limit keys on the address the outermost saw. 0: the header is ignored (the peer is the client)
    forwarded_for_hops: int = Field(default=0, ge=0, le=10)
    # comma-separated origins allowed to call the API from a browser; empty = CORS off; null, *
    # and entries that could never match are refused (parse_origins)
    cors_origins: str = ""
    hsts_seconds: int = Field(
        default=0, ge=0
    )  # Strict-Transport-Security max-age; 0 = header off (no TLS here)
    # web UI token cookie Secure flag (app/api/ui.py); None = on except when testing or --debug
    ui_cookie_secure: bool | None = None
    default_max_recs: int = 10  # the web form's pre-filled max_recs: 1..MAX_RECS
    # check response bodies against the documented models (app/api/spec.py); None = only when
    # testing or with --debug (production skips re-parsing its own typed output)
    validate_responses: bool | None = None
    # serving (app/services/request_log.py, reload.py; docs/serving.md)
    request_log_flush_seconds: float = Field(default=0.1, ge=0, le=60)  # longest a served row waits in memory
    request_log_max_pending: int = Field(default=50_000, ge=1)  # buffered rows before /api/recommend says 503
    reload_poll_seconds: float = Field(default=1.0, gt=0)  # how often each worker checks the reload marker
    # the container's stop timeout (Compose's stop_grace_period, docker run --stop-timeout), when
    # the deployment tells the service: under uwsgi it must exceed worker-reload-mercy by
    # STOP_MARGIN_SECONDS (app/__init__.py), checked at the start; None = not told, not checked
    stop_timeout_seconds: int | None = Field(default=None, ge=1)
    # acknowledged scores, durable before the 200 (app/services/feedback_journal.py); one
    # directory per database, on storage that outlives the process (a volume in Docker)
    feedback_journal_dir: Path | None = None  # default <var_dir>/feedback-journal
    feedback_ship_seconds: float = Field(default=0.1, ge=0, le=60)  # longest a score waits to be shipped
    feedback_max_unshipped: int = Field(default=100_000, ge=1)  # unshipped scores before /score says 503
    log_level: str = "INFO"
    # monitoring: /metrics, online quality, drift, circuit breaker (app/monitoring; docs/operations.md)
    metrics_allow_cidrs: str = ""  # comma-separated networks allowed to scrape /metrics; empty = any address
    metrics_token: SecretStr | None = None  # bearer token scrapers must send to /metrics; None = no token
    monitor_interval_seconds: float = Field(
        default=30.0, ge=0
    )  # evaluation timer (one worker per turn); 0 = off
    monitor_every_events: int = Field(default=200, ge=0)  # also evaluate after this many scores in a worker
    monitor_sync_seconds: float = Field(
        default=2.0, gt=0
    )  # how often a worker re-reads the shared breaker state
    quality_window_seconds: float = Field(
        default=3600.0, gt=0
    )  # sliding window of the online metrics and drift
    breaker_enabled: bool = True  # route /api/recommend through the circuit breaker
    breaker_name: str = Field(
        default="champion", pattern=r"^[A-Za-z0-9_.:-]{1,64}$"
    )  # names the shared records: row / Redis key <name>@<model version>
    breaker_fallback: str = Field(default="previous", pattern="^(previous|popularity)$")
    breaker_min_events: int = Field(default=50, ge=1)  # feedback rows before online quality can open it
    # ... from at least this many distinct scored lists (one user's long list is one)
    breaker_min_lists: int = Field(default=10, ge=1)
    # scores are 0.5..5: above 5 it opened every version's breaker at its minimum feedback
    breaker_min_mean_score: float | None = Field(default=2.5, ge=0, le=5)
    breaker_min_like_share: float | None = Field(default=0.2, ge=0, le=1)
    breaker_max_rmse: float | None = Field(default=1.5, gt=0)
    # model calls (per worker) before errors/latency count; each worker keeps max(2,000, this)
    # calls, walked under the lock its request threads record calls with: bounded
    breaker_min_requests: int = Field(default=50, ge=1, le=10_000)
    breaker_max_error_rate: float = Field(default=0.05, ge=0, le=1)
    breaker_max_latency_ms: float = Field(default=250.0, gt=0)  # p95 of the champion's answer time
    breaker_cooldown_seconds: float = Field(default=300.0, ge=0)
    breaker_probe_share: float = Field(default=0.1, gt=0, le=1)  # share of requests probing while half-open
    breaker_probe_min_events: int = Field(default=20, ge=1)  # probe scores to close if opened on feedback
    drift_psi_threshold: float = Field(default=0.25, gt=0)
    drift_min_requests: int = Field(default=200, ge=1)

    @field_validator("model_path", "model_dir", "data_dir", "var_dir", "feedback_journal_dir", mode="before")
    @classmethod
    def _empty_path_is_unset(cls, value: Any, info: ValidationInfo) -> Any:
        """An empty path (``ML_MODEL_PATH=``: a compose file's ``${VAR:-}``, a Makefile variable
        left empty) is the setting unset, its default: read as ``Path("")`` it was the working
        directory, where the service then looked for its model and kept the journal of
        acknowledged scores. The CLI's options read MOVIEREC_DATA_DIR and MOVIEREC_MODEL_DIR so
        too (click takes an empty variable for none)."""
        if value == "":
            return cls.model_fields[str(info.field_name)].default
        return value

    @field_validator("default_max_recs")
    @classmethod
    def _max_recs_the_api_takes(cls, value: int) -> int:
        """A default outside 1..MAX_RECS pre-filled the web form with a value the form refused."""
        if not 1 <= value <= MAX_RECS:
            raise ValueError(f"must be between 1 and {MAX_RECS} (what /api/recommend takes)")
        return value

    @field_validator("pipeline_seeds")
    @classmethod
    def _seeds(cls, value: str) -> str:
        """Seeds that are no split seeds (``abc``, ``-1``, none) are refused here (parse_seeds),
        not by the Metaflow flow's first step, seconds into a run. Kept as the text given: the
        flow and the scheduler parse it where they use it."""
        parse_seeds(value)
        return value

    @field_validator("schedule_retry_max_seconds")
    @classmethod
    def _retry_cap(cls, value: float, info: ValidationInfo) -> float:
        """A cap below the first wait is refused rather than guessing which of the two was meant."""
        first = info.data.get("schedule_retry_seconds")
        if first is not None and value < first:
            raise ValueError(
                f"must be at least MOVIEREC_SCHEDULE_RETRY_SECONDS ({first:g}), the first wait it caps"
            )
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        """A URL SQLAlchemy cannot read, of a database it does not know, or whose driver is not
        installed (``mysql://``: MySQLdb) is refused here: it was SQLAlchemy's (or int()'s, for a
        port, or the driver's ModuleNotFoundError) traceback when the service or a command first
        opened the database. The URL itself is never in the message: it may hold a password."""
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError, NoSuchModuleError

        form = "dialect://user:password@host[:port]/database, or sqlite:///path"
        scheme = value.split("://", 1)[0]
        try:
            dialect = make_url(_with_psycopg(value)).get_dialect()
        except (ArgumentError, ValueError):
            raise ValueError(f"MOVIEREC_DATABASE_URL is not a database URL ({form})") from None
        except NoSuchModuleError:
            raise ValueError(
                f"MOVIEREC_DATABASE_URL names a database this service does not know ({scheme!r}; {form})"
            ) from None
        try:
            dialect.import_dbapi()
        except ImportError as exc:
            raise ValueError(
                f"MOVIEREC_DATABASE_URL names a database ({scheme!r}) whose driver ({exc.name or exc}) "
                "is not installed: use PostgreSQL (postgresql://…) or SQLite (sqlite:///path)"
            ) from None
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        """Refused here as the database URL is, rather than by redis' ValueError traceback at start-up."""
        if value and urlsplit(value).scheme.lower() not in ("redis", "rediss", "unix"):  # "": no Redis
            raise ValueError("MOVIEREC_REDIS_URL must be a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        """A typo is refused here, naming the setting, not by logging's bare ValueError later."""
        level = value.strip().upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"{value!r} is not a log level; use one of {', '.join(LOG_LEVELS)}")
        return level

    @field_validator("session_password", "admin_password", "jwt_secret", "metrics_token")
    @classmethod
    def _utf8(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        """Bytes that are not UTF-8 in the variable (Python reads them as lone surrogates) are
        refused: the service started, and every login or scrape was a 500 (the secret is compared
        and signed with as UTF-8), as a secret file that is not UTF-8 already is."""
        if value is not None:
            try:
                value.get_secret_value().encode()
            except UnicodeEncodeError:
                names = " or ".join(SECRET_SETTINGS[str(info.field_name)])
                raise ValueError(
                    f"{names} is not UTF-8 text: set it as UTF-8 (the password people type)"
                ) from None
        return value

    @field_validator("session_password", "admin_password")
    @classmethod
    def _loggable(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        """A password longer than a login takes is refused: the service started, and every login
        with it was a 400 ("at most 1024 characters"), the admin endpoints out of reach."""
        if value is not None and len(value.get_secret_value()) > MAX_PASSWORD_LENGTH:
            names = " or ".join(SECRET_SETTINGS[str(info.field_name)])
            raise ValueError(
                f"{names} is longer than {MAX_PASSWORD_LENGTH} characters, the longest password "
                "a login takes: set a shorter one"
            )
        return value

    @field_validator("metrics_token")
    @classmethod
    def _token(cls, value: SecretStr | None) -> SecretStr | None:
        """A token set to nothing (an empty variable, an empty or blank token file) is refused:
        taken as "no token", it left /metrics open to every address it was set to close."""
        if value is not None and not value.get_secret_value().strip():
            raise ValueError(
                "is set but empty: give the scrapers' token, or unset it to serve /metrics without one"
            )
        return value

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: str) -> str:
        """``null``, ``*`` or an entry that can never match is refused at start (parse_origins)."""
        parse_origins(value)
        return value

    @field_validator("login_rate_limit")
    @classmethod
    def _rate_limit(cls, value: str) -> str:
        """A limit Flask-Limiter cannot parse was skipped (logins unlimited), and one that allows
        nothing became a try per uwsgi worker (app/api/security.py share_of_limit): refused."""
        try:
            items = parse_many(value)
        except ValueError:
            items = []
        if not items or any(item.amount < 1 for item in items):
            raise ValueError(
                f"{value!r} is not a rate limit: write it as '10 per minute' (or '10/minute'; "
                "several separated by ';'), each allowing at least 1"
            )
        return value

    @field_validator("metrics_allow_cidrs")
    @classmethod
    def _networks(cls, value: str) -> str:
        """A typo is refused at start, not a 500 from every scrape."""
        parse_networks(value)
        return value

    @model_validator(mode="before")
    @classmethod
    def _secrets_from_files(cls, values: Any) -> Any:
        """``SESSION_PASSWORD_FILE`` etc.: a secret read from the file its ``<variable>_FILE`` names
        (app/secret_files.py), as deploy-docker.py delivers them. A secret given both as a value
        and as a file (or as two files), or under both its names with two values, is refused:
        neither may silently win over the other."""
        if not isinstance(values, dict):
            return values
        for field, names in SECRET_SETTINGS.items():
            given = [name for name in names if os.environ.get(name)]
            if len({comparable_secret(os.environ[name]) for name in given}) > 1:
                # the seed's name won: a password rotated under the MOVIEREC_ one kept the old one
                raise ConfigurationError(
                    f"{' and '.join(given)} are both set, to different values: "
                    "give the secret under one name only"
                )
            files = [name + FILE_SUFFIX for name in names if os.environ.get(name + FILE_SUFFIX)]
            if not files:
                continue
            if not given and any(values.get(key) not in (None, "") for key in (field, *names)):
                given = [field]  # passed to Settings (or a variable spelt in another case)
            if given or len(files) > 1:
                both = [*given, *files]
                raise ConfigurationError(
                    f"{', '.join(both[:-1])} and {both[-1]} are {'both' if len(both) == 2 else 'all'} set: "
                    "give the secret one way only (the file keeps it out of the environment)"
                )
            try:
                secret = read_secret_file(os.environ[files[0]], files[0])
            except SecretFileError as exc:
                raise ConfigurationError(str(exc)) from None
            for name in names:
                values.pop(name, None)
            values[field] = secret
        return values

    def check_secrets(self) -> None:
        """Refuse to run without secrets (or with weak ones) unless testing; --debug may run
        without a JWT secret and with a short admin password (a development server)."""
        if self.testing:
            return
        # every secret missing in one error: one per start had a new user set them one at a time
        password = self.session_password.get_secret_value() if self.session_password else ""
        secret = self.jwt_secret.get_secret_value() if self.jwt_secret else ""
        missing = []
        if not password:
            missing.append(
                "SESSION_PASSWORD is not set: the service needs the session password to issue tokens"
            )
        if not secret and not self.debug:  # development server: create_app signs with a random secret
            missing.append("MOVIEREC_JWT_SECRET is not set: tokens must be signed with a secret you provide")
        if missing:
            raise ConfigurationError("; ".join(missing))
        # the equality checks compare as logins do (comparable_secret): secrets that differ only in
        # their Unicode normalization are the same secret
        session = comparable_secret(password)
        admin = comparable_secret(self.admin_password.get_secret_value() if self.admin_password else "")
        if admin and admin == session:
            # a login with the session password would match both and get the admin role
            raise ConfigurationError(
                "ADMIN_PASSWORD is the session password: every client would get admin tokens; set another"
            )
        weak_admin = len(admin) < MIN_ADMIN_PASSWORD_LENGTH or admin.lower() in WEAK_SECRETS
        if admin and weak_admin and not self.debug:
            raise ConfigurationError(
                "ADMIN_PASSWORD (or MOVIEREC_ADMIN_PASSWORD) is too weak: it guards the admin "
                f"endpoints, use at least {MIN_ADMIN_PASSWORD_LENGTH} random characters "
                "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(16))')"
            )
        metrics_token = comparable_secret(self.metrics_token.get_secret_value() if self.metrics_token else "")
        logins = {"session_password": session, "admin_password": admin}
        for field, password in logins.items():
            if metrics_token and metrics_token == password:
                variable, *other = SECRET_SETTINGS[field]
                raise ConfigurationError(
                    f"MOVIEREC_METRICS_TOKEN is {variable} (or {', '.join(other)}): every Prometheus "
                    "scraper's configuration holds the token, so each would hold a login password; "
                    "set another"
                )
        if not secret:
            return  # --debug (above)
        if len(secret) < MIN_SECRET_LENGTH or secret.lower() in WEAK_SECRETS:
            raise ConfigurationError(
                f"MOVIEREC_JWT_SECRET is too weak: use at least {MIN_SECRET_LENGTH} random characters "
                "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(48))')"
            )
        if comparable_secret(secret) in (session, metrics_token):
            # whoever knows the key signs any token, "role": "admin" included
            raise ConfigurationError(
                "MOVIEREC_JWT_SECRET is the session password or the metrics token, which every client "
                "or scraper sends: any of them could sign admin tokens; set another"
            )

    @property
    def sqlalchemy_url(self) -> str:
        """The database URL with the psycopg 3 driver made explicit for PostgreSQL."""
        return _with_psycopg(self.database_url)

    @property
    def feedback_journal(self) -> Path:
        """This database's feedback journal: a subdirectory per database, so scores left by a
        stopped process are replayed only into the database they were acknowledged for."""
        from sqlalchemy.engine import make_url

        url = make_url(self.sqlalchemy_url)
        if url.get_backend_name() == "sqlite" and url.database:
            url = url.set(database=str(Path(url.database).resolve()))
        key = hashlib.sha256(url.render_as_string(hide_password=True).encode()).hexdigest()[:16]
        root = self.feedback_journal_dir or Path(self.var_dir) / "feedback-journal"
        return root / f"{url.get_backend_name()}-{key}"


def parse_networks(text: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """``10.0.0.0/8, 127.0.0.1`` → networks; a bad entry is a ValueError naming it."""
    networks = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError as exc:
            raise ValueError(f"MOVIEREC_METRICS_ALLOW_CIDRS: {part!r} is not a network ({exc})") from None
    return networks


def _with_psycopg(url: str) -> str:
    """``url`` with the psycopg 3 driver made explicit for PostgreSQL."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment plus overrides; ConfigurationError names a bad variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = ".".join(str(p) for p in first["loc"]) or "settings"
        raise ConfigurationError(f"invalid setting {name}: {first['msg']}") from exc


_DEFAULT_PORTS = {"http": 80, "https": 443}
_ORIGIN_FORM = (
    "an origin is scheme://host[:port], nothing more (no path, not even a trailing slash; "
    "an internationalised host in its xn-- form)"
)


def parse_origins(text: str) -> frozenset[str]:
    """``https://ui.example, http://localhost:5173`` → the CORS allow-list (exact-match origins).

    Refused, as a ValueError naming the entry: ``null`` (what every sandboxed iframe, ``file:``
    page and redirected request sends: allowing it lets any site read the API's answers), ``*``
    (the list is exact-match: a wildcard allowed nothing, silently), and any entry that is not an
    origin as a browser writes it in its ``Origin`` header (a path, a default port, capitals),
    which could never match. A trailing slash is dropped: it always matched, and is no path.
    """
    origins = set()
    for entry in (part.strip() for part in text.split(",")):
        if entry:
            origins.add(_checked_origin(entry))
    return frozenset(origins)


def _checked_origin(entry: str) -> str:
    prefix = f"MOVIEREC_CORS_ORIGINS: {entry!r}"
    if entry.lower() == "null":
        raise ValueError(
            f"{prefix} is refused: every sandboxed iframe and file: page sends Origin: null, "
            "so allowing it would let any site read the API's answers"
        )
    if entry == "*":
        raise ValueError(
            f"{prefix} is not supported: list each origin allowed to call the API "
            "(a wildcard would let every site read its answers)"
        )
    parts = urlsplit(entry)
    if parts.scheme.lower() == "file":
        raise ValueError(f"{prefix} can never match: a browser sends a file: page's origin as 'null'")
    try:
        port = parts.port
    except ValueError:
        port = -1
    host = parts.hostname or ""
    if (
        not parts.scheme
        or not host
        or not re.fullmatch(r"[a-z0-9_.-]+|[0-9a-f:.]+", host)  # a name, IPv4 or IPv6 (lower-cased)
        or port == -1
        or parts.username is not None
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or entry.endswith(("?", "#"))
    ):
        raise ValueError(f"{prefix} can never match: {_ORIGIN_FORM}")
    scheme = parts.scheme.lower()
    canonical = f"{scheme}://{f'[{host}]' if ':' in host else host}"
    if port is not None and port != _DEFAULT_PORTS.get(scheme):
        canonical += f":{port}"
    if entry.removesuffix("/") != canonical:  # a lone trailing slash always matched: kept so
        raise ValueError(f"{prefix} can never match: write it as {canonical!r}, as browsers send it")
    return canonical
