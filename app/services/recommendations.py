"""Recommendations and feedback: the service behind /api/recommend and /api/recommend/score.

A recommendation is a lookup in the loaded bundle's precomputed tables (no model scoring,
no pandas); what was served is logged through the write-behind :class:`RequestLog`, so the
database is off the request path. Scores are synced to the feedback journal before the 200
and reach the database behind it (app/services/feedback_journal.py, API.md "Durability").
"""

from __future__ import annotations

import copy
import logging
import secrets
import threading
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, TypeVar

from app.errors import InvalidRequest, NotFound, Unavailable
from app.monitoring.logs import LogEvery
from app.monitoring.quality import predict_scores
from app.recommender.bundle import LoadedBundle, Recommendation, RecommendQuery
from app.recommender.segments import Segment
from app.services.feedback_journal import FeedbackJournal
from app.services.models import ModelHolder
from app.services.request_ids import RequestIds
from app.services.request_log import RequestLog
from app.storage.db import REQUEST_INPUTS, Database, DatabaseUnavailableError, FeedbackRecord, StoredRequest

log = logging.getLogger(__name__)

_Row = TypeVar("_Row")

LOGGED_FIELDS = (
    "id",
    "age",
    "gender",
    "occupation",
    "user_id",
    "max_recs",
    "model_version",
    "strategy",
    "items",
)
"""What the request log keeps of a served recommendation (:meth:`RecommendationService.log_row`)."""


@dataclass(frozen=True)
class Served:
    id: str
    items: list[Recommendation]
    model_version: str
    strategy: str

    def body(self) -> dict[str, Any]:
        return {
            "recommendations": [item.title for item in self.items],
            "id": self.id,
            "items": [item.payload for item in self.items],
            "model_version": self.model_version,
            "strategy": self.strategy,
        }


@dataclass(frozen=True)
class ScoreTarget:
    """A stored recommendation as a score needs it: its movies by title, version and inputs.

    ``movies`` is keyed by each title in Unicode normalization form C (:func:`title_key`), and
    ``titles`` gives each movie's title as served. ``predicted`` holds the serving bundle's
    predicted rating of every movie of the list, filled by the first score (one vectorised call
    for the list instead of one per score). ``folded`` indexes the titles without case, built
    the first time a title misses ``movies``.
    """

    movies: dict[str, int]
    model_version: str
    inputs: dict[str, Any]
    predicted: dict[int, float | None] = field(default_factory=dict, compare=False)
    titles: dict[int, str] = field(default_factory=dict, compare=False)

    @classmethod
    def of(cls, items: list[dict[str, Any]], model_version: str, inputs: dict[str, Any]) -> ScoreTarget:
        titles = {int(item["movie_id"]): item["title"] for item in items}
        movies = {title_key(title): movie_id for movie_id, title in titles.items()}
        return cls(movies, model_version, inputs, titles=titles)

    def movie(self, title: str) -> tuple[int, str] | None:
        """The id and served title of the movie ``title`` names, or None.

        ``title`` names a movie in any normalization form, and in any case when it matches that
        movie's title alone without case ("toy story (1995)" for "Toy Story (1995)"); matching
        several titles so (two served titles differing only in case), it names none: a 400 that
        says so. The exact title is one dict lookup, as before: nothing is folded then.
        """
        movie_id = self.movies.get(title_key(title))
        if movie_id is None:
            matches = self.folded.get(folded_title(title), ())
            if len(matches) > 1:
                raise InvalidRequest(
                    "movie matches more than one title recommended under this id when case is ignored ("
                    + ", ".join(self.titles[m] for m in matches)
                    + "): send the title as served",
                    fields={"movie": "must be a movie title recommended under that id"},
                )
            movie_id = matches[0] if matches else None
        return None if movie_id is None else (movie_id, self.titles.get(movie_id, title))

    @cached_property
    def folded(self) -> dict[str, tuple[int, ...]]:
        """The list's movie ids by title without case (:func:`folded_title`), built whole on first use."""
        folded: dict[str, tuple[int, ...]] = {}
        for movie_id, title in self.titles.items():
            key = folded_title(title)
            folded[key] = (*folded.get(key, ()), movie_id)
        return folded


