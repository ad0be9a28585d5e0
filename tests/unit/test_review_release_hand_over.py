"""A release stopped between its steps: the model store's ``latest`` and the registry's champion.

A release (the flow's ``release`` step, ``movierec promote``: :func:`promote_version`) puts the
new champion's bundle into the model store, moves ``latest`` to it, then moves the ``champion``
alias. Its process killed between the last two (SIGKILL, the OOM killer, a reboot, a Ctrl-C
while the tracking store is slow) left ``latest`` (what a service loads at its start, and each
worker uwsgi respawns) on a version the registry does not name champion, and nothing repaired
it: a scheduler tick with nothing new to train skipped, and the gate of later runs compared
with a champion that was not the one served. Every pipeline run, scheduler tick and scheduler
start now finishes that hand-over first, the registry's alias being what a release commits last.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Any

import pytest

from app.pipeline import schedule
from app.pipeline.runner import flow_lock
from app.registry import export
from app.registry.export import promote_version, served_version
from app.registry.mlflow_registry import Registry
from tests.helpers import flow_settings, register_bundle

pytestmark = pytest.mark.unit


class _Killed(BaseException):
    """The release's process killed here: none of its ``except Exception`` runs, as after SIGKILL."""


def _release_killed(
    tmp_path: Path, stores: list[Path], monkeypatch: pytest.MonkeyPatch, where: str, champion: bool = True
) -> tuple[Any, Registry, Any, Any, list[str | None]]:
    """Versions C (of ``stores[0]``) and X (``stores[1]``), C champion and served when ``champion``;
    then a release of X killed ``where``: ``export`` (its bundle copied into the store, ``latest``
    not moved yet), ``alias`` (``latest`` moved, the alias not) or ``reload`` (both moved, the
    service not asked). Returns the settings, the registry, C, X and the bundles the service is
    asked to reload from then on."""
    settings = flow_settings(tmp_path).model_copy(update={"service_url": "http://127.0.0.1:9"})
    registry = Registry.from_settings(settings)
    c, x = (register_bundle(registry, store) for store in stores)
    if champion:
        promote_version(registry, c.version, settings.model_dir)
    with monkeypatch.context() as patched:

        def killed(*_a: Any, **_k: Any) -> None:
            raise _Killed(where)

        if where == "export":
            patched.setattr(export, "point_latest", killed)
        elif where == "alias":
            patched.setattr(registry, "set_alias", killed)
        with pytest.raises(_Killed) if where != "reload" else contextlib.nullcontext():
            promote_version(registry, x.version, settings.model_dir)
    reloads: list[str | None] = []
    monkeypatch.setattr(
        export, "request_reload", lambda _url, _password, version=None: reloads.append(version) or True
    )
    return settings, registry, c, x, reloads


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *_exc: object) -> None:
        return None


