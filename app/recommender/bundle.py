"""Model bundles: the immutable, versioned unit that training writes and serving loads.

A bundle is a directory::

    manifest.json        version, created_at, code_version, data_hash, served model, metrics
    model.pkl            the fitted served model (joblib), for rating predictions and reuse
    catalogue.csv        movie_id, title, year, genres (titles unique)
    segment_top.npy      (441, depth) catalogue positions, best first, -1 padded
    segment_scores.npy   (441, depth) the model's scores for those movies
    user_ids.npy         known users (optional: models that score known users)
    user_top.npy         (n_users, depth) positions, movies the user rated excluded
    user_scores.npy
    test_data.json       seed-format accuracy test: data, target, expected_score (+ floor_score)

Serving only needs the tables, so a request is a lookup. ``load_bundle`` accepts a bundle
directory, a model store directory (it follows ``latest``), a ``.tar.gz`` of a bundle, or a
seed-style ``model.pkl`` (then the tables are computed at load time). A bundle is loaded
and checked completely before anyone can use it, so a bad one never replaces a good one.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import logging
import os
import pickle  # nosec B403 - only its exception type
import re
import shutil
import stat
import tarfile
import tempfile
import time
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from itertools import islice
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

import joblib
import numpy as np
import pandas as pd

from app.durable import sync_directory, sync_tree
from app.exit_hooks import at_exit
from app.recommender.data import is_feedback_user
from app.recommender.models.base import Recommender
from app.recommender.ranking import top_n
from app.recommender.segments import Segment, all_segments, segment_index

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
TABLE_DEPTH = 100  # max_recs is at most 100
LATEST = "latest"
MANIFEST = "manifest.json"
RATING_MODEL_FILE = "rating_model.pkl"  # a bundle's rating regressor (/api/predict/*), when it has one
VERSION_MAX_LENGTH = 64  # the database's model_version columns (app/storage/models.py)
STAGING_PREFIX = ".writing-"
"""write_bundle's staging directories in a model store: ``.writing-<version>-<random>``."""
LEGACY_STAGING = re.compile(r"\A\.\d{8}T\d{6}-[0-9a-f]{6}[A-Za-z0-9._-]*-[a-z0-9_]{8}\Z")
"""write_bundle's staging directories before ``STAGING_PREFIX``: ``.<version>-<random>``, known by
:func:`new_version`'s timestamp (so ``.export-*``, ``.deploy-*`` and ``.latest-*`` never match)."""
LATEST_SWAP_PREFIX = ".latest-"
LATEST_SWAP = re.compile(rf"\A{re.escape(LATEST_SWAP_PREFIX)}\d+-\d+\Z")
"""point_latest's temporary links, ``.latest-<pid>-<ns>``: left by a process killed mid-swap."""
EXPORT_STAGING_PREFIX = ".export-"
"""app/registry/export.py's staging directories: ``.export-<bundle version>-<random>``."""
MARKER_NAME = ".serving.json"
"""The hot-reload generation marker in a model store (app/services/reload.py)."""
WORKERS_DIR = ".serving-workers"
"""The serving workers' records of what each serves (app/services/reload.py), which the model
store's retention reads (app/registry/export.py)."""
MARKER_TMP = re.compile(rf"\A{re.escape(MARKER_NAME)}\.\d+\.\d+\.tmp\Z")
"""The marker's temporary files, ``.serving.json.<pid>.<thread id>.tmp``, renamed into place."""
EXTRACTION_STAGING_PREFIX = ".staging-"
EXTRACTION_STAGING = re.compile(rf"\A{re.escape(EXTRACTION_STAGING_PREFIX)}[a-z0-9_]{{8}}\Z")
"""A ``.tar.gz``'s extraction before it is renamed into the extraction cache (``_load_tarball``):
``tempfile.mkdtemp(prefix=".staging-")``, whose random part is 8 of ``[a-z0-9_]``."""
MAX_ARCHIVE_BYTES = 2 << 30
MAX_ARCHIVE_MEMBERS = 1000
"""The bounds of a ``.tar.gz`` model (:func:`archive_members`): the sum of its regular members'
sizes unpacked, and its number of members. A bundle of ml-100k is some 17 MB in a dozen files;
a decompression bomb, or thousands of members each under any other bound, filled ``$TMPDIR``."""
PRIVATE_EXTRACTION_PREFIX = "movierec-bundle-"
PRIVATE_EXTRACTION = re.compile(
    rf"\A{re.escape(PRIVATE_EXTRACTION_PREFIX)}(?P<pid>\d+)-(?:(?P<tag>[0-9a-f]{{12}})-)?[a-z0-9_]{{8}}\Z"
)
"""A ``.tar.gz``'s private extraction in ``$TMPDIR`` when there is no usable extraction cache
(``_private_extraction``): ``tempfile.mkdtemp(prefix="movierec-bundle-<maker's pid>-<its tag>-")``,
the tag its start time (:func:`process_tag`; none where ``/proc`` cannot tell, nor before 2026-12-06)."""
STALE_STAGING_SECONDS = 3600
"""A leftover unchanged this long belongs to a writer that died: the next write removes it."""
CODE_VERSION_SOURCES = ("recommender", "pipeline/candidates.py", "monitoring/drift.py")
"""What :func:`code_version` hashes, relative to the ``app`` package: the ML code (the models,
the features they are fitted on, evaluation, the bundle), the pipeline's per-candidate training
(evaluation, fit, batch inference, the rating model and the manifest of every bundle), and the
drift reference every manifest carries (``training_distribution``, written by
:func:`app.monitoring.drift.demographic_distribution`; the module is hashed whole). Not ingest
(what it produces is the data hash), the features store (it publishes the features API's
snapshot, which no bundle reads), nor the flow, gate, registry, scheduler or web layer: they
decide which version serves and how, not what a version holds."""
CODE_VERSION_LIBRARIES = ("numpy", "scipy", "pandas", "scikit-learn", "lightgbm")
"""The installed distributions whose versions :func:`code_version` hashes: the numerical
libraries the models are fitted with, whose upgrade can change a fitted model (a solver's
default, a summation order). Read with :func:`importlib.metadata.version`, from the
installation rather than from modules already imported, so a long-running scheduler after an
in-place upgrade computes what the flow it starts records; one not installed counts as such.
Not the web, storage or orchestration libraries (Flask, SQLAlchemy, MLflow, Metaflow…)."""
_BUNDLE_NAME_RULE = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
BUNDLE_NAME = re.compile(rf"\A{_BUNDLE_NAME_RULE}\Z")  # \Z: "$" matches before a final "\n"
"""A bundle directory's name in a model store: no path separators, no dot-files (reload, export)."""
BUNDLE_NAME_PATTERN = f"^{_BUNDLE_NAME_RULE}$"
"""The same rule as a JSON Schema / pydantic ``pattern`` (there "$" is the end of the text): the
reload request states it (app/api/serving_schemas.py)."""