def title_key(title: str) -> str:
    """``title`` as a score looks it up: Unicode NFC. ml-100k's accented titles are served
    precomposed ("Misérables"); a client may send the same text decomposed (NFD, "e" + U+0301),
    and that is the title that was recommended, not another one."""
    return title if title.isascii() else unicodedata.normalize("NFC", title)


def folded_title(title: str) -> str:
    """``title`` as a score matches it without case: Unicode's canonical caseless match (NFD, case
    folding, NFD: "STRASSE" is "Straße", "MISÉRABLES" in either form is "Misérables"); ASCII is
    lowered, which is its case folding."""
    if title.isascii():
        return title.lower()
    return unicodedata.normalize("NFD", unicodedata.normalize("NFD", title).casefold())


class ScoreTargets:
    """The most recently scored recommendations of this worker, by id (bounded, thread-safe).

    A stored recommendation never changes, so a worker keeps the few thousand it was last
    asked about: the second and later scores of one list (the usual case: a user rates
    several of the movies shown) skip the database read. Scores of a list this worker has not
    seen yet that arrive together share one load (:meth:`resolve`).
    """

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._entries: OrderedDict[str, ScoreTarget] = OrderedDict()
        self._loading: dict[str, _Load] = {}
        self._lock = threading.Lock()

    def resolve(self, request_id: str, load: Callable[[], ScoreTarget]) -> ScoreTarget:
        """The remembered target of ``request_id``, else what ``load()`` returns, remembered.

        Concurrent callers for the same id share one call of ``load`` (its result, or its
        error): the scores of a new list come in together, and each would otherwise read the
        database and predict the whole list again.
        """
        with self._lock:
            target = self._entries.get(request_id)
            if target is not None:
                self._entries.move_to_end(request_id)
                return target
            pending = self._loading.get(request_id)
            if pending is None:
                pending = self._loading[request_id] = _Load()
                leader = True
            else:
                leader = False
        if not leader:
            pending.done.wait()
            if pending.error is not None:  # a copy each: one object raised in several threads
                raise copy.copy(pending.error) from pending.error  # would mix their tracebacks
            assert pending.target is not None
            return pending.target
        try:
            pending.target = load()
        except BaseException as exc:
            pending.error = exc
            raise
        finally:
            with self._lock:
                if pending.target is not None:
                    self._entries[request_id] = pending.target
                    while len(self._entries) > self.size:
                        self._entries.popitem(last=False)  # the least recently used
                del self._loading[request_id]
            pending.done.set()
        return pending.target


class _Load:
    """One load of a score target in progress; the callers waiting on it read its outcome."""

    __slots__ = ("done", "error", "target")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.target: ScoreTarget | None = None
        self.error: BaseException | None = None


def _unknown_id() -> InvalidRequest:
    return InvalidRequest(
        "id was not issued by this service",
        fields={"id": "must be a recommendation id issued by this service"},
    )


