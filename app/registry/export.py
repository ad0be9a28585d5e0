"""Export a registered version to the serving model store, and ask the service to reload.

The model store is a directory of immutable bundles plus the ``latest`` symlink that the
service loads (``ML_MODEL_PATH``). Exporting copies the version's bundle out of the
registry under its own bundle version name (once; bundles never change) and swaps
``latest`` atomically. Promotion, rollback and the pipeline all end here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from app.durable import sync_directory, sync_tree
from app.recommender.bundle import (
    BUNDLE_NAME,
    EXPORT_STAGING_PREFIX,
    LATEST,
    MANIFEST,
    MARKER_NAME,
    WORKERS_DIR,
    BundleError,
    LoadedBundle,
    attach_rating_model,
    load_bundle,
    point_latest,
    read_manifest,
    remove_stale_leftovers,
)
from app.recommender.manifest_metrics import served_row
from app.registry.mlflow_registry import CHAMPION, Registry, RegistryError, VersionInfo

log = logging.getLogger(__name__)

RELOAD_TIMEOUT_SECONDS = 60.0  # the service loads and validates the whole bundle before answering
RELOAD_PENDING = "reload-pending"  # under <var>/pipeline: the service has not confirmed loading `latest`
# What request_reload answers when another bundle's reload took over (409 reload_superseded or
# reload_in_progress): someone (an admin's POST /api/admin/reload with a version) chose to serve
# another bundle; asking for ours again would undo that choice, so it is not asked again.
SUPERSEDED: Literal["superseded"] = "superseded"
_TAKEN_OVER = frozenset({"reload_superseded", "reload_in_progress"})
Reloaded = bool | Literal["superseded"]


def served_version(model_dir: Path | str) -> str | None:
    """The bundle version ``model_dir/latest`` points at, or None (none, or its manifest is
    missing, unreadable, not a JSON object or names no version: nothing known is served)."""
    manifest = read_manifest(Path(model_dir) / LATEST)
    version = manifest.get("version") if manifest is not None else None
    return version if isinstance(version, str) and version else None


def export_version(registry: Registry, version: str | int, model_dir: Path | str) -> Path:
    """Make registry ``version`` the model store's ``latest`` and return its bundle dir.

    The bundle is validated before ``latest`` moves, as the service loads it (completely, its
    rating model included: :func:`attach_rating_model`), so a broken artifact, or one the service
    would refuse, never becomes what the service loads. It is synced before it is renamed into
    the store, and the store after (and after ``latest`` moves): a crash never leaves ``latest``
    naming a bundle of empty or truncated files.
    """
    info = registry.get(version)
    if not info.bundle_version:
        raise RegistryError(f"version {version} has no bundle_version tag; it was not registered by movierec")
    if not BUNDLE_NAME.match(info.bundle_version):  # a tag anyone with registry access can set
        raise RegistryError(
            f"version {version}: its bundle_version tag {info.bundle_version!r} is not a bundle name"
        )
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    final = model_dir / info.bundle_version
    remove_stale_leftovers(model_dir)  # an export killed mid-download left its staging for ever
    if (final / MANIFEST).is_file():  # exported before (a rollback): checked as a download would be
        try:
            bundle = load_bundle(final)
        except BundleError as exc:
            raise RegistryError(
                f"version {version}: its bundle in the model store is damaged (remove {final} to "
                f"export it again): {exc}"
            ) from exc
        _refuse_unservable(version, info.bundle_version, bundle)
    else:
        staging = Path(
            tempfile.mkdtemp(prefix=f"{EXPORT_STAGING_PREFIX}{info.bundle_version}-", dir=model_dir)
        )
        try:
            downloaded = registry.download_bundle(version, staging)
            bundle_dir = downloaded if (downloaded / MANIFEST).is_file() else downloaded / "bundle"
            bundle = load_bundle(bundle_dir)  # BundleError: keep serving what we have
            _refuse_unservable(version, info.bundle_version, bundle)
            # Bundles are world-readable artefacts (the service may run as another user), never secret.
            os.chmod(bundle_dir, 0o755)  # noqa: S103  # nosec B103
            sync_tree(bundle_dir)  # on disk before its name is: a crash never leaves empty files
            os.replace(bundle_dir, final)
            sync_directory(model_dir)
        except BundleError as exc:
            raise RegistryError(f"version {version}: the registered bundle is invalid: {exc}") from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    _warn_if_replacing_a_better_unregistered_bundle(registry, model_dir, final)
    point_latest(model_dir, info.bundle_version)
    log.info("exported version %s (bundle %s) to %s", version, info.bundle_version, model_dir)
    return final


def remove_old_bundles(
    registry: Any, model_dir: Path | str, keep: int, configured: Path | str | None = None
) -> list[str]:
    """Keep the ``keep`` most recently exported bundles of the model store, remove older ones.

    Every new champion's export added a bundle that stayed for good (~17 MB each on ml-100k;
    one a day when daily feedback makes each run promote a retrained champion). Never removed:
    the bundle ``latest`` names, the one the reload marker names (an admin's reload of a
    version, which workers started later serve), any a worker's record says it serves
    (``.serving-workers``, any host's), the model path a service was started with when it names
    a bundle (``configured`` in those records and the marker, and ``configured`` here: the
    flow's ML_MODEL_PATH; every worker uwsgi starts loads it again, and a worker records what it
    serves only once it answers a request), the previous champion of each of those (the breaker's
    fallback: app/monitoring/fallback.py), and any whose name the registry does not hold
    (``make train``'s: nothing could export it again). A removed one is exported from the registry
    again when promoted (:func:`export_version`). When what is served cannot be read, or the
    store cannot be listed, nothing is removed (a WARNING; the next export tries again).
    ``keep`` 0 keeps every one. Returns the names removed; a failure to remove one is a WARNING.
    """
    if keep <= 0:
        return []
    model_dir = Path(model_dir)
    in_use = _bundles_in_use(model_dir)
    if in_use is None:
        return []
    if configured is not None:
        in_use.add(Path(os.path.abspath(configured)).name)
    registered = {info.bundle_version for info in registry.versions() if info.bundle_version}
    bundles = []
    try:  # both list the store: one that cannot be (another account's, a stale mount) keeps all
        in_use |= {kept.name for name in in_use if (kept := _fallback_of(model_dir, name)) is not None}
        for child in model_dir.iterdir():
            if child.name.startswith(".") or child.is_symlink() or not BUNDLE_NAME.match(child.name):
                continue
            with contextlib.suppress(OSError):  # gone meanwhile, or no bundle: not ours to judge
                if (child / MANIFEST).is_file():
                    bundles.append((child.stat().st_mtime, child.name))
    except OSError as exc:
        log.warning("not removing old bundles from %s: it cannot be listed (%s); the next export tries again",
                    model_dir, exc)  # fmt: skip
        return []
    removed = []
    for _exported, name in sorted(bundles, reverse=True)[keep:]:
        if name in in_use or name not in registered:
            continue
        # renamed out of the way first: a removal failing half way leaves no manifest-less directory
        # under the bundle's name (which an export of its version could not replace), but an export
        # staging name that later exports sweep (remove_stale_leftovers)
        doomed = model_dir / f"{EXPORT_STAGING_PREFIX}{name}-removed-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(model_dir / name, doomed)
        except OSError as exc:
            log.warning("could not remove the old bundle %s from %s: %s", name, model_dir, exc)
            continue
        try:
            shutil.rmtree(doomed)
        except OSError as exc:
            log.warning("could not remove all of the old bundle %s (%s; a later export tries again): %s",
                        name, doomed, exc)  # fmt: skip
        log.info(
            "removed the bundle %s from %s: older than the newest %d kept (MOVIEREC_MODEL_KEEP_BUNDLES); "
            "promoting its version exports it again",
            name, model_dir, keep,
        )  # fmt: skip
        removed.append(name)
    return removed


def _fallback_of(model_dir: Path, name: str) -> Path | None:
    """The bundle the breaker's fallback serves beside bundle ``name`` (the previous champion)."""
    from app.monitoring.fallback import previous_bundle_dir

    manifest = read_manifest(model_dir / name)
    if manifest is None:
        return None
    return previous_bundle_dir(
        model_dir, str(manifest.get("version") or name), str(manifest.get("created_at") or "")
    )


def _bundles_in_use(model_dir: Path) -> set[str] | None:
    """The bundle names ``latest``, the reload marker and the workers' records name (served or
    configured); None (with a
    WARNING) when one of them cannot be read."""
    names = set()
    link = model_dir / LATEST
    current = link
    try:
        if link.is_symlink():
            names.add(Path(os.readlink(link)).name)
        records = [model_dir / MARKER_NAME]
        if (current := model_dir / WORKERS_DIR).is_dir():
            records += sorted(current.glob("*.json"))
        for current in records:
            try:
                body = json.loads(current.read_text())
            except FileNotFoundError:
                continue  # no marker yet, or a worker's record gone meanwhile
            for field in ("target", "configured"):  # what it serves, what its restart loads
                path = body.get(field) if isinstance(body, dict) else None
                if isinstance(path, str) and path:
                    names.add(Path(path).name)
    except (OSError, ValueError) as exc:
        log.warning(
            "not removing old bundles from %s: cannot tell which are served, %s unreadable (%s); "
            "the next export tries again",
            model_dir, current, exc,
        )  # fmt: skip
        return None
    return names


def _refuse_unservable(version: str | int, name: str, bundle: LoadedBundle) -> None:
    """Check the rating model of a bundle that loaded, as the service does before it serves one
    (:func:`attach_rating_model`); the export loaded bundles without it, so a promotion or a rollback
    made `latest` a bundle the service refuses (its reload kept the old one, a restart served
    nothing)."""
    try:
        attach_rating_model(bundle)
    except BundleError as exc:
        raise RegistryError(
            f"version {version}: bundle {name} loads, but the service would refuse it "
            f"(its rating model): {exc}"
        ) from exc


def promote_version(registry: Registry, version: str | int, model_dir: Path | str) -> Path:
    """Serve registry ``version`` and make it ``champion``, in that order; return its bundle dir.

    The alias moves only once the bundle is in the model store, so a failed export (store
    unwritable, disk full, a damaged artifact) leaves the registry naming the champion that is
    still served. When the alias cannot be moved after the export (the tracking store failed in
    between), ``latest`` is pointed back at the bundle it named before (removed when it named
    none, a first promotion): the two never disagree. That failure is a :class:`RegistryError`
    (whatever the tracking store raised) saying nothing was moved, or what could not be put back.
    Interrupted there (Ctrl-C, which the MLflow client's retries of a tracking server that is down
    leave minutes for), ``latest`` is put back the same way and the interrupt goes on.
    """
    model_dir = Path(model_dir)
    link = model_dir / LATEST
    before = os.readlink(link) if link.is_symlink() else None
    path = export_version(registry, version, model_dir)
    try:
        registry.set_alias(CHAMPION, version)
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C while the request waits: undone, and it goes on
        _serve_again(model_dir, before, version)
        raise
    except Exception as exc:
        failure = f"moving the champion alias to version {version} failed ({type(exc).__name__}: {exc})"
        if before is None:  # nothing was served before: serve nothing again, not an unnamed champion
            try:
                link.unlink(missing_ok=True)
                log.error("could not move the champion alias to version %s: %s removed again", version, link)
            except OSError as undo:
                log.exception("could not remove %s", link)
                raise RegistryError(
                    f"cannot promote version {version}: {failure}, and {link} could not be removed "
                    f"again ({undo}): the model store serves {path.name}, which the registry does not "
                    "name champion"
                ) from exc
            raise RegistryError(
                f"cannot promote version {version}: {failure}; nothing was moved: the champion alias "
                f"is unchanged and the model store serves nothing, as before"
            ) from exc
        if before != path.name:
            try:
                point_latest(model_dir, before)
                log.error(
                    "could not move the champion alias to version %s: serving %s again", version, before
                )
            except (OSError, BundleError) as undo:
                log.exception("could not point %s back at %s", link, before)
                raise RegistryError(
                    f"cannot promote version {version}: {failure}, and {link} could not be pointed "
                    f"back at {before} ({undo}): the model store serves {path.name}, which the "
                    "registry does not name champion"
                ) from exc
        raise RegistryError(
            f"cannot promote version {version}: {failure}; nothing was moved: the champion alias "
            f"is unchanged and the model store serves {before}, as before"
        ) from exc
    return path


@dataclass(frozen=True)
class ServedMismatch:
    """The model store's ``latest`` names the bundle of registered version ``served``, which is not
    the registry's champion (``champion``; None when the registry names none)."""

    served: VersionInfo
    champion: VersionInfo | None

    def describe(self, model_dir: Path | str) -> str:
        champion = (
            f"not the registry's champion v{self.champion.version} (bundle {self.champion.bundle_version})"
            if self.champion is not None
            else "and the registry names no champion"
        )
        return (
            f"{Path(model_dir) / LATEST} serves v{self.served.version} (bundle "
            f"{self.served.bundle_version}), {champion}: a release (a pipeline run or movierec promote) "
            "was stopped between moving latest and moving the champion alias"
        )


def served_mismatch(registry: Registry, model_dir: Path | str) -> ServedMismatch | None:
    """Whether ``model_dir/latest`` serves a registered version that is not the champion. Reads only.

    A release moves ``latest`` first and the ``champion`` alias last (:func:`promote_version`):
    killed in between, it leaves the model store serving a version the registry does not name
    champion. None when they agree, and when ``latest`` names nothing known or a bundle the
    registry does not hold (``make train``'s, a deploy's: no release moved it there; the next
    flow's release replaces it).
    """
    bundle = served_version(model_dir)
    if bundle is None:
        return None
    champion = registry.champion()
    if champion is not None and champion.bundle_version == bundle:
        return None
    served = next((info for info in registry.versions() if info.bundle_version == bundle), None)
    return ServedMismatch(served, champion) if served is not None else None


def repair_served_champion(registry: Registry, model_dir: Path | str) -> ServedMismatch | None:
    """Finish the hand-over a killed release left half done; the mismatch found, or None.

    The ``champion`` alias is what a release moves last, once the bundle is served: while it has
    not moved, the promotion did not happen (as when moving it fails: :func:`promote_version`
    points ``latest`` back). So the registry is authoritative: ``latest`` is pointed at the
    champion's bundle again, exported from the registry when the store no longer holds it
    (idempotent; a WARNING says what was done and how to serve the other version instead). With
    no champion at all (a first promotion killed), ``latest`` is left as it is, with a WARNING:
    pointing it nowhere would leave a restarted service nothing to serve, and the next flow
    promotes a champion. Call it with the flow lock held: a release under way is between its
    steps too. The caller asks the service to reload the champion's bundle.
    """
    mismatch = served_mismatch(registry, model_dir)
    if mismatch is None:
        return None
    if mismatch.champion is None:
        log.warning(
            "%s; left as it is, no champion to serve instead: the next pipeline run promotes one "
            "(to keep this one: movierec promote --version %s)",
            mismatch.describe(model_dir), mismatch.served.version,
        )  # fmt: skip
        return mismatch
    export_version(registry, mismatch.champion.version, model_dir)
    log.warning(
        "%s; the alias is authoritative (a release moves it last, once its bundle is served): latest "
        "points at the champion's bundle again (to serve v%s instead: movierec promote --version %s)",
        mismatch.describe(model_dir), mismatch.served.version, mismatch.served.version,
    )  # fmt: skip
    return mismatch


def _serve_again(model_dir: Path, before: str | None, version: str | int) -> None:
    """Point ``latest`` back at ``before`` (remove it when None) after an interrupted alias move;
    a failure is logged: the next run or tick finishes the hand-over (:func:`repair_served_champion`)."""
    try:
        if before is None:
            (model_dir / LATEST).unlink(missing_ok=True)
        else:
            point_latest(model_dir, before)
        log.error(
            "interrupted while moving the champion alias to version %s: serving %s again",
            version, before or "nothing",
        )  # fmt: skip
    except (OSError, BundleError):
        log.exception("interrupted while moving the champion alias to version %s: could not undo", version)


def _served_ndcg(bundle_dir: Path) -> float | None:
    """Protocol-A NDCG@10 of the model a bundle serves, from its manifest (None when absent)."""
    manifest = read_manifest(bundle_dir)
    row = served_row(manifest) if manifest is not None else None
    return row.ndcg_mean if row is not None else None


def _warn_if_replacing_a_better_unregistered_bundle(registry: Registry, model_dir: Path, new: Path) -> None:
    """The gate compares with the registry's champion only: a bundle `make train` (`make run`)
    wrote is not registered, so the first flow replaces it whatever it scored. Say so."""
    if not (model_dir / LATEST / MANIFEST).is_file():
        return
    previous = (model_dir / LATEST).resolve()
    if previous.name == new.name or previous.name in {v.bundle_version for v in registry.versions()}:
        return
    before, after = _served_ndcg(previous), _served_ndcg(new)
    if before is not None and after is not None and after < before:
        log.warning(
            "replacing %s (not in the registry, protocol-A NDCG@10 %.4f) with %s (%.4f): the gate only "
            "compares with a registered champion; to serve the old bundle again: ln -sfn %s %s",
            previous.name,
            before,
            new.name,
            after,
            previous.name,
            model_dir / LATEST,
        )


def request_reload(
    service_url: str | None,
    admin_password: str | None,
    version: str | None = None,
    timeout: float = RELOAD_TIMEOUT_SECONDS,
) -> Reloaded:
    """Log in as admin and POST /api/admin/reload (waiting for the swap); False with a warning when it cannot
    or the service does not say the bundle is loaded in every worker (202 "loading", 503 "partial").

    ``version`` names the bundle to load (default: the model store's ``latest``). :data:`SUPERSEDED`
    (with a warning) when the service answers 409 ``reload_superseded`` or ``reload_in_progress``:
    a reload of another bundle, started by someone else, took over; it is not undone by asking again.

    A training run must not fail because the service is down or not yet deployed: the
    service loads ``latest`` when it starts anyway.
    """
    if not service_url:
        log.info("no service URL configured: not asking a service to reload")
        return False
    if not admin_password:
        log.warning(
            "ADMIN_PASSWORD is not set: cannot ask %s to reload the model "
            "(make run keeps it in var/secrets.env: set -a; . var/secrets.env; set +a)",
            service_url,
        )
        return False
    base = service_url.rstrip("/")
    try:
        login = _post_json(f"{base}/api/login", {"session_password": admin_password}, None, timeout)
        token = str(login["access_token"])
        body: dict[str, object] = {"wait": True} | ({"version": version} if version else {})
        answer = _post_json(f"{base}/api/admin/reload", body, token, timeout)
    except urllib.error.HTTPError as exc:
        error = _error_of(exc) if exc.code == 409 else {}
        if error.get("code") in _TAKEN_OVER:
            wanted = version or "latest"
            log.warning(
                "service at %s did not load %s: another bundle's reload took over (%s: %s); it is not "
                "asked again (to serve %s: movierec promote, or POST /api/admin/reload with its version)",
                base, wanted, error["code"], str(error.get("message"))[:300], wanted,
            )  # fmt: skip
            return SUPERSEDED
        log.warning("service at %s did not reload the model: %s", base, _describe(exc))
        return False
    except (OSError, KeyError, ValueError) as exc:  # URLError/HTTPError are OSErrors
        log.warning("service at %s did not reload the model: %s", base, _describe(exc))
        return False
    if answer.get("state") != "loaded":  # 202: its wait ran out while loading; the load may yet fail
        log.warning("service at %s has not reloaded the model yet: %s", base, json.dumps(answer)[:300])
        return False
    log.info("service at %s reloaded: %s", base, json.dumps(answer)[:300])
    return True


def reload_service(settings: Any, version: str | None) -> Reloaded:
    """:func:`request_reload` with the settings' service URL and admin password; the outcome is
    remembered (:func:`remember_reload`) so that a failed reload is asked again later."""
    password = settings.admin_password.get_secret_value() if settings.admin_password else None
    reloaded = request_reload(settings.service_url, password, version)
    remember_reload(settings, reloaded)
    return reloaded


def remember_reload(settings: Any, reloaded: object) -> None:
    """Record whether the service confirmed loading the model store's ``latest`` (``reloaded``:
    :func:`request_reload`'s answer; :data:`SUPERSEDED` counts as done: another reload took over).

    A new champion exported while the service was down, answered 5xx or refused the admin
    password stays unserved until the service restarts: nothing else changes, so the
    scheduler's next ticks skip. The marker ``<var>/pipeline/reload-pending`` makes every tick
    ask again (:func:`retry_pending_reload`) until the service answers. No service URL means
    no service to tell: nothing is pending. A release records False as soon as the champion moved,
    before it asks (the flow's release step, ``movierec promote``): killed with its launcher before
    the answer, the next tick still asks.
    """
    marker = Path(settings.var_dir) / "pipeline" / RELOAD_PENDING
    try:
        if reloaded is True or reloaded == SUPERSEDED or not settings.service_url:
            marker.unlink(missing_ok=True)
        else:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(f"{served_version(settings.model_dir) or ''}\n")
    except OSError:
        log.exception("could not record whether the service reloaded the model (%s)", marker)


def retry_pending_reload(settings: Any) -> Reloaded | None:
    """Ask the service again to load ``latest`` when an earlier reload failed; None when none did."""
    if not (Path(settings.var_dir) / "pipeline" / RELOAD_PENDING).is_file():
        return None
    version = served_version(settings.model_dir)
    log.info("the service has not confirmed loading %s yet: asking %s again", version, settings.service_url)
    return reload_service(settings, version)


def _post_json(url: str, body: dict[str, object], token: str | None, timeout: float) -> dict[str, object]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")  # noqa: S310
    # The URL is the operator's MOVIEREC_SERVICE_URL (http/https), never request input.
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310  # nosec B310
        payload = response.read()
    decoded = json.loads(payload) if payload else {}
    return decoded if isinstance(decoded, dict) else {"response": decoded}


def _error_of(exc: urllib.error.HTTPError) -> dict[str, Any]:
    """The error envelope's ``{"code", "message"}`` of an HTTP error answer ({} when it has none)."""
    try:
        error = json.loads(exc.read(64 * 1024)).get("error")
    except (OSError, ValueError, AttributeError):
        return {}
    return error if isinstance(error, dict) else {}


def _describe(exc: Exception) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        if exc.code == 401 and str(exc.url).endswith("/api/login"):  # what the operator can fix
            return f"HTTP 401 from {exc.url}: the service refused the admin password (ADMIN_PASSWORD)"
        if exc.code == 403:
            return (
                f"HTTP 403 from {exc.url}: that password is the service's client password, not its admin one"
            )
        return f"HTTP {exc.code} from {exc.url}"
    if isinstance(exc, urllib.error.URLError):
        return f"unreachable ({exc.reason})"
    return type(exc).__name__