class BundleError(ValueError):
    """A bundle is missing, malformed or inconsistent; the message says what is wrong."""


@dataclass(frozen=True)
class Recommendation:
    movie_id: int
    title: str
    score: float
    # The item as the API answers it and the request log stores it, built once. Served lists are
    # slices of lists materialised per segment / user, so requests share these dicts: read only.
    payload: dict[str, Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        payload = {"movie_id": self.movie_id, "title": self.title, "score": self.score}
        object.__setattr__(self, "payload", payload)


class RecommendQuery(NamedTuple):
    """What one recommendation is asked for: a profile, a known user, or both (the profile then
    answers for a user the model does not know); never a movie in ``exclude``."""

    max_recs: int
    age: int | None = None
    gender: str | None = None
    occupation: str | None = None
    user_id: int | None = None
    exclude: Container[int] = ()


@dataclass(frozen=True)
class Tables:
    """Precomputed answers: positions into the catalogue and their scores."""

    segment_top: np.ndarray
    segment_scores: np.ndarray
    user_ids: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    user_top: np.ndarray = field(default_factory=lambda: np.empty((0, 0), dtype=np.int32))
    user_scores: np.ndarray = field(default_factory=lambda: np.empty((0, 0), dtype=np.float32))


def build_tables(
    model: Recommender,
    ratings: pd.DataFrame | None = None,
    depth: int = TABLE_DEPTH,
    batch: int = 256,
) -> Tables:
    """Batch inference: rank every segment and, when the model can, every known user.

    Known users' lists exclude what they rated in ``ratings`` (the training data). Without
    ``ratings`` (a lone model.pkl) they exclude what the model kept of them
    (``keeps_ratings``); a model that kept nothing gets no known users' lists, rather than
    lists of movies the users already rated. The synthetic feedback users (ids above
    ``FEEDBACK_USER_BASE``, one per scored anonymous request) get none: no caller is one of
    them, and their lists grew every bundle by a row per scored request and served a stranger
    asking for ``user_id`` 1000001 a list made from someone else's scores.
    """
    segments = all_segments()
    seg_top_parts, seg_score_parts = [], []
    for start in range(0, len(segments), batch):
        scores = model.score_segments(segments[start : start + batch])
        best = top_n(scores, depth)
        seg_top_parts.append(best.astype(np.int32))
        seg_score_parts.append(_gather(scores, best))
    tables = {
        "segment_top": np.vstack(seg_top_parts),
        "segment_scores": np.vstack(seg_score_parts),
    }
    if model.supports_users and (ratings is not None or model.keeps_ratings):
        user_ids = np.sort(np.asarray(model.known_users(), dtype=np.int64))
        user_ids = user_ids[~is_feedback_user(user_ids)]
        rated: dict[int, np.ndarray] = {}
        if ratings is not None:
            grouped = ratings.groupby("user_id")["movie_id"]
            rated = {int(u): model.item_positions(m.to_numpy()) for u, m in grouped}
        top_parts, score_parts = [], []
        for start in range(0, len(user_ids), batch):
            chunk = user_ids[start : start + batch]
            scores = model.score_users(chunk.tolist())
            if ratings is not None:
                exclude = [_valid(rated.get(int(u), np.empty(0, dtype=np.int64))) for u in chunk]
            else:
                exclude = model.rated_positions(chunk.tolist())
            best = top_n(scores, depth, exclude)
            top_parts.append(best.astype(np.int32))
            score_parts.append(_gather(scores, best))
        if len(user_ids):
            tables.update(
                user_ids=user_ids, user_top=np.vstack(top_parts), user_scores=np.vstack(score_parts)
            )
    return Tables(**tables)


def _valid(positions: np.ndarray) -> np.ndarray:
    return positions[positions >= 0]


def _gather(scores: np.ndarray, best: np.ndarray) -> np.ndarray:
    gathered = np.take_along_axis(np.asarray(scores, dtype=np.float64), np.maximum(best, 0), axis=1)
    return np.where(best >= 0, gathered, np.nan).astype(np.float32)


# --------------------------------------------------------------------------- the loaded form


@dataclass
class LoadedBundle:
    """A bundle in memory: everything a request needs, as NumPy arrays and dicts."""

    version: str
    manifest: dict[str, Any]
    catalogue: pd.DataFrame
    tables: Tables
    path: Path
    model: Recommender | None = None
    loaded_at: float = field(default_factory=time.time)
    # The rating regressor behind /api/predict/* (rating_model.pkl, or the served model when it
    # predicts ratings); attached by the serving layer before the bundle is swapped in.
    rating_model: Recommender | None = None
    # The private directory a ``.tar.gz`` was extracted into when there was no usable extraction
    # cache (_load_tarball): removed by :func:`release_extraction` or at its maker's exit.
    extracted_to: Path | None = None

    def __post_init__(self) -> None:
        self.movie_ids = self.catalogue["movie_id"].to_numpy(dtype=np.int64)
        self.titles: list[str] = self.catalogue["title"].tolist()
        self.position_of_title = {title: pos for pos, title in enumerate(self.titles)}
        self.position_of_movie = {int(m): pos for pos, m in enumerate(self.movie_ids)}
        self._segment_row = segment_index()
        self._user_row = {int(u): row for row, u in enumerate(self.tables.user_ids)}
        # answers as served (immutable Recommendation lists), materialised on first use
        self._segment_lists: dict[int, list[Recommendation]] = {}
        self._user_lists: dict[int, list[Recommendation]] = {}

    @property
    def strategy_for_segments(self) -> str:
        return "segment"

    def knows_user(self, user_id: int) -> bool:
        return user_id in self._user_row

    def _rows(self, top: np.ndarray, scores: np.ndarray) -> list[Recommendation]:
        out = []
        for pos, score in zip(top.tolist(), scores.tolist(), strict=True):
            if pos < 0:
                break
            out.append(Recommendation(int(self.movie_ids[pos]), self.titles[pos], score))
        return out

    def recommend_segment(
        self, segment: Segment, n: int, exclude: Container[int] = ()
    ) -> list[Recommendation]:
        """The segment's best ``n``; with ``exclude``, the best ``n`` not in it (maybe fewer)."""
        row = self._segment_row[segment.key]
        rows = self._segment_lists.get(row)
        if rows is None:  # built once per table row, then every request only slices it
            rows = self._segment_lists[row] = self._rows(
                self.tables.segment_top[row], self.tables.segment_scores[row]
            )
        return _unseen(rows, n, exclude) if exclude else rows[:n]

    def recommend_user(self, user_id: int, n: int, exclude: Container[int] = ()) -> list[Recommendation]:
        """Personal recommendations; KeyError when the user is unknown to this bundle.

        The table already leaves out what the user rated in the training data; ``exclude`` is
        for movies rated since (a newer features snapshot than the bundle).
        """
        row = self._user_row[user_id]
        rows = self._user_lists.get(row)
        if rows is None:
            rows = self._user_lists[row] = self._rows(self.tables.user_top[row], self.tables.user_scores[row])
        return _unseen(rows, n, exclude) if exclude else rows[:n]

    @property
    def metrics(self) -> dict[str, Any]:
        metrics = self.manifest.get("metrics")
        return dict(metrics) if isinstance(metrics, dict) else {}  # null, a list: nothing to report


def _unseen(rows: list[Recommendation], n: int, exclude: Container[int]) -> list[Recommendation]:
    """The first ``n`` of ``rows`` whose movie is not in ``exclude``."""
    return list(islice((item for item in rows if item.movie_id not in exclude), n))


# --------------------------------------------------------------------------- writing


def code_version(root: Path | None = None) -> str:
    """A hash of what determines a trained model besides the data: a change there is a new
    model version.

    ``root`` is the ``app`` package; what is hashed under it is ``CODE_VERSION_SOURCES``. Each
    module is hashed by its syntax tree without docstrings (:func:`_code_fingerprint`), so a
    comment, a reworded docstring or a layout change is not a new version (the scheduler would retrain every
    candidate for it); any change to what the code does is. A file that does not parse is
    hashed by its bytes. The installed versions of ``CODE_VERSION_LIBRARIES`` are hashed too.
    """
    root = root or Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(
        module
        for source in CODE_VERSION_SOURCES
        for module in ((root / source).rglob("*.py") if (root / source).is_dir() else [root / source])
    ):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(_code_fingerprint(path.read_bytes()))
    for library, version in library_versions().items():
        digest.update(f"\0{library}=={version}".encode())
    return digest.hexdigest()[:12]


def library_versions() -> dict[str, str]:
    """The installed version of each of ``CODE_VERSION_LIBRARIES`` ("not installed" when absent)."""
    versions = {}
    for library in CODE_VERSION_LIBRARIES:
        try:
            versions[library] = metadata.version(library)
        except metadata.PackageNotFoundError:
            versions[library] = "not installed"
    return versions


def _code_fingerprint(source: bytes) -> bytes:
    """The module's syntax tree without docstrings (comments and layout are not in it).

    A docstring here is any string standing alone as a statement: a module's, class's or
    function's, the one documenting a constant under it (STYLE.md), a note inside a body. None
    does anything when the code runs. Until 2026-12-07 only the first statement of a module,
    class or function was left out, so rewording a constant's note was a new code version.
    """
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return source
    for node in ast.walk(tree):
        for name in ("body", "orelse", "finalbody"):
            statements = getattr(node, name, None)
            if not isinstance(statements, list):  # a lambda's body is an expression
                continue
            kept = [statement for statement in statements if not _is_string_statement(statement)]
            if len(kept) != len(statements):  # a body left empty: as if it were ``pass``
                setattr(node, name, kept or ([ast.Pass()] if name == "body" else []))
    return repr(_canonical(tree)).encode()


def _is_string_statement(statement: ast.AST) -> bool:
    """Whether ``statement`` is a string alone (a docstring), which does nothing when run."""
    return (
        isinstance(statement, ast.Expr)
        and isinstance(statement.value, ast.Constant)
        and isinstance(statement.value.value, str)
    )


def _canonical(value: Any) -> Any:
    """A syntax tree as nested tuples, the same under every Python the project runs on.

    ``ast.dump`` is not: 3.12 gave every function and class a ``type_params`` field (empty
    unless the code uses the new syntax) and 3.13 leaves empty fields out, so one code had one
    code version per interpreter. Fields that are None or empty lists are left out here; a field
    in use keeps its name, and constants their type (``1``, ``1.0`` and ``True`` differ).
    """
    if isinstance(value, ast.AST):
        fields = tuple(
            (name, _canonical(field))
            for name, field in ast.iter_fields(value)
            if field is not None and not (isinstance(field, list) and not field)
        )
        return (type(value).__name__, fields)
    if isinstance(value, list):
        return tuple(_canonical(item) for item in value)
    return (type(value).__name__, repr(value))


def new_version(now: datetime | None = None, salt: str = "") -> str:
    now = now or datetime.now(UTC)
    suffix = hashlib.sha256(f"{now.isoformat()}{salt}{os.getpid()}".encode()).hexdigest()[:6]
    return f"{now:%Y%m%dT%H%M%S}-{suffix}"


def write_bundle(
    model_dir: Path | str,
    model: Recommender,
    catalogue: pd.DataFrame,
    tables: Tables,
    manifest: dict[str, Any],
    test_data: dict[str, Any],
    *,
    set_latest: bool = True,
    extra_models: dict[str, Recommender] | None = None,
) -> Path:
    """Write a new immutable bundle directory atomically and return its path.

    Files go to a hidden temporary directory first, are synced and renamed into place, so a
    reader never sees half a bundle, nor a crash leaves one; ``latest`` is then swapped with an
    atomic symlink replace (:func:`point_latest`).
    """
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    version = manifest.get("version") or new_version(salt=manifest.get("data_hash", ""))
    manifest = {
        "format": FORMAT_VERSION,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **manifest,
        # what load_bundle checks the tables against: computed here, never a caller's stale copy
        "version": version,
        "table_depth": int(tables.segment_top.shape[1]),
        "n_items": len(catalogue),
        "n_known_users": len(tables.user_ids),
    }
    if not np.array_equal(np.asarray(model.item_ids), catalogue["movie_id"].to_numpy()):
        # the tables hold positions in the model's item_ids, served as rows of this catalogue
        raise BundleError("the catalogue is not the model's (its movie ids, in the model's order)")
    _validate(manifest, catalogue, tables, model_dir / version)  # never write a bundle that cannot load
    remove_stale_leftovers(model_dir)
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{version}-", dir=model_dir))
    final = model_dir / version
    try:
        joblib.dump(model, staging / "model.pkl", compress=3)
        for filename, extra in (extra_models or {}).items():  # e.g. rating_model.pkl for /api/predict/*
            joblib.dump(extra, staging / filename, compress=3)
        catalogue[["movie_id", "title", "year", "genres"]].to_csv(staging / "catalogue.csv", index=False)
        for name in ("segment_top", "segment_scores", "user_ids", "user_top", "user_scores"):
            np.save(staging / f"{name}.npy", getattr(tables, name), allow_pickle=False)
        (staging / "test_data.json").write_text(json.dumps(test_data))
        manifest["files"] = file_digests(staging)  # load_bundle refuses a bundle whose bytes changed
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=_json_default))
        os.chmod(staging, 0o755)  # noqa: S103  # nosec B103 - bundles are world-readable artefacts, never secret
        sync_tree(staging)  # on disk before its name is: a crash never leaves a bundle of empty files
        os.replace(staging, final)
    except BaseException:  # a full disk, a model that does not pickle, Ctrl-C: no half bundle stays
        _remove_tree(staging)
        raise
    sync_directory(model_dir)  # the bundle's name
    if set_latest:
        point_latest(model_dir, version)
    return final


