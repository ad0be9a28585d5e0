"""movierec: an authenticated movie-recommendation service and its ML life cycle.

``create_app(settings)`` builds everything; nothing happens at import time.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

    from flask import Flask

    from app.config import Settings
    from app.monitoring.online import AlertsView, BreakerView, DriftView, OnlineMonitor
    from app.services.models import ModelHolder
    from app.services.predictions import PredictionService
    from app.services.recommendations import RecommendationService
    from app.services.reload import ModelReloader
    from app.services.user_features import UserFeatureService
    from app.storage.db import Database

log = logging.getLogger(__name__)


@dataclass
class Services:
    """Everything the blueprints reach through ``current_app.extensions["movierec"]``."""

    settings: Settings
    db: Database
    models: ModelHolder
    recommendations: RecommendationService
    # serving extensions (app/services/serving.py): hot reload, predictions, user features
    reloader: ModelReloader | None = None
    predictions: PredictionService | None = None
    user_features: UserFeatureService | None = None
    # monitoring (app/monitoring/online.py): evaluation thread, breaker, drift and alert views
    monitor: OnlineMonitor | None = None
    breaker: BreakerView | None = None
    drift: DriftView | None = None
    alerts: AlertsView | None = None

    def close(self) -> None:
        """Stop background work and release connections: pending request rows and scores are
        written, the monitor and reload threads end, the pool is disposed (tests, embedding apps)."""
        if self.monitor is not None:
            self.monitor.stop()
        if self.reloader is not None:
            self.reloader.stop()
        self.recommendations.request_log.close(timeout=2.0)
        self.recommendations.feedback.close(timeout=2.0)
        self.db.dispose()


def create_app(settings: Settings | None = None) -> Flask:
    """Build the Flask application: settings checked, schema migrated, model loaded."""
    from app.api import ApiFlask, register_api
    from app.api.json_provider import OrjsonProvider
    from app.api.spec import VALIDATE_RESPONSES
    from app.config import load_settings
    from app.monitoring.http import instrument
    from app.monitoring.logs import configure_logging, describe_error
    from app.monitoring.online import install_monitoring
    from app.recommender.bundle import BundleError
    from app.services.feedback_journal import FeedbackJournal
    from app.services.models import ModelHolder
    from app.services.recommendations import RecommendationService
    from app.services.request_log import RequestLog, RowSpill
    from app.services.serving import install_serving, model_store

    settings = settings or load_settings()
    configure_logging(settings.log_level)
    _refuse_test_modes_in_production(settings)
    _refuse_timings_harakiri_would_cut(settings)
    settings.check_secrets()
    jwt_secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret else ""
    if not jwt_secret:
        # Only when testing or with --debug: tokens then die with the process.
        jwt_secret = secrets.token_urlsafe(48)
        if not settings.testing:
            log.warning(
                "MOVIEREC_JWT_SECRET is not set: signing tokens with a per-process random secret (debug only)"
            )

    app = ApiFlask(__name__, template_folder="api/templates")
    app.config["TESTING"] = settings.testing
    validate = settings.validate_responses
    app.config[VALIDATE_RESPONSES] = settings.testing or settings.debug if validate is None else validate
    app.json = OrjsonProvider(app)  # keeps the contract's field order
    instrument(app)

    db = _open_database(settings)
    models = ModelHolder(settings.model_path, data_dir=settings.data_dir)
    refused: BundleError | None = None
    try:
        models.load()
    except BundleError as exc:  # logged once the reloader has adopted what the other workers serve
        refused = exc

    # Recommendation ids are signed with a key derived from the JWT secret, shared by every worker.
    # Created (and so closed at exit) before the journal: its rows are in memory only, and the two
    # share one exit budget (app/exit_hooks.py EXIT_SECONDS); the journal's scores are on disk.
    request_log = RequestLog(
        db,
        flush_interval=settings.request_log_flush_seconds,
        max_pending=settings.request_log_max_pending,
        spill=RowSpill(settings.feedback_journal),  # beside the scores: the same local, per-database storage
    )
    journal = FeedbackJournal(
        settings.feedback_journal,
        db,
        ship_interval=settings.feedback_ship_seconds,
        max_unshipped=settings.feedback_max_unshipped,
    )
    # scores a stopped process left unshipped (each uwsgi worker runs this: lazy-apps); with the
    # database down now, tried again every 30 s, this worker journaling scores or not
    journal.recover_at_start()
    # request rows a process stopped (or killed) while the database was down kept on disk; with
    # the database down now, its flusher retries them, this worker serving or not
    request_log.recover_spilled()
    for stray in journal.strays():
        log.warning(
            "feedback journal: scores wait under another database URL's directory",
            extra={"segment": str(stray)},
        )
    recommendations = RecommendationService(
        models, db, journal, id_secret=jwt_secret.encode(), request_log=request_log
    )
    app.extensions["movierec"] = Services(settings, db, models, recommendations)
    install_serving(app.extensions["movierec"], settings)
    if refused is not None:
        _report_refused_start_model(models, settings.model_path, describe_error(refused, 300))
    install_monitoring(app, app.extensions["movierec"], settings, model_store(settings))
    register_api(app, settings, jwt_secret)
    return app


def _report_refused_start_model(models: ModelHolder, path: Path, reason: str) -> None:
    """One line for a configured model that did not load: an ERROR when the worker has no model
    at all, a WARNING when it serves what the reload marker or its instance's live workers name.

    A worker uwsgi starts in a running instance (max-requests, reload-on-rss, harakiri) while
    ``latest`` is a bundle a reload refused serves its siblings' bundle (app/services/reload.py);
    it logged "no model could be loaded; the service is not ready" (an ERROR, mailed) at every
    such start, ready all along."""
    bundle = models.bundle
    if bundle is None:
        log.error(
            "no model could be loaded; the service is not ready", extra={"path": str(path), "reason": reason}
        )
        return
    log.warning(
        "the configured model cannot be loaded; serving the bundle the reload marker or the other "
        "workers name",
        extra={"path": str(path), "reason": reason, "model_version": bundle.version},
    )


def check_listen_address(host: str, port: int) -> None:
    """Raise :class:`app.listener.ListenerError` (one line naming ``--host`` or the address) unless
    the development server can listen on ``host:port``: werkzeug printed only "Name or service not
    known", "Cannot assign requested address" or "Address already in use" there, and exited 1.
    The entry points call it before building the app; the port is free again when werkzeug binds."""
    from app.listener import bind

    bind(host, port, host_option="--host").close()


def run_development_server(app: Flask, host: str, port: int, debug: bool) -> None:
    """Werkzeug's development server (``python main.py``, ``movierec serve``, ``make run``) with
    one log line per request: the app's access line (``movierec.access``: request id, endpoint,
    status, latency). Werkzeug's own request line is dropped, its error lines (a malformed
    request line, a dropped connection) are kept.

    SIGTERM (``kill``, systemd, an IDE's stop button) and SIGHUP (the terminal or SSH session it
    runs in closed) stop it as Ctrl-C does, so the exit hooks run (app/exit_hooks.py): Python's
    default for either ended the process outright, losing the request log's unwritten rows (ids
    already answered, whose scores were then refused) and leaving the feedback journal's segment
    to the next start. A SIGHUP ignored by ``nohup`` stays ignored; only the main thread may set
    a handler (app/stop_signals.py).

    ``debug`` is Flask's debug mode without Werkzeug's interactive debugger and its ``/console``."""
    from werkzeug.serving import WSGIRequestHandler

    from app.stop_signals import like_ctrl_c

    class RequestHandler(WSGIRequestHandler):
        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            return None

    with like_ctrl_c():
        # use_debugger=False: Werkzeug's interactive debugger served /console, a Python shell behind
        # a PIN, and added nothing else (the app answers every error in its envelope, debug or not)
        app.run(
            host=host, port=port, debug=debug, use_reloader=False, use_debugger=False,
            request_handler=RequestHandler,
        )  # fmt: skip


class StartupError(RuntimeError):
    """The service cannot start with the database it was given: one line, its password masked, that
    the development server's entry points (``movierec serve``, ``python main.py``) print."""