class RecommendationService:
    def __init__(
        self,
        models: ModelHolder,
        db: Database,
        journal: FeedbackJournal,
        id_secret: bytes | None = None,
        request_log: RequestLog | None = None,
        pending_wait: float = 5.0,
    ) -> None:
        self.models = models
        self.db = db
        # Without a shared secret (tests, a single debug process) ids are still signed, with a
        # per-process key; every uwsgi worker gets the same key from MOVIEREC_JWT_SECRET.
        self.ids = RequestIds(id_secret or secrets.token_bytes(32))
        self.request_log = request_log or RequestLog(db)
        self.pending_wait = pending_wait  # how long a score or a list's page waits for another worker's row
        self.targets = ScoreTargets()
        self.feedback = journal  # scores: durable here before the 200, shipped to the database behind it
        self._unreadable = LogEvery(30.0)  # scores kept during an outage: not one line per score
        # Set by app/monitoring/online.py: the circuit breaker's router (champion, probe or
        # fallback) and the feedback counter of the online monitor.
        self.guard: Any = None
        self.on_feedback: Any = None

    def recommend(self, query: RecommendQuery) -> Served:
        """Look the answer up in the loaded bundle and record what was served under a new id.

        ``query.exclude``: movies not to recommend beyond those the bundle already leaves out
        (what a user rated, from their features); the list may then be shorter than ``max_recs``.
        """
        served = self.answer(self.models.require(), query)
        self.request_log.append([self.log_row(served, query)])
        return served

    def answer(self, bundle: LoadedBundle, query: RecommendQuery, counted: bool = True) -> Served:
        """What ``bundle`` serves for one request, through the circuit breaker when there is one.

        Not logged yet: :meth:`recommend` logs its one row, a batch logs its rows in one go.
        ``counted=False`` for an answer nobody receives (HEAD): no breaker probe, call record
        or recommendation metric.
        """
        if self.guard is not None:
            return self.guard.answer(self, bundle, query, counted)
        return self.lookup(bundle, query)

    def lookup(self, bundle: LoadedBundle, query: RecommendQuery) -> Served:
        """The champion's answer under a fresh id: a lookup in the bundle's tables, no breaker."""
        items, strategy = self._lookup(bundle, query)
        return Served(self.ids.issue(), items, bundle.version, strategy)

    @staticmethod
    def log_row(served: Served, query: RecommendQuery) -> dict[str, Any]:
        """The row the request log stores for one served recommendation (its keys: ``LOGGED_FIELDS``).

        Its ``created_at`` is the time it was served, read here, on the request thread: a plain
        ``time.time()`` (the cheapest clock read), made a datetime when the row is written
        (:meth:`Database.save_requests`), which may be hours later after an outage.
        """
        return {
            "id": served.id,
            "created_at": time.time(),
            "age": query.age,
            "gender": query.gender,
            "occupation": query.occupation,
            "user_id": query.user_id,
            "max_recs": query.max_recs,
            "model_version": served.model_version,
            "strategy": served.strategy,
            "items": [item.payload for item in served.items],
        }

    @staticmethod
    def _lookup(bundle: LoadedBundle, query: RecommendQuery) -> tuple[list[Recommendation], str]:
        max_recs, age, gender, occupation, user_id, exclude = query
        if user_id is not None:
            if bundle.knows_user(user_id):
                return bundle.recommend_user(user_id, max_recs, exclude), "personal"
            if age is None or gender is None or occupation is None:
                raise NotFound(f"user {user_id} is not known to model {bundle.version}")
        assert age is not None and gender is not None and occupation is not None
        return bundle.recommend_segment(Segment.of(age, gender, occupation), max_recs, exclude), "segment"

    def score(self, request_id: str, movie: str, score: float, *, readable: bool = False) -> None:
        """Store a user's score for a movie recommended under ``request_id``; durable on return.

        ``readable``: also have this worker's scores committed to the database before returning
        (a page that reads them back); with the database down they wait in the journal.
        """
        target = self._target(request_id)
        found = target.movie(movie)
        if found is None:
            raise InvalidRequest(
                "movie was not recommended under this id",
                fields={"movie": "must be a movie title recommended under that id"},
            )
        movie_id, movie = found  # stored as it was served, whatever normalization form it came in
        self.feedback.save(
            FeedbackRecord(
                request_id=request_id,
                movie_id=movie_id,
                title=movie,
                score=score,
                predicted_score=self._predicted(target, movie_id),
                model_version=target.model_version,
            )
        )
        if self.on_feedback is not None:
            self.on_feedback(score)
        if readable:
            try:
                self.feedback.drain()
            except DatabaseUnavailableError:
                self._unreadable.log(
                    log,
                    logging.WARNING,
                    "a score is durable but not yet readable: the database is unreachable",
                )

    def _predicted(self, target: ScoreTarget, movie_id: int) -> float | None:
        """The serving bundle's predicted rating (online RMSE), only when that bundle served the list."""
        bundle = self.models.bundle
        if bundle is None or bundle.version != target.model_version:
            return None
        if movie_id not in target.predicted:  # the serving bundle changed since the list was loaded
            self._predict_list(target)
        return target.predicted.get(movie_id)

    def _target(self, request_id: str) -> ScoreTarget:
        """What was served under ``request_id``, with its row committed (the feedback references it)."""
        return self.targets.resolve(request_id, lambda: self._load_target(request_id))

    def _load_target(self, request_id: str) -> ScoreTarget:
        """Find the request of a score not remembered here, and predict its list once.

        In the database → done. Buffered here → committed now. Signed by us but nowhere yet →
        another worker has it pending: wait for its flush (bounded), never refuse it. Else 400.
        """
        if not self.ids.well_formed(request_id):
            raise _unknown_id()
        pending = self.request_log.get(request_id)
        if pending is not None:
            self.request_log.persist(request_id)
            inputs = {key: pending.get(key) for key in REQUEST_INPUTS}
            return self._prepared(StoredRequest(pending["items"], pending["model_version"], inputs))
        stored = self._stored(request_id, self.db.served_request)
        if stored is None:
            raise _unknown_id()
        return self._prepared(stored)

    def served_list(self, request_id: str) -> dict[str, Any] | None:
        """What was served under ``request_id``, as :meth:`log_row` logged it; None when never issued.

        For a page that shows a list again by its id (the web UI's): buffered here → that row,
        nothing read; else the stored row, waiting for one another worker still has pending as a
        score does (:meth:`_stored`).
        """
        if not self.ids.well_formed(request_id):
            return None  # never issued; and PostgreSQL refuses a NUL in a text parameter (a 500)
        pending = self.request_log.get(request_id)
        if pending is not None:
            return pending
        return self._stored(request_id, self._logged_row)

    def _logged_row(self, request_id: str) -> dict[str, Any] | None:
        row = self.db.get_request(request_id)
        return None if row is None else {name: getattr(row, name) for name in LOGGED_FIELDS}

    def _stored(self, request_id: str, read: Callable[[str], _Row | None]) -> _Row | None:
        """``read(request_id)``, waiting (bounded) for a row another worker has pending.

        Stored → it. Signed by us but nowhere yet → another worker has it pending: read again
        until its flush (``pending_wait``), never refuse it. Not signed by us → None at once,
        so a forged id ties no thread up.
        """
        stored = read(request_id)
        if stored is not None or not self.ids.verify(request_id):
            return stored
        deadline = time.monotonic() + self.pending_wait
        delay = 0.005
        while time.monotonic() < deadline:
            time.sleep(delay)
            delay = min(0.1, delay * 2)
            stored = read(request_id)
            if stored is not None:
                return stored
        # Issued by a worker whose log has not reached the database (it may be down or the
        # worker gone): retryable, not "never issued".
        raise Unavailable(
            "the recommendation behind this id is not stored yet; retry shortly", headers={"Retry-After": "1"}
        )

    def _prepared(self, stored: StoredRequest) -> ScoreTarget:
        """The score target of a stored request, with the list's predicted ratings filled in."""
        target = ScoreTarget.of(stored.items, stored.model_version, stored.inputs)
        self._predict_list(target)
        return target

    def _predict_list(self, target: ScoreTarget) -> None:
        """Predict every movie of the list with the serving bundle, when that bundle served it."""
        bundle = self.models.bundle
        if bundle is None or bundle.version != target.model_version:
            return
        movie_ids = list(target.movies.values())
        target.predicted.update(zip(movie_ids, predict_scores(bundle, target.inputs, movie_ids), strict=True))