class Leftover(NamedTuple):
    """A kind of entry that a writer killed outright leaves behind: its name, and what it is
    (``stat.S_ISDIR``, ``S_ISREG`` or ``S_ISLNK``; an entry of that name but of another type is
    not that writer's)."""

    name: re.Pattern[str]
    kind: Callable[[int], bool]


STORE_LEFTOVERS = (
    Leftover(LATEST_SWAP, stat.S_ISLNK),
    Leftover(MARKER_TMP, stat.S_ISREG),
    Leftover(re.compile(rf"\A{re.escape(STAGING_PREFIX)}"), stat.S_ISDIR),
    Leftover(re.compile(rf"\A{re.escape(EXPORT_STAGING_PREFIX)}"), stat.S_ISDIR),
    Leftover(LEGACY_STAGING, stat.S_ISDIR),
)
"""What the writers of a model store leave: see :func:`remove_stale_leftovers`."""
EXTRACTION_LEFTOVERS = (Leftover(EXTRACTION_STAGING, stat.S_ISDIR),)
"""What an extraction into the ``.tar.gz`` extraction cache leaves (``_load_tarball``)."""
PRIVATE_EXTRACTION_LEFTOVERS = (Leftover(PRIVATE_EXTRACTION, stat.S_ISDIR),)
"""What a process killed outright leaves in ``$TMPDIR`` of a private extraction (``_load_tarball``
without a usable cache); its name carries the maker's pid and start time, so it stays while that
process lives."""