def _open_database(settings: Settings) -> Database:
    """The service database with its schema upgraded (:func:`_upgrade_schema`).

    One that cannot be reached (PostgreSQL not running, a SQLite file whose directory cannot be
    made), that refuses the migration (a role without CREATE on the schema, a SQLite file that is
    no database) or that a newer release migrated is a :class:`StartupError`, worded as ``movierec db
    upgrade`` words it, which ``movierec serve`` and ``python main.py`` (``make run``) print as one
    line: they let the driver's error out as a traceback."""
    from sqlalchemy.exc import DBAPIError, OperationalError

    from app.storage.db import (
        Database,
        DatabaseSchemaError,
        DatabaseUnavailableError,
        refusal,
        unreachable_message,
    )

    url = settings.sqlalchemy_url
    try:
        db = Database(url, statement_seconds=settings.database_statement_seconds)
    except OSError as exc:  # make_engine creates a SQLite file's directory
        raise StartupError(unreachable_message(url, exc)) from exc
    try:
        _upgrade_schema(db)
    except DatabaseSchemaError as exc:
        db.dispose()
        raise StartupError(str(exc)) from exc
    except (OperationalError, DatabaseUnavailableError) as exc:
        db.dispose()
        raise StartupError(unreachable_message(url, exc)) from exc
    except DBAPIError as exc:  # it answered and refused the migration: no CREATE grant, not a database
        db.dispose()
        raise StartupError(refusal(url, exc)) from exc
    return db


