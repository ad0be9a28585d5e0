"""The features store (seed 001): Parquet snapshots under a data root, SQL through DuckDB.

Layout under the root (a local directory or any fsspec URL — ``s3://bucket/features``,
``gs://…``, ``memory://…``)::

    snapshot=<id>/users.parquet      app.recommender.features.user_features + source column
    snapshot=<id>/items.parquet      app.recommender.features.item_features + title
    snapshot=<id>/ratings.parquet    the training ratings of the run (feedback included)
    snapshot=<id>/feedback.parquet   the feedback ratings of the run and how each was mapped
    snapshot=<id>/_meta.json         data hash, created_at, row counts
    LATEST                           id of the newest complete snapshot
    .publish.lock                    held while a build loads the database and publishes

A snapshot is written completely (and, locally, synced) before ``LATEST`` names it, so readers
never see half of one; the pipeline publishes it only once the service database holds its users
too (:meth:`FeatureStore.staged_snapshot`), so ``LATEST`` and the features API name the same
snapshot even after a failed load, which removes the snapshot it staged. Builds load and publish
one at a time, and ``LATEST`` never goes back to an older snapshot than the one it names
(:class:`SnapshotSuperseded`). After publishing, a build keeps the newest complete snapshots
(``MOVIEREC_FEATURES_KEEP_SNAPSHOTS``) and removes older ones (:meth:`FeatureStore.remove_old`),
never the latest, the one the service database serves, or a build's in progress. The features are computed by
the pure functions of app/recommender/features.py; this module only stores and queries them.
DuckDB is the embedded SQL warehouse: the latest snapshot's tables are views ``users``,
``items``, ``ratings`` and ``feedback``, and every snapshot up to the latest is reachable as
``users_history`` etc. (with a ``snapshot`` column; one DuckDB cannot open is left out of it,
with a warning), so
``movierec sql "select occupation, avg(mean_rating) from users group by 1"`` just works.
"""

from __future__ import annotations

import hashlib
import json
import logging
import signal
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import duckdb
import pandas as pd

from app import stop_signals
from app.durable import exclusive_lock, sync_directory, write_durably
from app.pipeline.runner import features_filesystem
from app.recommender.data import is_feedback_user
from app.recommender.features import item_features, rated_movies, user_features

if TYPE_CHECKING:  # the ingest module pulls in the service database layer; SQL needs none of it
    from app.pipeline.ingest import Ingested
    from app.storage.db import Database

log = logging.getLogger(__name__)

TABLES: Final = ("users", "items", "ratings", "feedback")
LATEST_FILE: Final = "LATEST"
META_FILE: Final = "_meta.json"
LOCK_FILE: Final = ".publish.lock"
ABANDONED_AFTER: Final = timedelta(hours=1)
"""A snapshot folder without ``_meta.json`` and nothing written in it for this long is a killed
build's: writing one takes seconds, so a concurrent build's is never that quiet."""
_ID_TIME: Final = "%Y%m%dT%H%M%S%f"  # the start of a snapshot id: the UTC time it was staged
_LOCAL_PROTOCOLS: Final = {"file", "local"}
_SNAPSHOT_FOLDER: Final = r"snapshot=([^/]+)/[^/]+$"  # a table file's snapshot id, in its path


@dataclass(frozen=True)
class Snapshot:
    id: str
    url: str
    data_hash: str
    counts: dict[str, int]


class SnapshotSuperseded(RuntimeError):
    """Another build published a newer snapshot while this one was staging its own.

    Snapshot ids start with the UTC time of their staging, so they sort oldest first (the
    ``*_history`` views stop at the id ``LATEST`` names, :meth:`FeatureStore.snapshots` sorts
    by them). Loading and publishing the older one would take ``LATEST`` and the service
    database back in time and hide the newer snapshot from the history, so the build removes
    its snapshot instead: both keep the newer one. Only a snapshot published while the build
    staged supersedes it: one in ``LATEST`` before it started is older, whatever its id says.
    """

    def __init__(self, snapshot: Snapshot, latest: str) -> None:
        super().__init__(
            f"features snapshot {snapshot.id} not published: the newer snapshot {latest} was published "
            "meanwhile by another build, and stays the latest (in LATEST and the service database)"
        )
        self.snapshot = snapshot
        self.latest = latest