def remove_stale_leftovers(directory: Path, leftovers: Sequence[Leftover] = STORE_LEFTOVERS) -> None:
    """Remove what writers that died without cleaning up (SIGKILL, OOM) left in ``directory``.

    By default a model store's: staging directories (``STAGING_PREFIX``, ``LEGACY_STAGING`` of
    earlier releases, and the export's ``EXPORT_STAGING_PREFIX``; deploy stages under its own name
    and keeps it through a ``docker build`` of any length), ``latest``'s temporary links
    (``LATEST_SWAP``) and the reload marker's temporary files (``MARKER_TMP``). Each writer of the
    store runs this before it writes (a bundle write, an export, a marker write); a ``.tar.gz``
    load runs it on the extraction cache with ``EXTRACTION_LEFTOVERS``. Only this user's, and only
    those where nothing changed for ``STALE_STAGING_SECONDS``, anywhere in a directory's tree (an
    export downloads into a subdirectory, an extraction writes its bundle one level down): a
    writer still at work changes its directory or the file it is writing far more often than
    that, and a link or a marker's temporary file lives for a moment. A leftover whose name
    carries its maker's pid (a ``pid`` group: ``PRIVATE_EXTRACTION``) stays while that process
    lives, however old: a live service serves from it for days without touching it; with its
    maker's start time (a ``tag`` group, :func:`process_tag`), not once a process started at
    another time has that pid (a restarted container's).
    """
    cutoff = time.time() - STALE_STAGING_SECONDS
    try:
        names = os.listdir(directory)
    except OSError:  # gone, or unreadable: nothing of ours to remove there
        return
    for name in names:
        found = next(
            ((leftover, match) for leftover in leftovers if (match := leftover.name.match(name))), None
        )
        if found is None:
            continue
        kind, maker, tag = found[0].kind, found[1].groupdict().get("pid"), found[1].groupdict().get("tag")
        if maker is not None and tagged_process_alive(int(maker), tag):
            continue  # its maker runs (a process that took its pid since, started later, is not it)
        path = directory / name
        try:
            info = path.lstat()
            if not kind(info.st_mode) or info.st_uid != os.getuid():
                continue
            newest = _newest_change(path, info.st_mtime) if kind is stat.S_ISDIR else info.st_mtime
            if newest >= cutoff:
                continue
            log.warning("removing what a writer that never finished left: %s", path)
            if kind is stat.S_ISDIR:
                _remove_tree(path)
            else:
                path.unlink()
        except OSError:  # gone meanwhile (its writer renamed it into place), or unreadable
            continue


PROC = Path("/proc")
"""Where :func:`process_identity` reads a process's start time (Linux); absent on macOS."""


def process_identity(pid: int) -> str | None:
    """What tells process ``pid`` from a later process given the same pid: the host's boot id
    and the process's start time in clock ticks since boot (field 22 of ``/proc/<pid>/stat``),
    ``"<boot id>/<ticks>"``; None where ``/proc`` cannot tell (macOS, the process gone).

    A pid alone names a process only while it runs. In a container pids are small and
    deterministic: after a restart the new uwsgi master and workers get the pids of the old ones,
    which a record or a name holding a pid then took for alive. The boot id changes with a
    reboot, where the ticks start again."""
    try:
        fields = (PROC / str(pid) / "stat").read_bytes().rsplit(b")", 1)[1].split()
        boot = _boot_id()
    except (OSError, IndexError):
        return None
    if boot is None or len(fields) < 20:
        return None
    return f"{boot}/{int(fields[19])}"  # field 22; fields[0] is field 3 (after "pid (comm)")


def process_tag(pid: int) -> str | None:
    """:func:`process_identity`'s, short enough for a file name (12 hex digits of its SHA-256)."""
    identity = process_identity(pid)
    return None if identity is None else hashlib.sha256(identity.encode()).hexdigest()[:12]


@functools.cache
def _boot_id() -> str | None:
    try:
        return (PROC / "sys" / "kernel" / "random" / "boot_id").read_text().strip() or None
    except OSError:
        return None