def _upgrade_schema(db: Database) -> None:
    """Bring the schema to the newest revision; a worker respawned during an outage starts without it.

    uwsgi respawns a worker inside a running instance (harakiri, a crash, an OOM kill,
    max-requests, reload-on-rss), and with ``lazy-apps`` each worker runs this. The database
    unreachable then made the new worker's start fail, and ``need-app`` ended the whole instance:
    the sibling serving recommendations from its bundle too, with the request rows it held. Once
    the instance has answered requests, a worker of it migrated the schema already, so a respawned
    one starts without the database (scores 503, /health/ready 503, recommendations served) and
    the write-behind logs catch up when it is back. At an instance's first start an unreachable
    database still stops it: the schema may be older than the code.
    """
    from app.monitoring.logs import describe_error
    from app.storage.db import DatabaseUnavailableError

    try:
        db.upgrade()
    except DatabaseUnavailableError as exc:
        if not _instance_has_served():
            raise
        log.error(
            "database unreachable while this worker started; serving without it until it is back",
            extra={"reason": describe_error(exc)},
        )


def _instance_has_served() -> bool:
    """True in a uwsgi worker of an instance that has answered requests (its schema is migrated)."""
    uwsgi = _uwsgi()
    return uwsgi is not None and bool(uwsgi.total_requests())  # not under uwsgi: never respawned


def _refuse_test_modes_in_production(settings: Settings) -> None:
    """uwsgi, the production server, refuses ``MOVIEREC_TESTING`` and ``MOVIEREC_DEBUG``.

    Both are for the tests and the development server: testing skips every secret check,
    debug the JWT secret's, and both drop the web UI cookie's ``Secure`` flag. Set in a
    deployment's environment by mistake, the service started with none of those guards.
    """
    if _uwsgi() is None or not (settings.testing or settings.debug):
        return
    from app.config import ConfigurationError

    names = [
        name
        for name, on in (("MOVIEREC_TESTING", settings.testing), ("MOVIEREC_DEBUG", settings.debug))
        if on
    ]
    raise ConfigurationError(
        f"{' and '.join(names)} turn off the secret checks and the cookie's Secure flag: they are for "
        "the tests and the development server (movierec serve --debug), not for uwsgi; unset them"
    )


UWSGI_DEFAULT_MERCY = 60  # uwsgi's worker-reload-mercy when nothing sets it
STOP_MARGIN_SECONDS = 10
"""What a container's stop timeout must leave after ``worker-reload-mercy``: the master's own exit
once its workers are gone (the HTTP router, its exit hooks), and slack (app/deploy.py gives
harakiri + 25 s: the mercy's 15 s and these 10)."""