class DamagedLatest(ValueError):
    """``LATEST`` holds bytes that are not UTF-8 text (disk damage): which snapshot is the latest
    is unknown, so nothing is read or published until it is removed (docs/pipeline.md)."""

    def __init__(self, root: str, path: str) -> None:
        super().__init__(
            f"the features store {root} has a damaged LATEST file ({path}: not UTF-8 text): remove it "
            "and run `movierec features build`, which publishes a new snapshot (docs/pipeline.md)"
        )


def feature_tables(ingested: Ingested) -> dict[str, pd.DataFrame]:
    """The four snapshot tables of one ingested training set."""
    data = ingested.data
    users = user_features(data.ratings, data.users, data.items)
    synthetic = is_feedback_user(users["user_id"])
    users.insert(1, "source", ["feedback" if flag else "movielens" for flag in synthetic])
    items = item_features(data.ratings, data.items)
    items.insert(1, "title", data.items["title"].to_numpy())
    feedback = ingested.feedback.reset_index(drop=True)
    return {
        "users": users,
        "items": items,
        "ratings": data.ratings.reset_index(drop=True),
        "feedback": feedback,
    }


def db_rows(users: pd.DataFrame, ratings: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows for the service's ``user_features`` table: MovieLens users, genre profiles as maps.

    ``rated_movies`` (sorted movie ids, from the snapshot's ``ratings``) lets the predictions
    API leave out what a user rated when the serving model does not know them.
    """
    real = users[users["source"] == "movielens"]
    rated = rated_movies(ratings)
    share_cols = [c for c in real.columns if c.startswith("share_")]
    liked_cols = [c for c in real.columns if c.startswith("liked_share_")]
    plain = [
        "user_id", "age", "age_group", "gender", "occupation", "n_ratings", "n_liked", "liked_share",
        "mean_rating", "std_rating", "first_ts", "last_ts",
    ]  # fmt: skip
    records = real[plain].astype(object).where(real[plain].notna(), None).to_dict("records")
    shares = real[share_cols].to_numpy()
    liked = real[liked_cols].to_numpy()
    for record, share_row, liked_row in zip(records, shares, liked, strict=True):
        # to the last digit, as every other feature: rounded, the API and `movierec sql` disagreed
        record["genre_share"] = {
            c[len("share_") :]: float(v) for c, v in zip(share_cols, share_row, strict=True)
        }
        record["liked_genre_share"] = {
            c[len("liked_share_") :]: float(v) for c, v in zip(liked_cols, liked_row, strict=True)
        }
        record["rated_movies"] = rated.get(int(record["user_id"]), [])
    return records


class FeatureStore:
    """Parquet snapshots under ``root`` (a path or fsspec URL) and DuckDB SQL over them."""

    def __init__(self, root: str | Path) -> None:
        self.root = str(root).rstrip("/")
        self.fs, self.path = features_filesystem(self.root)  # FeaturesRootError when it cannot
        protocol = self.fs.protocol
        self.protocol = protocol[0] if isinstance(protocol, tuple | list) else protocol
        self.is_local = self.protocol in _LOCAL_PROTOCOLS

    # ------------------------------------------------------------------ paths

    def _path(self, *parts: str) -> str:
        return "/".join([self.path.rstrip("/"), *parts])

    def _url(self, path: str) -> str:
        """A location DuckDB can open: a plain path locally, the fsspec URL otherwise."""
        return path if self.is_local else self.fs.unstrip_protocol(path)

    # ------------------------------------------------------------------ writing

    def write_snapshot(self, ingested: Ingested, now: datetime | None = None) -> Snapshot:
        """Compute the feature tables of ``ingested`` and publish them as the latest snapshot.

        For a store nothing else is loaded from; the pipeline stages, loads the database, then
        publishes.
        """
        with self.staged_snapshot(ingested, now) as snapshot:
            return snapshot

    def stage_snapshot(self, ingested: Ingested, now: datetime | None = None) -> Snapshot:
        """Write (and sync) the snapshot's files; ``LATEST`` still names the previous one.

        A write that fails removes what it wrote. Load and publish through
        :meth:`staged_snapshot`, which removes the snapshot when the load fails too.
        """
        self.remove_abandoned()
        now = now or datetime.now(UTC)
        data_hash = ingested.data_hash
        snapshot_id = f"{now:{_ID_TIME}}-{data_hash[:8]}"
        directory = self._path(f"snapshot={snapshot_id}")
        try:
            self.fs.makedirs(directory, exist_ok=True)
            counts = {}
            for name, frame in feature_tables(ingested).items():
                self._put(f"{directory}/{name}.parquet", frame.to_parquet(index=False))
                counts[name] = len(frame)
            meta = {
                "snapshot": snapshot_id,
                "data_hash": data_hash,
                "created_at": now.isoformat(),
                "counts": counts,
            }
            self._put(f"{directory}/{META_FILE}", json.dumps(meta, indent=2).encode())
            if self.is_local:  # the snapshot directory's own name, before LATEST can point at it
                sync_directory(Path(self.path))
        except BaseException:
            self._discard(snapshot_id)
            raise
        return Snapshot(snapshot_id, self.fs.unstrip_protocol(directory), data_hash, counts)

    @contextmanager
    def staged_snapshot(
        self,
        ingested: Ingested,
        now: datetime | None = None,
        *,
        keep: int = 0,
        loaded: Callable[[], str | None] | None = None,
    ) -> Iterator[Snapshot]:
        """Stage a snapshot for the body to load (the service database), then publish it.

        When the body fails, the snapshot is removed: never published, it stayed on disk for
        good and, once a later build published a newer one, was read as history by the
        ``*_history`` views. When only the publishing fails, the body has loaded it (the
        service database serves it), so it is kept, unpublished, until a later build publishes.

        Once published, still holding the lock, the newest ``keep`` snapshots are kept and older
        ones removed (:meth:`remove_old`; 0 keeps every one), never the one ``loaded()`` says the
        service database serves (read from it, as another host's build may have loaded it).
        """
        before = self.latest()
        snapshot = self.stage_snapshot(ingested, now)
        in_database = published = False
        try:
            # One build at a time loads and publishes: two overlapping builds (the scheduler's
            # flow and a manual `movierec features build`) each loaded the database and moved
            # LATEST, and the one that staged first but finished last put its older snapshot back.
            with self._publish_lock():
                latest = self.latest()
                if latest is not None and latest > snapshot.id:
                    if latest != before:  # published while this build staged: it is the newer
                        raise SnapshotSuperseded(snapshot, latest)
                    # LATEST already, so older than this build whatever its id says: a build on a
                    # clock that was ahead. Refused as superseded, every build until the clock
                    # caught up loaded nothing.
                    log.warning(
                        "features snapshot %s in LATEST is dated after this build's %s, which started "
                        "after it was published (a clock that was ahead when it was built): %s is "
                        "published; %s stays on disk, out of the *_history views until the clock "
                        "passes it",
                        latest,
                        snapshot.id,
                        snapshot.id,
                        latest,
                    )
                # A stop (Ctrl-C, SIGTERM, SIGHUP) during the load and the publish is honoured once
                # LATEST names the snapshot: one between the database's commit and LATEST left the
                # database serving a snapshot LATEST did not name (or, before in_database was set,
                # a snapshot removed whose id the features API still answered with).
                with _stops_held():
                    yield snapshot
                    in_database = True
                    self.publish(snapshot)
                    published = True
                self._retain(keep, snapshot, loaded)
        except SnapshotSuperseded:
            self._discard(snapshot.id, why="a newer snapshot was published meanwhile")
            raise
        except BaseException:
            if published:  # a stop held until now: the build is done, and stops here
                raise
            if in_database:
                # The body loaded it (the service database serves it now): removed, the features
                # API answered with a snapshot id whose files were gone. Kept, it is readable by
                # id and becomes history once a later build publishes.
                log.error(
                    "features snapshot %s is loaded but LATEST could not name it (it names the "
                    "previous one); the snapshot is kept: run the build again to publish a new one",
                    snapshot.id,
                )
            else:
                self._discard(snapshot.id)
            raise

    def load_into(
        self, database: Database, ingested: Ingested, keep: int, now: datetime | None = None
    ) -> tuple[Snapshot, int]:
        """A build: stage a snapshot of ``ingested``, load its user features into the service
        ``database``, publish it and keep the newest ``keep`` (:meth:`staged_snapshot`; the one the
        database serves is read from it). Returns the snapshot and the users loaded; raises
        :class:`SnapshotSuperseded` when a newer one was published meanwhile. What ``movierec
        features build`` and the training flow's features step do."""
        from app.storage.user_features import replace_user_features, user_features_snapshot

        with self.staged_snapshot(
            ingested, now, keep=keep, loaded=lambda: user_features_snapshot(database)[0]
        ) as snapshot:
            loaded = replace_user_features(database, self.service_rows(snapshot.id), snapshot.id)
        return snapshot, loaded

    def _retain(self, keep: int, published: Snapshot, loaded: Callable[[], str | None] | None) -> None:
        """:meth:`remove_old` after a build: whatever fails here, the build has succeeded (its
        snapshot is loaded and published), so it is logged and the next build tries again."""
        if keep < 1:
            return
        try:
            serving = loaded() if loaded is not None else published.id
        except Exception as exc:  # noqa: BLE001 - any database error: prune nothing rather than guess
            log.warning(
                "old features snapshots not removed: which one the service database serves is unknown (%s)",
                exc,
            )
            return
        try:
            self.remove_old(keep, protect=(published.id, serving))
        except OSError as exc:
            log.warning("old features snapshots not removed: %s", exc)

    @contextmanager
    def _publish_lock(self) -> Iterator[None]:
        """The store's lock file for a local root; for an object store (no locks there) one in
        the temporary directory, named by the root, which serialises the builds of this host."""
        if self.is_local:
            path = Path(self._path(LOCK_FILE))
        else:
            digest = hashlib.sha256(self.root.encode()).hexdigest()[:16]
            path = Path(tempfile.gettempdir()) / f"movierec-features-{digest}.lock"
        with exclusive_lock(path):
            yield

    def _discard(self, snapshot_id: str, why: str = "it was never published") -> None:
        """Remove an unpublished snapshot this process staged; never the one ``LATEST`` names
        (a publish that failed after replacing it)."""
        directory = self._path(f"snapshot={snapshot_id}")
        try:
            if self.latest() == snapshot_id or not self.fs.exists(directory):
                return
            self.fs.rm(directory, recursive=True)
        except OSError as exc:  # the error that failed the build matters more; the leftover is named
            log.warning("could not remove the unpublished features snapshot %s: %s", directory, exc)
        else:
            log.warning("removed the features snapshot %s: %s", snapshot_id, why)

    def remove_abandoned(self, older_than: timedelta = ABANDONED_AFTER) -> list[str]:
        """Remove the snapshot folders builds killed mid-write left: no ``_meta.json``, and nothing
        written in them for ``older_than``. Returns their ids.

        Every reader ignores such a folder, and it used to stay on disk for good. Its age is that of
        its newest file (the id's time when the store cannot tell), so a concurrent build's
        snapshot, still being written, is never taken for one.
        """
        incomplete = [(entry, sid) for entry, sid, complete in self._snapshot_folders() if not complete]
        removed = []
        for snapshot_id, written in self._remove_quiet(incomplete, older_than, "abandoned"):
            removed.append(snapshot_id)
            log.warning(
                "removed the abandoned features snapshot %s: no %s, nothing written in it since %s "
                "(a build stopped while writing it)",
                snapshot_id,
                META_FILE,
                written.isoformat(timespec="seconds"),
            )
        return removed

    def remove_old(
        self, keep: int, protect: Iterable[str | None] = (), older_than: timedelta = ABANDONED_AFTER
    ) -> list[str]:
        """Retention: remove the complete snapshots older than the newest ``keep`` up to ``LATEST``
        (``keep`` < 1 keeps them all). Returns their ids.

        Never removed: the one ``LATEST`` names, those in ``protect`` (the one the service
        database serves), any newer than ``LATEST`` (staged by a build that has yet to load and
        publish it), any without ``_meta.json`` (:meth:`remove_abandoned`'s), and, as there,
        any with something written in it for ``older_than``: a concurrent build's snapshot,
        which its build removes itself if it is older than ``LATEST`` (:class:`SnapshotSuperseded`).
        """
        latest = self.latest()
        if keep < 1 or latest is None:
            return []
        history = sorted(
            (sid, entry) for entry, sid, complete in self._snapshot_folders() if complete and sid <= latest
        )
        kept = {sid for sid, _ in history[-keep:]} | {latest} | {sid for sid in protect if sid}
        old = [(entry, sid) for sid, entry in history if sid not in kept]
        removed = []
        for snapshot_id, written in self._remove_quiet(old, older_than, "old"):
            removed.append(snapshot_id)
            log.info(
                "removed the features snapshot %s: older than the newest %d kept (the latest is %s), "
                "nothing written in it since %s",
                snapshot_id,
                keep,
                latest,
                written.isoformat(timespec="seconds"),
            )
        return removed

    def _remove_quiet(
        self, folders: Iterable[tuple[str, str]], older_than: timedelta, what: str
    ) -> Iterator[tuple[str, datetime]]:
        """Remove each (path, id) folder with nothing written in it for ``older_than``; yield the
        id and that last write of each one removed. A folder another build removed first is
        skipped; one that cannot be removed is logged and left for the next build."""
        now = datetime.now(UTC)
        for entry, snapshot_id in folders:
            written = self._last_written(entry)
            if written is None or now - written < older_than:
                continue
            try:
                self.fs.rm(entry, recursive=True)
            except FileNotFoundError:  # another build removed it first
                continue
            except OSError as exc:  # the build goes on; the next one tries again
                log.warning("could not remove the %s features snapshot %s: %s", what, entry, exc)
                continue
            yield snapshot_id, written

    def _last_written(self, directory: str) -> datetime | None:
        """When anything in ``directory`` was last written; the id's staging time when the store
        gives no times; None when neither is known (such a folder is left alone)."""
        times = []
        for path in [directory, *self.fs.find(directory)]:
            try:
                modified = self.fs.modified(path)
            except (NotImplementedError, OSError, ValueError):  # object stores: no folder times
                continue
            times.append(modified if modified.tzinfo else modified.replace(tzinfo=UTC))
        if times:
            return max(times)
        try:
            staged = datetime.strptime(directory.rsplit("=", 1)[-1].split("-", 1)[0], _ID_TIME)
        except ValueError:
            return None
        return staged.replace(tzinfo=UTC)

    def publish(self, snapshot: Snapshot) -> None:
        """Name ``snapshot`` in ``LATEST``: after its files, and whatever is loaded from them, are in place.

        Replaced whole and synced: a crash leaves the previous id or this one, never an empty
        or torn file.
        """
        self._put(self._path(LATEST_FILE), snapshot.id.encode())
        log.info("features snapshot %s published in %s", snapshot.id, self.root)

    def _put(self, path: str, data: bytes) -> None:
        """A whole file: locally written to a side name, synced and renamed; an object store's
        put is already all-or-nothing and durable when it returns."""
        if self.is_local:  # readable as fsspec's own writes were: features are not secrets
            write_durably(Path(path), data, mode=0o666)
        else:
            self.fs.pipe_file(path, data)

    # ------------------------------------------------------------------ reading

    def latest(self) -> str | None:
        """Id of the newest complete snapshot, or None when the store is empty (no LATEST).

        Read rather than asked for first: ``exists`` is False for a LATEST that cannot be looked
        at either (a root that is a file, a directory this user may not enter), which read as an
        empty store ("run features build"); that is an OSError naming why now."""
        path = self._path(LATEST_FILE)
        try:
            text = self.fs.cat_file(path)
        except FileNotFoundError:
            return None
        try:
            return text.decode().strip() or None
        except UnicodeDecodeError as exc:  # a damaged disk block: it was the codec's message, or a traceback
            raise DamagedLatest(self.root, self._url(path)) from exc

    def snapshots(self) -> list[str]:
        """Every complete snapshot id, oldest first."""
        return sorted(snapshot_id for _, snapshot_id, complete in self._snapshot_folders() if complete)

    def _snapshot_folders(self) -> list[tuple[str, str, bool]]:
        """Each ``snapshot=…`` folder of the store: its path, its id, and whether it is complete
        (it has ``_meta.json``, written last)."""
        if not self.fs.exists(self.path):
            return []
        folders = []
        for entry in self.fs.ls(self.path, detail=False):
            entry = str(entry).rstrip("/")
            name = entry.rsplit("/", 1)[-1]
            if name.startswith("snapshot="):
                folders.append((entry, name.split("=", 1)[1], self.fs.exists(f"{entry}/{META_FILE}")))
        return folders

    def meta(self, snapshot: str | None = None) -> dict[str, Any]:
        snapshot = snapshot or self._require_latest()
        return json.loads(self.fs.cat_file(self._path(f"snapshot={snapshot}", META_FILE)))

    def read(self, table: str, snapshot: str | None = None) -> pd.DataFrame:
        """One table of a snapshot (default: the latest) as a DataFrame."""
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}; known: {', '.join(TABLES)}")
        snapshot = snapshot or self._require_latest()
        with self.fs.open(self._path(f"snapshot={snapshot}", f"{table}.parquet"), "rb") as handle:
            return pd.read_parquet(handle)

    def service_rows(self, snapshot: str | None = None) -> list[dict[str, Any]]:
        """A snapshot's rows for the service's ``user_features`` table (:func:`db_rows`)."""
        snapshot = snapshot or self._require_latest()
        return db_rows(self.read("users", snapshot), self.read("ratings", snapshot))

    def _require_latest(self) -> str:
        snapshot = self.latest()
        if snapshot is None:
            raise FileNotFoundError(
                f"the features store {self.root} has no snapshot yet: run `movierec features build`"
            )
        return snapshot

    def connect(self) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB with views over the latest snapshot and the whole history, which
        reaches no other file."""
        snapshot = self._require_latest()
        # The history lists the complete snapshots (those with _meta.json), not ``snapshot=*``:
        # a run that died mid-write leaves a directory with some (or truncated) Parquet files,
        # which the glob read as history — or, truncated, made every view and query fail.
        # Nor is a snapshot newer than LATEST: staged by a build whose database load failed.
        complete = [s for s in self.snapshots() if s <= snapshot] or [snapshot]
        connection = duckdb.connect(":memory:")
        try:
            if not self.is_local:
                connection.register_filesystem(self.fs)
            files = self._create_views(connection, snapshot, complete)
            # No file but the views' own from here on, and no way to change that back: the
            # queries run over the warehouse, not over the machine (sql() refuses writes too).
            connection.execute("SET allowed_paths = ?", [files])
            connection.execute("SET enable_external_access = false")
            connection.execute("SET lock_configuration = true")
        except BaseException:
            connection.close()
            raise
        return connection

    def _create_views(
        self, connection: duckdb.DuckDBPyConnection, snapshot: str, complete: list[str]
    ) -> list[str]:
        """The views over ``snapshot`` and the readable ones of ``complete``; returns the files they read."""
        # DuckDB reads every file's footer when it creates a view, so one unreadable old snapshot
        # (a damaged block, a truncated copy) failed every query, even those over the latest one.
        # It is left out of the history, with a warning; the latest one unreadable is an error.
        problem = self._unreadable(connection, snapshot)
        if problem is not None:
            raise ValueError(
                f"the latest features snapshot {snapshot} is unreadable: {problem}; "
                "publish a new one with `movierec features build`"
            )
        history = []
        for old in complete:
            problem = None if old == snapshot else self._unreadable(connection, old)
            if problem is None:
                history.append(old)
            else:
                log.warning("features snapshot %s left out of the *_history views: %s", old, problem)
        read: list[str] = []
        # The ``snapshot`` column is the id in the file's own ``snapshot=<id>`` folder. DuckDB's
        # Hive partitioning made one of every ``name=value`` folder of the path, the root's
        # parents too: under ``…/year=2026/`` every movie's year was 2026, under ``user_id=7/``
        # every user was user 7. It is off, and the id is read from the file name.
        snapshot_of = f"regexp_extract(filename, {_literal(_SNAPSHOT_FOLDER)}, 1) AS snapshot"
        for table in TABLES:
            latest = self._url(self._path(f"snapshot={snapshot}", f"{table}.parquet"))
            files = [self._url(self._path(f"snapshot={s}", f"{table}.parquet")) for s in history]
            # Table names are our constants and paths are quoted literals: no user input here.
            view = (
                f"CREATE VIEW {table} AS SELECT *, {_literal(snapshot)} AS snapshot FROM "  # noqa: S608  # nosec B608
                f"read_parquet({_literal(latest)}, hive_partitioning = false)"
            )
            connection.execute(view)
            listed = "[" + ", ".join(_literal(path) for path in files) + "]"
            history_view = (
                f"CREATE VIEW {table}_history AS SELECT * EXCLUDE (filename), {snapshot_of} FROM "  # noqa: S608  # nosec B608
                f"read_parquet({listed}, hive_partitioning = false, union_by_name = true, filename = true)"
            )
            connection.execute(history_view)
            read.extend([latest, *files])
        return read

    def _unreadable(self, connection: duckdb.DuckDBPyConnection, snapshot: str) -> str | None:
        """What keeps DuckDB from opening one of the snapshot's tables (its file and why), or None.

        The footer (schema, row groups) is what a view needs; damage past it fails only the
        queries that read those rows, with DuckDB's error naming the file.
        """
        for table in TABLES:
            path = self._url(self._path(f"snapshot={snapshot}", f"{table}.parquet"))
            try:
                connection.execute("DESCRIBE SELECT * FROM read_parquet(?)", [path])
            except duckdb.Error as exc:
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                return f"{path}: {reason}"
        return None

    def sql(self, query: str) -> pd.DataFrame:
        """Run one read-only SQL query over the features and return the result.

        The warehouse is queried, never changed: one ``SELECT`` (``DESCRIBE``, ``SHOW``,
        ``SUMMARIZE``, ``FROM …`` are SELECTs too), and DuckDB reaches no file but the
        snapshots' Parquet files the views read. A ``COPY … TO`` over the latest ``users.parquet``
        replaced the published features behind the service database's back, ``ATTACH`` and
        ``COPY`` wrote anywhere, and ``read_csv('/any/file')`` read any file of the machine.
        """
        statements = duckdb.extract_statements(query)  # a syntax error: duckdb.Error, as before
        if not statements:  # "", a comment, ";"
            raise ValueError("no SQL statement to run")
        kinds = [statement.type.name for statement in statements]
        if kinds != [duckdb.StatementType.SELECT.name]:
            given = f"{len(kinds)} statements" if len(kinds) > 1 else f"a {kinds[0]} statement"
            raise ValueError(
                f"the features warehouse is read-only: give one query (SELECT, DESCRIBE, SHOW, "
                f"SUMMARIZE), not {given}"
            )
        connection = self.connect()
        try:
            result = connection.execute(query)
            if result is None:  # DuckDB's answer to no statement at all ("", a comment, ";")
                raise ValueError("no SQL statement to run")
            return result.df()
        finally:
            connection.close()


@contextmanager
def _stops_held() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP received in the block are sent again when it ends, to the
    handlers found (Ctrl-C's KeyboardInterrupt for ``movierec features build``): the block is not
    stopped half-way. Main thread only, as every handler (app/stop_signals.py)."""
    received: list[int] = []
    try:
        with stop_signals.handled(lambda signum, _frame: received.append(signum)):
            yield
    finally:
        if received:  # also when the block failed: the stop is not lost
            log.warning(
                "stopping: %s received while the features snapshot was loaded and published",
                signal.Signals(received[0]).name,
            )
            signal.raise_signal(received[0])


def _literal(text: str) -> str:
    """A SQL string literal (paths are ours, but quote them properly anyway)."""
    return "'" + text.replace("'", "''") + "'"