def process_alive(pid: int, identity: str | None = None) -> bool:
    """Whether process ``pid`` exists (another user's too: it is not known to be gone) and, given
    the ``identity`` :func:`process_identity` gave when it was recorded, is still that process:
    a process that took its pid since (a container restarted) is not it. Without an identity, or
    where ``/proc`` cannot tell (macOS), the pid alone decides (without one, ``/proc`` is not read)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        pass
    return identity is None or same_process(identity, process_identity(pid))


def tagged_process_alive(pid: int, tag: str | None) -> bool:
    """:func:`process_alive` for a process known by its :func:`process_tag` (a file name's): it
    runs and, given a tag, is still the process that had it (``/proc`` is read only then)."""
    return process_alive(pid) and (tag is None or same_process(tag, process_tag(pid)))


def same_process(recorded: str | None, current: str | None) -> bool:
    """Whether the process recorded with identity ``recorded`` is the one of identity ``current``
    at that pid now (both :func:`process_identity`'s); when either is None, the equal pid decides."""
    return recorded is None or current is None or recorded == current


def _newest_change(directory: Path, mtime: float) -> float:
    """The latest mtime in a directory's tree (``mtime``: the directory's own); symlinks not followed."""
    newest = mtime
    for root, dirs, files in os.walk(directory, onerror=_raise):
        for name in (*dirs, *files):
            newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
    return newest


def _raise(error: OSError) -> None:
    """os.walk's ``onerror``: a tree that cannot be read whole is not known to be stale."""
    raise error


def file_digests(directory: Path) -> dict[str, str]:
    """SHA-256 of every file of a bundle but the manifest: a corrupt or truncated copy is detectable."""
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.iterdir())
        if path.is_file() and path.name != MANIFEST
    }


def verify_digests(directory: Path, manifest: dict[str, Any]) -> None:
    """Raise BundleError when a file listed in the manifest is missing or its bytes differ."""
    expected = manifest.get("files")
    if not isinstance(expected, dict):
        return  # bundles written before digests existed
    for name, digest in expected.items():
        path = directory / name
        if not path.is_file():
            raise BundleError(f"bundle {directory} is incomplete: {name} is missing")
        if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            raise BundleError(f"bundle {directory} is corrupt: {name} does not match its manifest SHA-256")


def point_latest(model_dir: Path | str, version: str) -> None:
    """Atomically and durably make ``model_dir/latest`` a symlink to ``version``.

    The bundle is synced first (written by a release that did not sync, or copied by deploy, its
    files may still be in the page cache only: a crash right after the swap left ``latest``
    naming empty files), then the store once ``latest`` names it.
    """
    model_dir = Path(model_dir)
    if not (model_dir / version / MANIFEST).is_file():
        raise BundleError(f"no bundle {version} in {model_dir}")
    sync_tree(model_dir / version)  # files on disk already: next to nothing to do
    tmp = model_dir / f"{LATEST_SWAP_PREFIX}{os.getpid()}-{time.monotonic_ns()}"
    os.symlink(version, tmp)
    os.replace(tmp, model_dir / LATEST)
    sync_directory(model_dir)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# --------------------------------------------------------------------------- loading


def resolve_bundle_dir(path: Path) -> Path:
    """A bundle dir as given, or the one ``latest`` names inside a model store."""
    if (path / MANIFEST).is_file():
        return path
    latest = path / LATEST
    if (latest / MANIFEST).is_file():
        return latest.resolve()
    if latest.is_symlink() and not latest.exists():
        # the bundle it names was removed (by hand, a copy that failed): not an archive to name
        raise BundleError(f"{latest} points at {latest.resolve()}, which does not exist")
    if latest.is_symlink() or latest.exists():
        # point_latest only ever names a bundle directory, and reloads, rollbacks and the
        # dashboard read the store's bundles as directories: an archive is served by its own path
        raise BundleError(
            f"{latest} points at {latest.resolve()}, which is not a bundle directory: a model "
            f"store's '{LATEST}' names one of its bundle directories (serve a .tar.gz by naming it "
            "in ML_MODEL_PATH)"
        )
    raise BundleError(
        f"{path} is neither a bundle (no {MANIFEST}) nor a model store with a '{LATEST}' bundle"
    )


def load_bundle(
    path: Path | str, catalogue_fallback: pd.DataFrame | None = None, *, unpickled: Any = None
) -> LoadedBundle:
    """Load and validate a bundle dir, model store, ``.tar.gz`` or seed-style ``model.pkl``.

    ``unpickled``: the object of the model file (of the archive's one ``model.pkl``), when the
    caller has unpickled it already (the accuracy test, deciding how to score it): used, not
    unpickled a second time. Ignored for a bundle."""
    path = Path(path)
    if not path.exists():
        raise BundleError(f"model path {path} does not exist")
    if is_archive(path):
        return _load_tarball(path, catalogue_fallback, unpickled)
    if path.is_file():
        return _load_pickle(path, catalogue_fallback, unpickled)
    return _load_dir(resolve_bundle_dir(path))


def is_archive(path: Path) -> bool:
    """Whether ``path`` is a ``.tar.gz`` model, any other file being a pickled one. A link (a
    store's ``latest``, say) is judged by what it points at: by its own name, a link to an
    archive was unpickled."""
    return path.is_file() and path.resolve().name.endswith((".tar.gz", ".tgz"))


def attach_rating_model(bundle: LoadedBundle) -> None:
    """Load and check the bundle's rating regressor (for /api/predict/*) before the bundle is served.

    ``rating_model.pkl`` when the bundle has one; else the served model itself when it serves
    records (a bundle whose manifest names ``model.pkl``). A broken rating model makes the whole
    bundle invalid: a reload refuses it and the old one stays. Bundles without any rating model
    still serve recommendations; /api/predict/* then answers 503. So do those whose served model
    predicts ratings but not from records (the seed's forest, and bundles written before
    ``serves_records`` named it ``model.pkl``): that was a 500 on every prediction, or, at load,
    the whole bundle refused.
    """
    if bundle.model is not None and bundle.model.serves_records:
        bundle.rating_model = bundle.model
        return
    if not bundle.path.is_dir():
        return
    candidate = bundle.path / RATING_MODEL_FILE
    if not candidate.is_file():
        declared = bundle.manifest.get("rating_model") or {}
        if declared.get("file") != "model.pkl" or bundle.model is not None:  # the served model, checked above
            return
        candidate = bundle.path / "model.pkl"
    model = unpickle_model(candidate)
    if candidate.name == "model.pkl" and isinstance(model, Recommender) and not model.serves_records:
        return  # the served ranker, named by a bundle written before ``serves_records`` existed
    if not isinstance(model, Recommender) or not model.serves_records:
        raise BundleError(f"{candidate} does not hold a rating model that can serve predictions")
    item_ids = np.asarray(getattr(model, "item_ids", []))
    if len(item_ids) == 0 or not np.isin(item_ids, bundle.movie_ids).all():
        raise BundleError(f"{candidate} was fitted on movies that are not in the bundle's catalogue")
    probe = {"age": 30, "gender": "M", "occupation": "other", "movie_id": int(item_ids[0])}
    try:
        predicted = model.predict_records([probe])
    except Exception as exc:
        raise BundleError(f"{candidate} cannot predict: {exc}") from exc
    if predicted.shape != (1,) or not np.isfinite(predicted).all():
        raise BundleError(f"{candidate} predicts {predicted!r} for a valid record")
    bundle.rating_model = model