def _skipping_tick(settings: Any, monkeypatch: pytest.MonkeyPatch) -> schedule.TickResult:
    """A scheduler tick with nothing new to train on: it decides to skip."""
    monkeypatch.setattr(
        schedule, "should_run", lambda *a, **k: schedule.RunDecision(False, "nothing changed", "d", "c")
    )

    def never(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("a skipping tick ran the flow")

    return schedule.tick(settings, runner=never, fingerprint=lambda s: ("d", "c"))


@pytest.mark.parametrize("where", ["export", "alias", "reload"])
def test_the_next_tick_serves_the_registrys_champion_whatever_step_the_release_was_killed_at(
    where: str,
    tmp_path: Path,
    personal_model_store: Path,
    model_store: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings, registry, c, x, reloads = _release_killed(
        tmp_path, [personal_model_store, model_store], monkeypatch, where
    )
    champion = registry.champion()
    assert champion is not None
    # what each kill leaves: only between latest and the alias do the two disagree
    expected = {"export": (c, c), "alias": (c, x), "reload": (x, x)}[where]
    assert (champion.version, served_version(settings.model_dir)) == (
        expected[0].version, expected[1].bundle_version
    )  # fmt: skip

    with caplog.at_level(logging.INFO):
        result = _skipping_tick(settings, monkeypatch)
    assert result.error is None and not result.ran
    champion = registry.champion()
    assert champion is not None and champion.version == expected[0].version, "the alias moved"
    assert served_version(settings.model_dir) == champion.bundle_version
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    if where == "alias":  # latest back on the champion, the service told, the log says why
        assert reloads == [c.bundle_version]
        assert len(warnings) == 1, warnings
        assert f"serves v{x.version}" in warnings[0] and f"champion v{c.version}" in warnings[0]
        assert f"movierec promote --version {x.version}" in warnings[0], warnings[0]
    else:  # nothing to repair: nothing moved, no reload asked
        assert reloads == [] and warnings == []
    # idempotent: the next tick finds nothing to do
    caplog.clear()
    _skipping_tick(settings, monkeypatch)
    assert reloads == ([c.bundle_version] if where == "alias" else [])
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


_HANDED_OVER = "import json, sys; open(sys.argv[1], 'w').write(json.dumps({'champion': None}))"


@pytest.mark.parametrize("entry", ["pipeline run", "scheduler start"])
def test_a_pipeline_run_and_a_scheduler_start_repair_it_before_anything_else(
    entry: str,
    tmp_path: Path,
    personal_model_store: Path,
    model_store: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import app.pipeline.runner as runner

    settings, registry, c, _x, reloads = _release_killed(
        tmp_path, [personal_model_store, model_store], monkeypatch, "alias"
    )
    seen: list[str | None] = []
    if entry == "pipeline run":

        def flow(_candidates: Any, _seeds: Any, summary: Path, *_a: Any) -> list[str]:
            seen.append(served_version(settings.model_dir))  # what the flow starts from
            return [sys.executable, "-c", _HANDED_OVER, str(summary)]

        monkeypatch.setattr(runner, "flow_command", flow)
        runner.run_flow(settings, timeout=60)
    else:
        monkeypatch.setattr(schedule, "tick", lambda s: seen.append(served_version(s.model_dir)))
        schedule.serve(settings, blocking=False).shutdown(wait=False)
    champion = registry.champion()
    assert champion is not None and champion.version == c.version
    assert served_version(settings.model_dir) == c.bundle_version
    assert reloads == [c.bundle_version]
    if entry == "pipeline run":
        assert seen == [c.bundle_version]


def test_a_release_under_way_is_left_alone(
    tmp_path: Path, personal_model_store: Path, model_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a flow or ``movierec promote`` holds the flow lock, ``latest`` ahead of the alias is
    a release between its steps, not a killed one: the tick does not undo it."""
    settings, _registry, _c, x, reloads = _release_killed(
        tmp_path, [personal_model_store, model_store], monkeypatch, "alias"
    )
    with flow_lock(settings):
        _skipping_tick(settings, monkeypatch)
    assert served_version(settings.model_dir) == x.bundle_version
    assert reloads == []


def test_a_killed_first_promotion_is_reported_and_left_serving(
    tmp_path: Path,
    personal_model_store: Path,
    model_store: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No champion at all: ``latest`` is the only model a restarted service has; it stays."""
    settings, registry, _c, x, reloads = _release_killed(
        tmp_path, [personal_model_store, model_store], monkeypatch, "alias", champion=False
    )
    with caplog.at_level(logging.WARNING):
        _skipping_tick(settings, monkeypatch)
    assert registry.champion() is None
    assert served_version(settings.model_dir) == x.bundle_version and reloads == []
    assert any(
        f"serves v{x.version}" in r.getMessage() and "no champion" in r.getMessage() for r in caplog.records
    ), caplog.text


def test_pipeline_versions_says_when_latest_is_not_the_champion(
    tmp_path: Path, personal_model_store: Path, model_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The read-only check: `movierec pipeline versions` names the disagreement, moving nothing."""
    from click.testing import CliRunner

    import app.pipeline.commands as commands
    from app.cli import cli

    settings, registry, c, x, _reloads = _release_killed(
        tmp_path, [personal_model_store, model_store], monkeypatch, "alias"
    )
    monkeypatch.setattr(commands, "settings_for_cli", lambda **_: settings)
    result = CliRunner().invoke(cli, ["pipeline", "versions"])
    assert result.exit_code == 0, result.output
    warning = result.output.strip().splitlines()[-1]
    assert warning.startswith("warning: "), result.output
    assert f"serves v{x.version}" in warning and f"champion v{c.version}" in warning, warning
    assert served_version(settings.model_dir) == x.bundle_version  # read only
    champion = registry.champion()
    assert champion is not None and champion.version == c.version
    promote_version(registry, x.version, settings.model_dir)  # they agree: nothing said
    result = CliRunner().invoke(cli, ["pipeline", "versions"])
    assert "warning" not in result.output, result.output


def test_ctrl_c_while_the_alias_moves_serves_the_old_champion_again(
    tmp_path: Path, personal_model_store: Path, model_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C (or SIGINT reaching the flow's step) while the alias moves -- a request the MLflow
    client retries for minutes when the tracking server is down -- is a KeyboardInterrupt, which
    promote_version's undo (``except Exception``) let through: ``latest`` stayed on a version the
    registry does not name champion. It is undone as a failure is, and the interrupt goes on."""
    settings = flow_settings(tmp_path)
    registry = Registry.from_settings(settings)
    c, x = (register_bundle(registry, store) for store in (personal_model_store, model_store))
    promote_version(registry, c.version, settings.model_dir)

    def interrupted(*_a: Any, **_k: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(registry, "set_alias", interrupted)
    with pytest.raises(KeyboardInterrupt):
        promote_version(registry, x.version, settings.model_dir)
    champion = registry.champion()
    assert champion is not None and champion.version == c.version
    assert served_version(settings.model_dir) == c.bundle_version


def test_promote_killed_after_the_alias_moved_has_the_next_tick_ask_for_the_reload(
    tmp_path: Path,
    personal_model_store: Path,
    model_store: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The third kill point: alias and ``latest`` moved, the service not asked yet (``movierec
    promote`` killed while recording its decision -- minutes of MLflow retries when the tracking
    server is down -- or before its reload). The two agree, but the service went on serving the
    old champion until it restarted: no reload-pending marker was written, and later runs export
    nothing (``latest`` is the champion's) so asked for no reload. The marker is now written as
    soon as the champion moved, before the reload is asked."""
    from click.testing import CliRunner

    import app.pipeline.commands as commands
    from app.cli import cli

    settings, registry, _c, x, reloads = _release_killed(  # C served and champion, X registered
        tmp_path, [personal_model_store, model_store], monkeypatch, "export"
    )
    registry.record_decision(x.version, "passed", ["smoke tests passed"])
    monkeypatch.setattr(commands, "settings_for_cli", lambda **_: settings)

    def killed(*_a: Any, **_k: Any) -> None:
        raise _Killed("reload")

    with monkeypatch.context() as patched:
        patched.setattr(export, "request_reload", killed)
        with pytest.raises(_Killed):
            CliRunner().invoke(cli, ["promote", "--version", x.version])
    champion = registry.champion()
    assert champion is not None and champion.version == x.version
    assert served_version(settings.model_dir) == x.bundle_version and reloads == []
    _skipping_tick(settings, monkeypatch)
    assert reloads == [x.bundle_version]
    assert not (Path(settings.var_dir) / "pipeline" / export.RELOAD_PENDING).exists()