def _refuse_timings_harakiri_would_cut(settings: Settings) -> None:
    """Under uwsgi, refuse timings that let a kill cut what harakiri allows to run.

    * harakiri must be a limit (a whole number of seconds above 0). uwsgi.ini computes the mercy
      below as harakiri + 15 s, and uwsgi's placeholder math has no max(): with harakiri 0 (no
      limit) the mercy fell to 15 s, and a stopping worker had ~5 s for its requests in flight
      before its final flush raced the SIGKILL. A production service needs a request limit.
    * ``worker-reload-mercy`` (how long the master lets a stopping worker live) must cover a
      request of harakiri's length and then the worker's final flush (``EXIT_SECONDS``). It was
      45 s for harakiri's default 30 s, and a raised UWSGI_HARAKIRI left it there: a slow
      request's final flush raced the SIGKILL. uwsgi.ini derives it from harakiri now; a
      deployment's own ini that sets it lower, or to something that is not a number (uwsgi's
      atoi runs with whatever it reads from it), is refused here.
    * the container's stop timeout, when the deployment gives it (``MOVIEREC_STOP_TIMEOUT_SECONDS``:
      docker-compose.yml passes its ``stop_grace_period``), must exceed that mercy by
      :data:`STOP_MARGIN_SECONDS`. Compose cannot add numbers, so its grace was raised by hand
      with a raised ``UWSGI_HARAKIRI``, or not: the service then started, and Docker's SIGKILL
      at the end of the grace cut a slow request's final flush at each stop.
    * a reload with ``"wait": true`` waits for its sibling workers up to one
      ``MOVIEREC_RELOAD_POLL_SECONDS`` plus ``SIBLING_WAIT_SECONDS`` (app/services/reload.py),
      which must end within harakiri: past it the worker was killed in the middle of the
      reload, and the answer with it.
    """
    uwsgi = _uwsgi()
    if uwsgi is None:
        return
    from app.config import ConfigurationError
    from app.exit_hooks import EXIT_SECONDS
    from app.number_options import whole_seconds
    from app.services.reload import SIBLING_WAIT_SECONDS, longest_sibling_wait

    given = _uwsgi_option(uwsgi, "harakiri")
    harakiri = whole_seconds(given)
    if not harakiri:
        raise ConfigurationError(
            f"uwsgi's harakiri is {'not set' if given is None else repr(given)}: no limit on a request, "
            "and a stopping worker's worker-reload-mercy (harakiri + 15 s, uwsgi.ini) too short for its "
            f"requests in flight and its final flush ({EXIT_SECONDS:g} s); a production server needs a "
            "request limit: set UWSGI_HARAKIRI to a number of seconds above 0 (uwsgi.ini's default: 30)"
        )
    problems = []
    given = _uwsgi_option(uwsgi, "worker-reload-mercy")
    mercy = UWSGI_DEFAULT_MERCY if given is None else whole_seconds(given)
    if mercy is None:
        problems.append(
            f"uwsgi's worker-reload-mercy ({given!r}) is not a whole number of seconds: how long a "
            "stopping worker may live cannot be told; uwsgi.ini sets it to harakiri + 15 s"
        )
    elif mercy <= harakiri + EXIT_SECONDS:
        problems.append(
            f"uwsgi's worker-reload-mercy ({mercy} s) must exceed harakiri ({harakiri} s) plus a "
            f"stopping worker's final flush ({EXIT_SECONDS:g} s): uwsgi.ini sets it to harakiri + 15 s; "
            "do not set it lower"
        )
    stop = settings.stop_timeout_seconds
    if stop is not None and mercy is not None and stop < mercy + STOP_MARGIN_SECONDS:
        problems.append(
            f"the container's stop timeout (MOVIEREC_STOP_TIMEOUT_SECONDS, {stop} s) must be at least "
            f"worker-reload-mercy ({mercy} s) plus {STOP_MARGIN_SECONDS} s for the master's exit, "
            f"{mercy + STOP_MARGIN_SECONDS} s, or a stop kills a slow request's final flush: raise it "
            "with UWSGI_HARAKIRI (docker-compose.yml takes both from the environment or .env)"
        )
    poll = settings.reload_poll_seconds
    if longest_sibling_wait(poll) >= harakiri:
        problems.append(
            f"MOVIEREC_RELOAD_POLL_SECONDS ({poll:g} s) plus the {SIBLING_WAIT_SECONDS:g} s a reload waits "
            f"for the other workers must end within harakiri ({harakiri} s), or a reload is killed halfway: "
            f"set it below {harakiri - SIBLING_WAIT_SECONDS:g} s, or raise UWSGI_HARAKIRI"
        )
    if problems:
        raise ConfigurationError("; ".join(problems))


def _uwsgi_option(uwsgi: Any, option: str) -> str | None:
    """A uwsgi option's text as uwsgi runs with it (the last value given), or None when unset."""
    value = uwsgi.opt.get(option)
    if isinstance(value, list):
        value = value[-1] if value else None
    if value is None:
        return None
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _uwsgi() -> Any:
    """The ``uwsgi`` module when this process is a uwsgi worker, else None."""
    try:
        import uwsgi  # type: ignore[import-not-found]
    except ImportError:
        return None
    return uwsgi