def read_catalogue(path: Path) -> pd.DataFrame:
    """A ``catalogue.csv`` as :func:`write_bundle` wrote it: titles and genres exactly.

    pandas reads "NA", "None", "null", "N/A", "nan", "" and a dozen other words as missing by
    default: a movie with such a title came back NaN (and two of them made the titles "not
    unique"). Only the year may be missing; to_csv writes a missing one as an empty field.
    """
    return pd.read_csv(
        path, dtype={"title": str, "genres": str}, keep_default_na=False, na_values={"year": [""]}
    )


CATALOGUE_COLUMNS = ("movie_id", "title")
"""What serving reads of a catalogue (``year`` and ``genres`` are shown when present)."""


def read_manifest(bundle_dir: Path) -> dict[str, Any] | None:
    """A bundle's manifest, or None when it is missing, unreadable or not a JSON object."""
    try:
        manifest = json.loads((bundle_dir / MANIFEST).read_bytes())
    except (OSError, ValueError):  # UnicodeDecodeError is a ValueError
        return None
    return manifest if isinstance(manifest, dict) else None


def _load_dir(directory: Path) -> LoadedBundle:
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
        if not isinstance(manifest, dict):
            raise BundleError(f"bundle {directory} is invalid: {MANIFEST} is not a JSON object")
        verify_digests(directory, manifest)
        catalogue = read_catalogue(directory / "catalogue.csv")
        arrays = {
            name: np.load(directory / f"{name}.npy", allow_pickle=False)
            for name in ("segment_top", "segment_scores", "user_ids", "user_top", "user_scores")
        }
    except (OSError, ValueError, EOFError) as exc:
        raise BundleError(f"bundle {directory} is unreadable: {exc}") from exc
    tables = Tables(**arrays)
    _validate(manifest, catalogue, tables, directory)
    return LoadedBundle(
        version=str(manifest["version"]),
        manifest=manifest,
        catalogue=catalogue,
        tables=tables,
        path=directory,
    )


def _validate(manifest: dict[str, Any], catalogue: pd.DataFrame, tables: Tables, where: Path) -> None:
    missing = [column for column in CATALOGUE_COLUMNS if column not in catalogue.columns]
    if missing:
        raise BundleError(f"bundle {where} is invalid: the catalogue has no {', '.join(missing)} column")
    problems = _table_type_problems(tables)
    if problems:  # the checks below index the tables as 2-D integer positions
        raise BundleError(f"bundle {where} is invalid: " + "; ".join(problems))
    n_items = len(catalogue)
    if not pd.api.types.is_integer_dtype(catalogue["movie_id"]) or not catalogue["movie_id"].is_unique:
        problems.append("catalogue movie ids are not unique integers")
    for key, actual in (("n_items", n_items), ("n_known_users", len(tables.user_ids)),
                        ("table_depth", tables.segment_top.shape[1])):  # fmt: skip
        # written with the tables (write_bundle): tables of another catalogue (or cut) disagree
        if key in manifest and manifest[key] != actual:
            problems.append(f"manifest {key} {manifest[key]!r} does not match the bundle's {actual}")
    if len(np.unique(tables.user_ids)) != len(tables.user_ids):
        problems.append("user ids are not unique")
    for name, top, scores in (("segment", tables.segment_top, tables.segment_scores),
                              ("user", tables.user_top, tables.user_scores)):  # fmt: skip
        if top.shape == scores.shape and not np.isfinite(scores[top >= 0]).all():
            problems.append(f"{name} table has a listed movie without a finite score")
    if manifest.get("format") != FORMAT_VERSION:
        problems.append(f"unsupported format {manifest.get('format')!r}")
    if "version" not in manifest:
        problems.append("manifest has no version")
    elif not 0 < len(str(manifest["version"])) <= VERSION_MAX_LENGTH:
        # every row it serves records the version: a longer one is refused by the database,
        # so the bundle would serve lists whose ids could never be stored or scored
        problems.append(f"version is not 1 to {VERSION_MAX_LENGTH} characters")
    if not catalogue["title"].is_unique:
        problems.append("catalogue titles are not unique")
    if tables.segment_top.shape != tables.segment_scores.shape or tables.segment_top.shape[0] != len(
        segment_index()
    ):
        problems.append(f"segment table shape {tables.segment_top.shape} does not cover every segment")
    for name, top in (("segment", tables.segment_top), ("user", tables.user_top)):
        if top.size and (top.max() >= n_items or top.min() < -1):
            problems.append(f"{name} table points outside the catalogue")
    if len(tables.user_ids) != tables.user_top.shape[0] or tables.user_top.shape != tables.user_scores.shape:
        problems.append("user tables are inconsistent")
    for name, top in (("segment", tables.segment_top), ("user", tables.user_top)):
        for row in top:
            valid = row[row >= 0]
            if len(np.unique(valid)) != len(valid):
                problems.append(f"{name} table repeats a movie")
                break
    if problems:
        raise BundleError(f"bundle {where} is invalid: " + "; ".join(problems))


def _table_type_problems(tables: Tables) -> list[str]:
    """What makes the tables unservable as arrays: a request indexes the catalogue with a row of
    positions and answers its scores as JSON numbers (floats, text or 1-D rows were a 500 each)."""
    problems = []
    for name in ("segment_top", "user_top", "user_ids"):
        array = getattr(tables, name)
        if not np.issubdtype(array.dtype, np.integer):
            problems.append(f"{name} holds {array.dtype}, not integers")
    for name in ("segment_scores", "user_scores"):
        array = getattr(tables, name)
        if not np.issubdtype(array.dtype, np.floating):
            problems.append(f"{name} holds {array.dtype}, not floats")
    for name in ("segment_top", "segment_scores", "user_top", "user_scores"):
        if getattr(tables, name).ndim != 2:
            problems.append(f"{name} is not a 2-D table")
    if tables.user_ids.ndim != 1:
        problems.append("user_ids is not a list")
    return problems


def _load_tarball(path: Path, catalogue_fallback: pd.DataFrame | None, unpickled: Any = None) -> LoadedBundle:
    """Load an archived bundle from its extraction, made once per archive content and reused.

    A fresh temporary directory per load leaked a whole bundle (~17 MB for ml-100k) on every
    load: each uwsgi worker start, each recycle (``max-requests``) and each reload, so a
    service run from a ``.tar.gz`` filled /tmp over the days. The extraction is named by the
    archive's SHA-256 instead; one that no longer loads (a tmp cleaner removed files from it)
    is extracted again once.
    """
    # a private extraction (below) of a process killed outright, once that process is gone
    remove_stale_leftovers(Path(tempfile.gettempdir()), PRIVATE_EXTRACTION_LEFTOVERS)
    cache = _extraction_cache()
    if cache is None:  # no private cache directory to be had: a private directory per load
        # removed by its maker, at exit or once it is replaced; swept (above) only once its maker
        # is gone (a live service's bundle.path names it for days, untouched: age alone is no sign)
        target = _private_extraction()
        try:
            bundle = _load_extracted(path, _extract(path, target), catalogue_fallback, unpickled)
        except BundleError:
            _release(target)
            raise
        bundle.extracted_to = target
        return bundle
    # an extraction killed outright (SIGKILL, OOM, harakiri) left its staging, a whole bundle;
    # at every load, not only before an extraction: a worker restarted within the hour
    # extracts again while that leftover is still fresh, and then only finds it cached
    remove_stale_leftovers(cache, EXTRACTION_LEFTOVERS)
    with path.open("rb") as archive:  # in chunks: the archive whole in memory only to name it
        target = cache / hashlib.file_digest(archive, "sha256").hexdigest()[:32]
    if target.is_dir():
        try:
            return _load_extracted(path, target, catalogue_fallback, unpickled)
        except BundleError:
            _remove_tree(target)  # damaged since it was extracted: extracted again below
    staging = _extract(path, Path(tempfile.mkdtemp(prefix=EXTRACTION_STAGING_PREFIX, dir=cache)))
    # tarfile gives the directories their times from the archive, a "./" member this one too:
    # an old archive's fresh extraction then looked stale to another process's sweep until renamed
    os.utime(staging)
    try:
        staging.rename(target)  # whole or not at all; another process may have won the race
    except OSError:
        _remove_tree(staging)
    # a cached extraction stays even when refused: a model.pkl refused here for want of a
    # catalogue may be served from it by a process that has one
    return _load_extracted(path, target, catalogue_fallback, unpickled)


_PRIVATE_EXTRACTIONS: dict[Path, int] = {}
"""The private extraction directories made in this process or its parent: directory -> maker's pid.
No lock (a fork would copy one held): single dict operations are atomic."""


def _private_extraction() -> Path:
    """A new ``$TMPDIR/movierec-bundle-<pid>-<tag>-*``, removed when the process making it exits
    gracefully (or, killed outright, by a later load once it is gone: ``PRIVATE_EXTRACTION_LEFTOVERS``;
    the tag, its start time, tells it from a process given its pid later).

    Every load made one and nothing removed it: each uwsgi worker start, recycle and reload left
    a whole bundle in ``$TMPDIR``. Only its maker removes it: a child forked after the load (uwsgi
    without ``lazy-apps``) inherits the exit callback, and its siblings serve the same bundle.
    """
    tag = process_tag(os.getpid())  # a process given this pid later is not its maker
    maker = f"{os.getpid()}-{tag}-" if tag else f"{os.getpid()}-"
    directory = Path(tempfile.mkdtemp(prefix=f"{PRIVATE_EXTRACTION_PREFIX}{maker}"))
    _PRIVATE_EXTRACTIONS[directory] = os.getpid()
    at_exit(remove_private_extractions)
    return directory


def release_extraction(bundle: LoadedBundle) -> None:
    """Remove the private directory ``bundle`` was extracted into, if this process made it.

    For a bundle no longer served (replaced by a reload). Safe while requests still hold it: a
    loaded bundle serves from memory, nothing reads files from ``bundle.path`` after loading.
    """
    if bundle.extracted_to is not None:
        _release(bundle.extracted_to)


def _release(directory: Path) -> None:
    if _PRIVATE_EXTRACTIONS.get(directory) == os.getpid():
        _PRIVATE_EXTRACTIONS.pop(directory, None)
        _remove_tree(directory)


def remove_private_extractions() -> None:
    """Remove the private extraction directories this process made (an exit callback)."""
    for directory in list(_PRIVATE_EXTRACTIONS):
        _release(directory)


def _extraction_cache() -> Path | None:
    """``<tmp>/movierec-bundles-<uid>``, this user's only (0700), or None when it is not.

    Extractions hold pickles that are loaded without a digest check, so a directory another
    user created or can write to is never used.
    """
    root = Path(tempfile.gettempdir()) / f"movierec-bundles-{os.getuid()}"
    try:
        root.mkdir(mode=0o700, exist_ok=True)
        info = root.lstat()
    except OSError:
        return None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        return None
    return root


def _files_only(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
    """tarfile's "data" filter, with every member that is not a file or a directory left out.

    A bundle is plain files. Links are how the "data" filter itself is got round where Python
    lacks the fix for CVE-2025-4517 (< 3.11.13 / 3.12.11): a symlink chain longer than PATH_MAX
    stops ``os.path.realpath``, the filter judges the rest of the path lexically, and the
    kernel follows it out of the extraction (an archive wrote files anywhere the service could).
    """
    if not (member.isfile() or member.isdir()):
        return None
    return tarfile.data_filter(member, path)


def archive_members(archive: tarfile.TarFile, path: Path) -> list[tarfile.TarInfo]:
    """The members of ``archive`` (read from ``path``), from their headers alone.

    BundleError, before anything is extracted or read, when it holds more than
    :data:`MAX_ARCHIVE_MEMBERS` members or regular files of more than :data:`MAX_ARCHIVE_BYTES`
    unpacked in all: a damaged or hostile archive. Reading stops at the first member over a bound.
    """
    members: list[tarfile.TarInfo] = []
    total = 0
    for member in archive:
        members.append(member)
        if len(members) > MAX_ARCHIVE_MEMBERS:
            raise BundleError(
                f"{path} holds more than {MAX_ARCHIVE_MEMBERS} members, more than a model archive "
                "is extracted with (damaged or hostile?)"
            )
        total += member.size if member.isfile() else 0
        if total > MAX_ARCHIVE_BYTES:
            raise BundleError(
                f"{path}: its files are at least {total} bytes unpacked, more than the "
                f"{MAX_ARCHIVE_BYTES} bytes a model archive is extracted up to (damaged or hostile?)"
            )
    return members


def _extract_files_only(archive: tarfile.TarFile, members: list[tarfile.TarInfo], target: Path) -> None:
    """What :func:`_files_only` extracts, where tarfile has no extraction filters (Python before
    3.11.4: Debian bookworm's python3 is 3.11.2). Only files and directories are created, so no
    link inside ``target`` can lead a later member out of it; a member whose name leaves
    ``target`` (absolute, or through ``..``) fails the whole extraction."""
    for member in members:
        if not (member.isfile() or member.isdir()):
            continue
        name = PurePosixPath(member.name)
        if name.is_absolute() or ".." in name.parts:
            raise tarfile.TarError(f"member {member.name!r} would be extracted outside its directory")
        dest = target.joinpath(*name.parts)
        if member.isdir():
            dest.mkdir(parents=True, exist_ok=True)
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        source = archive.extractfile(member)
        if source is None:  # pragma: no cover - a regular file always has a body
            continue
        with source, dest.open("wb") as out:
            shutil.copyfileobj(source, out)


def _extract(path: Path, target: Path) -> Path:
    try:
        with tarfile.open(path, "r:gz") as archive:
            members = archive_members(archive, path)
            if hasattr(tarfile, "data_filter"):
                # files and directories only, then tarfile's data filter (_files_only)
                archive.extractall(target, members, filter=_files_only)  # noqa: S202  # nosec B202
            else:  # extractall(filter=...) is a TypeError there
                _extract_files_only(archive, members, target)
    except BundleError:
        _remove_tree(target)
        raise
    except (tarfile.TarError, OSError, EOFError) as exc:
        _remove_tree(target)
        raise BundleError(f"{path} is not a readable .tar.gz: {exc}") from exc
    return target


def _load_extracted(
    path: Path, target: Path, catalogue_fallback: pd.DataFrame | None, unpickled: Any = None
) -> LoadedBundle:
    """The bundle or model.pkl extracted from archive ``path`` into ``target``; a refusal names
    the file as inside the archive: the extraction's path ('/tmp/movierec-bundles-0/<sha>/model.pkl
    needs a catalogue.csv beside it') named a cache directory nobody gave, and put nothing in."""
    try:
        manifests = list(target.rglob(MANIFEST))
        if len(manifests) == 1:
            return _load_dir(manifests[0].parent)
        pickles = list(target.rglob("model.pkl"))
        if len(pickles) == 1:
            return _load_pickle(pickles[0], catalogue_fallback, unpickled)
    except BundleError as exc:
        raise BundleError(str(exc).replace(str(target), str(path))) from exc
    raise BundleError(f"{path} must hold exactly one bundle or one model.pkl")


def _remove_tree(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)


def unpickle_model(path: Path) -> Any:
    """A model file's object; BundleError saying why it cannot be unpickled (an EOFError, an empty
    or cut-short file, has no text: the error said nothing after "unpickled:")."""
    try:
        return joblib.load(path)  # nosec B301 - model files come from our own training
    except EOFError as exc:
        raise BundleError(f"{path} could not be unpickled: it is empty or cut short (EOFError)") from exc
    except (pickle.UnpicklingError, KeyError) as exc:  # a byte that is no pickle opcode: KeyError(its value)
        raise BundleError(
            f"{path} could not be unpickled: it is not a pickle file (a model.pkl), or a damaged one "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    except Exception as exc:
        raise BundleError(f"{path} could not be unpickled: {exc or type(exc).__name__}") from exc


def _load_pickle(path: Path, catalogue_fallback: pd.DataFrame | None, unpickled: Any = None) -> LoadedBundle:
    """A seed-style single-file model: a pickled movierec ``Recommender``, or the seed's own
    scikit-learn regressor (:func:`_wrap_seed_estimator`).

    The movies come from a ``catalogue.csv`` beside the file, else from the data set
    (``catalogue_fallback``): their titles, and for the seed's regressor the movies it ranks
    (until 2026-12-06 it ranked the data set's alone, and without a data set was refused
    whatever lay beside it). ``unpickled``: the file's object, when the caller has it already.
    """
    model = unpickle_model(path) if unpickled is None else unpickled
    sidecar = path.parent / "catalogue.csv"
    if sidecar.is_file():
        try:
            catalogue: pd.DataFrame | None = read_catalogue(sidecar)
        except (OSError, ValueError) as exc:
            raise BundleError(f"{sidecar} is unreadable: {exc}") from exc
    else:
        catalogue = catalogue_fallback
    if not isinstance(model, Recommender):
        model = _wrap_seed_estimator(model, catalogue, path)
    if catalogue is None:
        raise BundleError(f"{path} needs a catalogue.csv beside it (or the data set) for movie titles")
    missing = np.setdiff1d(model.item_ids, catalogue["movie_id"].to_numpy())
    if len(missing):
        raise BundleError(f"{path} ranks {len(missing)} movies its catalogue lacks, e.g. {int(missing[0])}")
    catalogue = catalogue.set_index("movie_id").loc[model.item_ids].reset_index()
    tables = build_tables(model)
    if model.supports_users and not model.keeps_ratings:
        log.warning(
            "%s: a %s model keeps no training ratings, so known users get no personal lists from a "
            "lone model.pkl (they would hold movies already rated); serve its bundle directory",
            path, model.name,
        )  # fmt: skip
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:8]
    manifest: dict[str, Any] = {"format": FORMAT_VERSION, "version": f"pkl-{digest}",
                "served_model": model.name, "source": "model.pkl"}  # fmt: skip
    _validate(manifest, catalogue, tables, path)
    return LoadedBundle(manifest["version"], manifest, catalogue, tables, path, model=model)


def _wrap_seed_estimator(estimator: Any, catalogue: pd.DataFrame | None, path: Path) -> Recommender:
    """The seed's own model.pkl: a scikit-learn regressor over (age, gender, occupation, movie id)."""
    if getattr(estimator, "n_features_in_", None) != 4 or not hasattr(estimator, "predict"):
        raise BundleError(
            f"{path} holds a {type(estimator).__name__}, neither a movierec model nor a seed-style "
            "regressor over (age, gender, occupation, movie id)"
        )
    if catalogue is None:
        raise BundleError(
            f"{path} is a seed-style regressor; a catalogue.csv beside it (or the data set) is needed "
            "to serve it"
        )
    from app.recommender.models.forest import SeedRandomForest

    wrapped = SeedRandomForest()
    wrapped.model_ = estimator
    wrapped._set_catalogue(catalogue)
    return wrapped


def segment_profiles(records: Sequence[dict[str, Any]]) -> list[Segment]:
    """Segments of seed-format profile records ({"age", "gender", "occupation"})."""
    return [Segment.of(int(r["age"]), str(r["gender"]), str(r["occupation"])) for r in records]
