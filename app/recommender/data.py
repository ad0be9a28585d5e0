"""MovieLens ml-100k: fetching, loading and the movie catalogue.

Two on-disk layouts are understood:

* GroupLens (``u.data``, ``u.item``, ``u.user``; tab / pipe separated, latin-1), the
  canonical distribution;
* the registry-package layout shipped inside the ``recbole==1.2.1`` wheel
  (``ml-100k.inter``, ``ml-100k.item``, ``ml-100k.user``; tab separated with typed headers
  such as ``user_id:token``), which is how the data reaches machines that only see PyPI.

Whatever the layout, :func:`load_movielens` returns the same three frames. The catalogue
merges the 18 "twin" movies ml-100k lists twice under one title and year, so a title
identifies exactly one movie everywhere (API contract, feedback, evaluation).

The data is never committed (its licence forbids redistribution): ``fetch`` caches it under
the data root, which is git-ignored.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import errno
import hashlib
import io
import logging
import os
import re
import shutil
import stat
import subprocess  # nosec B404 - argument lists only, never a shell
import sys
import tempfile
import time
import urllib.request
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np
import pandas as pd

from app.recommender.segments import GENDERS, MAX_AGE, MIN_AGE, OCCUPATIONS

log = logging.getLogger(__name__)

GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
RECBOLE_REQUIREMENT = "recbole==1.2.1"
RECBOLE_MEMBER_PREFIX = "recbole/dataset_example/ml-100k/"
CACHE_SUBDIR = "ml-100k"
STAGING_PREFIX = ".ml-100k-"
"""``fetch``'s staging directories, beside the cache in the data root: ``.ml-100k-<random>``
(``tempfile.mkdtemp``: 8 of ``[a-z0-9_]``), and ``.ml-100k-<random>.old`` for a partial cache
being replaced. A fetch killed outright leaves one; no load looks at it, and a later fetch removes
it once stale (app.recommender.bundle.remove_stale_leftovers). The ``pypi`` source downloads into
its staging directory too, so a fetch killed during ``pip download`` leaves nothing elsewhere."""
_STAGING = re.compile(rf"\A{re.escape(STAGING_PREFIX)}[a-z0-9_]{{8}}(?:\.old)?\Z")

GENRES: tuple[str, ...] = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip

RATING_COLUMNS = ["user_id", "movie_id", "rating", "timestamp"]
USER_COLUMNS = ["user_id", "age", "gender", "occupation", "zip_code"]
ITEM_COLUMNS = ["movie_id", "title", "year", "genres"]
MAX_ID = 2**31 - 1  # user and movie ids: the database's integer columns (and the API's path ids)
FEEDBACK_USER_BASE = 1_000_000
"""User ids above it are synthetic feedback users, one per scored anonymous request or per
user id the raw data lacks (app/pipeline/ingest.py, numbered from ``FEEDBACK_USER_BASE + 1``):
they train the models, but no caller is one of them. Raw user ids are 1..FEEDBACK_USER_BASE
(the loader refuses the others). Compare with :func:`is_feedback_user`, nowhere by hand: the
boundary was ``>=`` in some places and ``>`` in others, so raw user 1,000,000 was refused by
ingest and trained as a MovieLens user by ``movierec train``."""
MAX_TITLE_LENGTH = 255
"""A catalogue title's characters at most: what /api/recommend/score takes as ``movie`` and the
feedback table's ``title`` column holds. A longer title was recommended but could not be scored."""
MIN_RATING, MAX_RATING = 0.5, 5.0  # the scale of the service's scores (half stars allowed)
FUTURE_SLACK_SECONDS = 86_400  # clock skew between the machine that rated and this one


@overload
def is_feedback_user(user_id: int | np.integer) -> bool: ...
@overload
def is_feedback_user(user_id: np.ndarray | pd.Series) -> np.ndarray: ...
def is_feedback_user(user_id: int | np.integer | np.ndarray | pd.Series) -> bool | np.ndarray:
    """Whether a user id (or, element-wise, an array of them) is a synthetic feedback user's:
    above :data:`FEEDBACK_USER_BASE`. The one definition of the range (NaN is not in it)."""
    if isinstance(user_id, int | np.integer):
        return bool(user_id > FEEDBACK_USER_BASE)
    return np.asarray(user_id) > FEEDBACK_USER_BASE


class DataUnavailableError(RuntimeError):
    """No source could provide ml-100k; the message lists every attempt and why it failed.

    ``public`` is the reason without the server's paths, for an API answer (the features API's
    503); it is the message itself unless the raise gives one.
    """

    def __init__(self, message: str, *, public: str | None = None) -> None:
        super().__init__(message)
        self.public = message if public is None else public


class DataFormatError(DataUnavailableError):
    """A data file is readable but its content is not ml-100k: the message names file, field, rows.

    A subclass of :class:`DataUnavailableError` because to every caller it means the same thing
    (no usable data set), and ``fetch`` then refuses to cache such a source.
    """


class NotObtainedError(DataUnavailableError):
    """ml-100k could not be obtained: :func:`fetch`'s sources failed to provide the files (PyPI or
    GroupLens unreachable, a path that is no copy of it), and none was refused for what it holds.

    Data that was refused (a data root's or a source's files: part of a layout, a malformed file)
    is a plain :class:`DataUnavailableError`: a copy of ml-100k helps the first case, not the
    second (``movierec data fetch`` exits 3 for this one, 1 for the others).
    """


@dataclass(frozen=True)
class MovieLens:
    """The three tables every model and feature step consumes.

    ``ratings``: user_id, movie_id, rating (float), timestamp (int) — twins merged.
    ``users``: user_id, age, gender, occupation, zip_code.
    ``items``: movie_id, title (unique display title ``Title (year)``), year (Int64),
    genres (``|``-joined genre names) — one row per catalogue movie, sorted by id.
    """

    ratings: pd.DataFrame
    users: pd.DataFrame
    items: pd.DataFrame

    def fingerprint(self) -> str:
        """A stable hash of the content, recorded in bundles and used to skip unchanged runs."""
        digest = hashlib.sha256()
        for frame in (self.ratings, self.users, self.items):
            digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
        return digest.hexdigest()[:16]


# --------------------------------------------------------------------------- layouts


LAYOUTS = {
    "grouplens": ("u.data", "u.item", "u.user"),
    "recbole": ("ml-100k.inter", "ml-100k.item", "ml-100k.user"),
}


def _not_a_file(path: Path) -> str | None:
    """Why ``path`` (a name that is there) is not a regular file to read, or None when it is one."""
    try:
        mode = path.stat().st_mode  # through a symlink
    except FileNotFoundError:
        return "a dangling symlink" if path.is_symlink() else "missing"
    except OSError as exc:
        return exc.strerror or str(exc)
    if stat.S_ISREG(mode):
        return None
    return "a directory" if stat.S_ISDIR(mode) else "not a regular file"


LAYOUT_LABELS = {"grouplens": "GroupLens", "recbole": "registry-package"}


def detect_layout(directory: Path, *, cache: bool = False) -> str | None:
    """Return ``"grouplens"``, ``"recbole"`` or ``None`` for a directory.

    A layout is there when each of its three names is: one of them that is not a regular file (a
    directory named ``u.data``, a dangling symlink) is a :class:`DataUnavailableError` naming it.
    It was taken for "no data set", and ``data fetch``, ``train`` and ``features build`` went off
    to download ml-100k, to end in a misleading "could not obtain ml-100k".

    A directory holding some of a layout's names but not all (and no complete layout) is a
    :class:`DataUnavailableError` naming it, the names found and those missing: a data root with
    ``u.data`` and ``u.user`` but ``u.item`` missing or misnamed was "no data set", and the public
    ml-100k was fetched (or its cache reused) and trained on in place of the user's own files.
    Other names (``u.genre``, the ``ml-100k`` cache directory, a features store) are not looked at.
    ``cache``: the directory is ``fetch``'s own ``ml-100k`` cache (or its staging), where a partial
    layout (an earlier release's interrupted copy) is none: it is fetched again whole.
    """
    partial: list[str] = []
    for layout, names in LAYOUTS.items():
        paths = [directory / name for name in names]
        present = [os.path.lexists(path) for path in paths]
        if not all(present):
            if any(present):
                found = ", ".join(name for name, there in zip(names, present, strict=True) if there)
                missing = ", ".join(name for name, there in zip(names, present, strict=True) if not there)
                partial.append(f"{LAYOUT_LABELS[layout]} files: found {found}; missing {missing}")
            continue
        for path in paths:
            reason = _not_a_file(path)
            if reason is not None:
                raise DataUnavailableError(
                    f"{path}: not a readable file ({reason})",
                    public=f"{path.name}: not a readable file ({reason})",
                )
        return layout
    if partial and not cache:
        holds = "; and part of the ".join(partial)
        raise DataUnavailableError(  # what it lacks, nothing more: the data root's, or a --source's
            f"{directory} holds part of the {holds}",
            public=f"the data directory holds part of the {holds}",
        )
    return None


def _is_number(text: str) -> bool:
    try:
        float(text.strip())
    except ValueError:
        return False
    return True


def _header_rows(text: str, sep: str) -> int:
    """1 when ``text`` starts with a header line (no field of it is a number), else 0.

    The GroupLens files have none, but a copy re-exported by pandas or a spreadsheet often has
    one (the column names); read as data it turned every column into text and the load
    died at the integer cast. A first line with any number in it is data, and is checked as such.
    """
    first = text.split("\n", 1)[0].split("\r", 1)[0]  # any line ending: \n, \r\n or \r
    return 0 if any(_is_number(value) for value in first.split(sep)) else 1


def _decode(raw: bytes, name: str = "") -> str:
    """UTF-8 (a byte-order mark dropped) where the bytes are UTF-8, else Latin-1 (GroupLens' own u.item).

    The original u.item is Latin-1 and none of its accented lines is valid UTF-8 (a lone byte for
    "é"), so it still reads as Latin-1; a copy re-saved as UTF-8 no longer turns "é" into "Ã©".
    A file that is not UTF-8 as a whole is decoded line by line: it was all Latin-1, so one line
    pasted from the original into a UTF-8 copy turned every other accented title into mojibake.
    A UTF-8 file (u.data's 100,000 lines) still takes the single whole-file decode.

    A line that is not UTF-8 is read as Windows-1252 where it is, which is Latin-1 but for bytes
    0x80-0x9f: Latin-1 has only invisible control characters there, Windows-1252 the curly quotes,
    dashes, '…' and 'œ' a Windows spreadsheet saves, which were served as 'Schindler\\x92s List'.
    GroupLens' own u.item has none of those bytes. A line with one Windows-1252 lacks (0x81, 0x8d,
    0x8f, 0x90, 0x9d) is read as Latin-1.

    A file that starts with a UTF-16 byte-order mark is UTF-16: what a spreadsheet saves as
    "Unicode text" (tab-separated, as u.data is). Read byte by byte as Latin-1, its every other
    byte a NUL, it was refused as "1 field in the first line" or bad ids shown as '\\x001\\x00'.
    """
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return raw.decode("utf-16")  # the mark says which byte order, and is dropped
        except UnicodeDecodeError as exc:
            raise DataFormatError(
                f"{name or 'a data file'}: starts with a UTF-16 byte-order mark but is not UTF-16 "
                f"({exc.reason} at byte {exc.start})"
            ) from exc
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    lines = raw.removeprefix(codecs.BOM_UTF8).splitlines(keepends=True)  # \n, \r\n, \r as pandas
    decoded, latin = [], []
    for number, line in enumerate(lines, start=1):
        try:  # a line break byte is never inside a UTF-8 sequence: no character is split here
            decoded.append(line.decode("utf-8"))
        except UnicodeDecodeError:
            decoded.append(_decode_latin(line))
            latin.append(number)
    if len(latin) < sum(not line.isascii() for line in lines):  # both encodings in one file
        shown = ", ".join(map(str, latin[:5])) + (", ..." if len(latin) > 5 else "")
        log.warning("%s mixes UTF-8 and Latin-1; lines read as Latin-1: %s", name or "a data file", shown)
    return "".join(decoded)


def _decode_latin(line: bytes) -> str:
    """A line that is not UTF-8: Windows-1252 where it is one, else Latin-1 (:func:`_decode`)."""
    try:
        return line.decode("cp1252")
    except UnicodeDecodeError:  # a byte Windows-1252 leaves undefined
        return line.decode("latin-1")


def _read_text(path: Path, name: str) -> str:
    """A raw file's decoded text (:func:`_decode`); one that cannot be read (permission denied,
    an I/O error) is a :class:`DataUnavailableError` naming it: it was a bare OSError, a traceback
    of ``movierec features build`` and ``train`` and a 500 of the user features API."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        reason = exc.strerror or exc
        raise DataUnavailableError(
            f"{path}: cannot be read: {reason}", public=f"{name}: cannot be read: {reason}"
        ) from exc
    return _decode(raw, name)


_LINE_BREAK = re.compile(r"\r\n|\r|\n")  # what pandas ends a line at (str.splitlines has more)
LINE_INDEX = "line"  # the name of a raw frame's index when it holds each row's line in its file


def _blank(line: str, sep: str) -> bool:
    """Whether pandas passes ``line`` over as blank: nothing but spaces and tabs, the separator not
    among them. A line of tabs alone in a tab-separated file is a row of empty fields to pandas;
    ``str.strip()`` took it for blank, and every row after it was matched to the wrong line."""
    return not line.strip(" \t".replace(sep, ""))


def _parse(name: str, text: str, **options: Any) -> pd.DataFrame:
    """``pd.read_csv`` of one raw file's decoded text; a row pandas cannot split (an extra field)
    or a file with nothing to parse is a DataFormatError naming the file.

    A double quote is a character like any other (the files have no quoting): read as CSV
    quoting, a title starting with one lost its quotes, and a lone one took the following lines
    into its field, whose movies were then refused as missing from the catalogue.

    The frame is indexed by each row's line in the file (1-based, index named ``line``), so a
    refusal names the line an editor shows, past a header and blank lines; when the rows cannot
    be matched to lines one to one, it keeps pandas' positions (refusals then name rows).
    """
    try:  # no quoting in these files: '"Weird Al" Yankovic' is a title, not a quoted field
        frame = pd.read_csv(io.StringIO(text), quoting=csv.QUOTE_NONE, **options)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataFormatError(f"{name}: {str(exc).strip()}") from exc
    skip, sep = options.get("skiprows", 0), options.get("sep", ",")
    numbered = enumerate(_LINE_BREAK.split(text)[skip:], start=skip + 1)
    lines = [number for number, line in numbered if not _blank(line, sep)]
    if options.get("header", "infer") is not None:  # the first line pandas kept is the header
        lines = lines[1:]
    if len(lines) == len(frame):
        frame.index = pd.Index(lines, name=LINE_INDEX)
    return frame


def _require(file: str, field: str, values: pd.Series | pd.DataFrame, ok: Any, rule: str) -> None:
    """Raise :class:`DataFormatError` naming the first offending lines (or rows) unless ``ok`` is all true."""
    bad = np.flatnonzero(~np.asarray(ok, dtype=bool))
    if len(bad):
        by_line = values.index.name == LINE_INDEX
        shown = "; ".join(
            f"line {values.index[i]}: {value!r}" if by_line else f"row {i + 1}: {value!r}"
            for i, value in zip(bad[:5].tolist(), values.iloc[bad[:5]].to_numpy().tolist(), strict=True)
        )
        raise DataFormatError(f"{file}: {field} {rule} ({len(bad)} bad rows; {shown})")


def _numbers(values: pd.Series) -> pd.Series:
    """Numbers of a column read as text or as numbers (text that is no number: NaN)."""
    return pd.to_numeric(values, errors="coerce")


def _integers(values: pd.Series, low: float, high: float) -> pd.Series:
    """True where the value is an integer in [low, high] (text, NaN and fractions are not)."""
    numbers = _numbers(values)
    return numbers.notna() & (numbers == numbers.round()) & numbers.between(low, high)


def _validate(
    ratings: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame, files: tuple[str, str, str]
) -> None:
    """Refuse content the features would take silently, or crash on without saying where.

    Ids are integers in 1..MAX_ID (the database's columns, the API's path ids) and unique in
    the users and movies files; user ids are not in the feedback users' range (above
    FEEDBACK_USER_BASE): such a user was trained as one, never evaluated nor given a list;
    ratings are 0.5..5; timestamps are epoch seconds, not in the future; demographics are in
    the vocabulary the encoder and the service's columns accept; a movie's display title is at
    most MAX_TITLE_LENGTH characters, so a client can score it, and holds no NUL: PostgreSQL's
    text and JSON cannot, so its scores were refused by the database after their 200 and the
    online monitor's queries over the lists holding it failed.
    Across files, every rating names a listed user and a listed movie: the features dropped
    the others silently and training failed on them much later. A user rates a movie id once.
    """
    ratings_file, users_file, items_file = files
    for file, frame in ((ratings_file, ratings), (users_file, users), (items_file, items)):
        if frame.empty:  # a truncated copy: the features of no ratings die on the empty frames' dtypes
            raise DataFormatError(f"{file}: no rows (an empty or truncated file)")
    rating = _numbers(ratings["rating"])
    latest = time.time() + FUTURE_SLACK_SECONDS
    ids = f"must be 1..{MAX_ID}"
    checks = [
        (ratings_file, ratings, "user_id", _integers(ratings["user_id"], 1, MAX_ID), ids),
        (ratings_file, ratings, "movie_id", _integers(ratings["movie_id"], 1, MAX_ID), ids),
        (ratings_file, ratings, "rating", rating.between(MIN_RATING, MAX_RATING),
         f"must be {MIN_RATING}..{MAX_RATING}"),
        (ratings_file, ratings, "timestamp", _integers(ratings["timestamp"], 0, latest),
         "must be epoch seconds, not in the future"),
        (users_file, users, "user_id", _integers(users["user_id"], 1, MAX_ID), ids),
        (users_file, users, "user_id", ~is_feedback_user(_numbers(users["user_id"])),
         f"must be 1..{FEEDBACK_USER_BASE}, ids above are reserved for feedback users"),
        (users_file, users, "user_id", ~_numbers(users["user_id"]).duplicated(), "must be unique"),
        (users_file, users, "age", _integers(users["age"], MIN_AGE, MAX_AGE),
         f"must be {MIN_AGE}..{MAX_AGE}"),
        (users_file, users, "gender", users["gender"].isin(GENDERS), f"must be one of {', '.join(GENDERS)}"),
        (users_file, users, "occupation", users["occupation"].isin(OCCUPATIONS),
         "must be an ml-100k occupation"),
        (items_file, items, "movie_id", _integers(items["movie_id"], 1, MAX_ID), ids),
        (items_file, items, "movie_id", ~_numbers(items["movie_id"]).duplicated(), "must be unique"),
        (items_file, items, "title", items["title"].str.len().between(1, MAX_TITLE_LENGTH),
         f"must be 1..{MAX_TITLE_LENGTH} characters"),
        (items_file, items, "title", ~items["title"].str.contains("\x00", regex=False),
         "must hold no NUL character"),
    ]  # fmt: skip
    for file, frame, field, ok, rule in checks:
        _require(file, field, frame[field], ok, rule)
    # Every id is a valid integer now: cross-file references.
    known_user = _numbers(ratings["user_id"]).isin(_numbers(users["user_id"]))
    _require(ratings_file, "user_id", ratings["user_id"], known_user, f"must be a user of {users_file}")
    known_movie = _numbers(ratings["movie_id"]).isin(_numbers(items["movie_id"]))
    _require(ratings_file, "movie_id", ratings["movie_id"], known_movie, f"must be a movie of {items_file}")
    # One rating per (user, movie) id pair: two were averaged (with the twins' merge) into a
    # rating nobody gave. Twins are two ids, so a user's ratings of both are still merged.
    pairs = ratings[["user_id", "movie_id"]]
    numbers = pairs.apply(_numbers)
    once = ~numbers.duplicated()
    if not once.all():  # each repeat shown with where its pair was first rated, to compare the two
        by_line = pairs.index.name == LINE_INDEX
        where = pd.Series(pairs.index if by_line else np.arange(1, len(pairs) + 1), index=pairs.index)
        first = where.groupby([numbers["user_id"], numbers["movie_id"]]).transform("first")
        kind = "line" if by_line else "row"
        shown = pd.Series(
            [
                f"{user}, {movie}, first rated on {kind} {line}"
                for user, movie, line in zip(pairs["user_id"], pairs["movie_id"], first, strict=True)
            ],
            index=pairs.index,
        )
        _require(
            ratings_file, "(user_id, movie_id)", shown, once, "must be unique (one rating per user and movie)"
        )


def _first_fields(text: str, sep: str, skip: int) -> list[str]:
    """The fields of the first data line (after ``skip`` header lines, blank lines passed over).

    Lines end where pandas ends them (``_LINE_BREAK``): ``str.splitlines`` also breaks at U+0085
    (Latin-1's byte 0x85), form feeds and \\x1c-\\x1e, so a first title holding one was refused
    as a line with too few fields.
    """
    lines = [line for line in _LINE_BREAK.split(text)[skip:] if not _blank(line, sep)]
    return lines[0].split(sep) if lines else []


def _require_fields(name: str, text: str, sep: str, skip: int, expected: int) -> None:
    """Refuse the data lines (past ``skip`` lines, blank ones passed over) with fewer than
    ``expected`` fields, naming them by their line in the file.

    pandas reads the missing fields of a short line as empty: a u.user line cut before its zip
    code loaded as a user without one, a u.data line without its timestamp was refused as a bad
    timestamp (nan). The first line's count names a wrong separator or a missing column; this
    names a line cut short (a copy truncated in its last line, a hand edit).
    """
    numbered = enumerate(_LINE_BREAK.split(text)[skip:], start=skip + 1)
    short = [
        (number, line)
        for number, line in numbered
        if not _blank(line, sep) and line.count(sep) < expected - 1
    ]
    if short:
        shown = "; ".join(f"line {number}: {line!r}" for number, line in short[:5])
        raise DataFormatError(f"{name}: fields must be {expected} per line ({len(short)} bad rows; {shown})")


def _read_grouplens(directory: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    def read(name: str, sep: str, names: list[str], **options: Any) -> pd.DataFrame:
        text = _read_text(directory / name, name)  # read once: the encoding and header from it
        skip = _header_rows(text, sep)
        # More fields than names made pandas take the first column as the index and shift every
        # field left: a trailing separator on each line (a common export) was refused as bad
        # values of the wrong field, an extra column likewise. A trailing separator is harmless
        # (its fields are empty); an extra column is refused as one.
        fields = _first_fields(text, sep, skip)
        # Fewer fields than names: another separator (a comma-separated u.data is one field a
        # line, and its first line, no number in that field, was dropped as a header) or a
        # missing column. Both were refused as bad values of whatever field came out empty.
        if any(value.strip() for value in fields[len(names) :]) or 0 < len(fields) < len(names):
            separator = "tabs" if sep == "\t" else repr(sep)
            raise DataFormatError(
                f"{name}: {len(fields)} field{'s' if len(fields) != 1 else ''} in the first line, "
                f"expected {len(names)} ({', '.join(names)}) separated by {separator}"
            )
        _require_fields(name, text, sep, skip, len(names))
        extra = [f"_empty_{n}" for n in range(len(fields) - len(names))]
        frame = _parse(
            name,
            text,
            sep=sep,
            names=[*names, *extra],
            header=None,
            skiprows=skip,
            index_col=False,
            **options,
        )
        if extra:
            empty = frame[extra].isna() | (
                frame[extra].astype(str).apply(lambda column: column.str.strip()) == ""
            )
            _require(name, "fields", frame[extra], empty.all(axis=1), f"must be {len(names)} per line")
        return frame[names]

    ratings = read("u.data", "\t", RATING_COLUMNS)
    users = read("u.user", "|", USER_COLUMNS, dtype={"zip_code": str})
    item_columns = ["movie_id", "title", "release_date", "video_release_date", "url", *GENRES]
    # pandas' default NA words ("NA", "None", "null", "N/A", "nan", ...) are titles of their own
    # here: read as missing, each became "unknown" and _merge_twins made them one movie. Only an
    # empty field is missing, in any column.
    raw_items = read(
        "u.item", "|", item_columns, dtype={"title": str}, keep_default_na=False,
        na_values={name: [""] for name in item_columns if name != "title"},
    )  # fmt: skip
    titles = raw_items["title"].str.strip()  # before the empty test: spaces alone are no title
    flag_values = raw_items[list(GENRES)]
    # A short line leaves its last flags NaN, which bool() reads as True: every genre at once.
    # Compared as numbers: one flag that is no number makes its whole column text ('0', '1'),
    # and every line was refused, the first ones named, not the bad one.
    flag_numbers = flag_values.apply(_numbers)
    _require("u.item", "genre flags", flag_values, flag_numbers.isin([0, 1]).all(axis=1), "must be 0 or 1")
    flags = flag_numbers.to_numpy(dtype=bool)
    # No flag set is GroupLens' own "unknown" genre (as an empty recbole class is): joined as '',
    # it failed the features of every user ("unknown genres in the catalogue: ['']").
    genres = ["|".join(g for g, on in zip(GENRES, row, strict=True) if on) or "unknown" for row in flags]
    # An empty date is no year (GroupLens' movie 267, "unknown", has none); any other that is no
    # date (32-Foo-1995) was "no year" as silently, where every other bad field is refused.
    written = raw_items["release_date"].astype("string").str.strip().fillna("")
    dates = pd.to_datetime(written, format="%d-%b-%Y", errors="coerce")
    dated = (written == "") | dates.notna()
    _require(
        "u.item",
        "release date",
        raw_items["release_date"],
        dated,
        "must be a date like 01-Jan-1995, or empty",
    )
    items = pd.DataFrame(
        {
            "movie_id": raw_items["movie_id"],
            # GroupLens titles already carry "(year)"; keep them as the display title.
            "title": titles.where(titles != "", "unknown"),
            "year": dates.dt.year.astype("Int64"),
            "genres": genres,
        }
    )
    return ratings, users, items


def _read_recbole(directory: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    def read(name: str, needed: tuple[str, ...]) -> pd.DataFrame:
        # decoded as the GroupLens files are: a conversion of u.item keeps its Latin-1 titles
        text = _read_text(directory / f"ml-100k.{name}", f"ml-100k.{name}")
        lines = _LINE_BREAK.split(text)
        header = next((number for number, line in enumerate(lines) if not _blank(line, "\t")), len(lines))
        if header < len(lines):  # an empty file is refused by _parse
            # the named columns: a tab after the last name is an empty column a line may leave out
            named = len(lines[header].rstrip(" \t").split("\t"))
            _require_fields(f"ml-100k.{name}", text, "\t", header + 1, named)
        frame = _parse(f"ml-100k.{name}", text, sep="\t", dtype=str, keep_default_na=False)
        frame.columns = [column.split(":", 1)[0] for column in frame.columns]
        missing = [column for column in needed if column not in frame.columns]
        if missing:
            raise DataFormatError(f"ml-100k.{name}: its header has no {', '.join(missing)} column")
        # pandas names a repeat 'rating:float.1', so both were 'rating': a frame where a column
        # was expected, and the load died in a bare ValueError
        twice = [column for column in needed if list(frame.columns).count(column) > 1]
        if twice:
            raise DataFormatError(f"ml-100k.{name}: its header names {', '.join(twice)} twice")
        return frame

    # Columns stay text here: load_directory validates them (naming the file, field and rows)
    # before converting; a cast here raised a bare ValueError on the first bad value.
    inter = read("inter", ("user_id", "item_id", "rating", "timestamp"))
    ratings = pd.DataFrame(
        {
            "user_id": inter["user_id"],
            "movie_id": inter["item_id"],
            "rating": inter["rating"],
            "timestamp": inter["timestamp"],
        }
    )
    user = read("user", ("user_id", "age", "gender", "occupation", "zip_code"))
    users = pd.DataFrame(
        {
            "user_id": user["user_id"],
            "age": user["age"],
            "gender": user["gender"],
            "occupation": user["occupation"],
            "zip_code": user["zip_code"],
        }
    )
    item = read("item", ("item_id", "movie_title", "release_year", "class"))
    # A year that is no number is no year: the registry's own file has 'unkonwn' (movie 267) and
    # 'V' (movie 1412, its title's '(1995) V' split). A number that is no whole year was cast as it
    # came: 1995.5, inf or one beyond 64 bits a bare TypeError or OverflowError, -5 a title 'X (-5)'.
    numbers = _numbers(item["release_year"])
    _require(
        "ml-100k.item",
        "release_year",
        item["release_year"],
        numbers.isna() | _integers(item["release_year"], 1, 9999),
        "must be a year 1..9999, or no number (no year)",
    )
    year = numbers.astype("Int64")
    base_title = item["movie_title"].str.strip()
    title = [
        f"{name} ({int(y)})" if not pd.isna(y) else (name or "unknown")
        for name, y in zip(base_title, year, strict=True)
    ]
    # recbole spells the unknown movie "unkonwn"; GroupLens calls it "unknown".
    title = ["unknown" if t.startswith("unkonwn") else t for t in title]
    # Genres the features know (GENRES): one spelled otherwise ("Sci-fi") loaded here and made
    # the features fail later with a bare ValueError, after `movierec data fetch` had cached it.
    known_genres = [all(g in GENRES for g in str(cls).split()) for cls in item["class"]]
    _require("ml-100k.item", "class", item["class"], known_genres, f"must be genres of {', '.join(GENRES)}")
    # a class of spaces alone is no genre too, not the genre '' (which the features refuse)
    genres = ["|".join(str(cls).split()) or "unknown" for cls in item["class"]]
    items = pd.DataFrame({"movie_id": item["item_id"], "title": title, "year": year, "genres": genres})
    return ratings, users, items


def _merge_twins(ratings: pd.DataFrame, items: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Map every duplicate (title, year) to its lowest movie id and combine the ratings.

    A user who rated both twins keeps one rating: the mean, at the later timestamp, in the
    file position of the first one (so positional splits stay deterministic).
    """
    items = items.sort_values("movie_id").reset_index(drop=True)
    canonical = items.groupby("title", sort=False)["movie_id"].transform("min")
    mapping = dict(zip(items["movie_id"], canonical, strict=True))
    merged_items = items[items["movie_id"] == canonical].reset_index(drop=True)

    ratings = ratings.assign(movie_id=ratings["movie_id"].map(mapping).astype(np.int64))
    ratings = ratings.reset_index(drop=True)
    ratings["_order"] = np.arange(len(ratings))
    grouped = ratings.groupby(["user_id", "movie_id"], sort=False)
    combined = grouped.agg(
        rating=("rating", "mean"), timestamp=("timestamp", "max"), _order=("_order", "min")
    ).reset_index()
    combined = combined.sort_values("_order").drop(columns="_order").reset_index(drop=True)
    return combined[RATING_COLUMNS], merged_items


def load_directory(directory: Path | str) -> MovieLens:
    """Load ml-100k from a directory in either supported layout."""
    directory = Path(directory)
    layout = detect_layout(directory)
    if layout is None:
        raise DataUnavailableError(
            f"{directory} holds neither the GroupLens files (u.data, u.item, u.user) nor the "
            "registry-package files (ml-100k.inter, ml-100k.item, ml-100k.user)"
        )
    reader = _read_grouplens if layout == "grouplens" else _read_recbole
    ratings, users, items = reader(directory)
    files = ("u.data", "u.user", "u.item") if layout == "grouplens" else (
        "ml-100k.inter", "ml-100k.user", "ml-100k.item"
    )  # fmt: skip
    _validate(ratings, users, items, files)
    # valid now: numbers, whether the reader read them as numbers or as text
    ratings = ratings.assign(**{name: _numbers(ratings[name]) for name in RATING_COLUMNS})
    ratings = ratings.astype(
        {"user_id": np.int64, "movie_id": np.int64, "rating": float, "timestamp": np.int64}
    )
    items = items.assign(movie_id=_numbers(items["movie_id"]).astype(np.int64))
    ratings, items = _merge_twins(ratings, items)
    users = users.assign(user_id=_numbers(users["user_id"]), age=_numbers(users["age"]))
    users = users.astype({"user_id": np.int64, "age": np.int64}).sort_values("user_id")
    return MovieLens(ratings=ratings, users=users.reset_index(drop=True), items=items[ITEM_COLUMNS])


# --------------------------------------------------------------------------- sources


def _copy_layout_files(source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    names = (
        ("u.data", "u.item", "u.user")
        if detect_layout(source) == "grouplens"
        else ("ml-100k.inter", "ml-100k.item", "ml-100k.user")
    )
    for name in names:
        shutil.copyfile(source / name, target / name)


def _from_pypi(target: Path) -> None:
    """``pip download --no-deps recbole==1.2.1`` and extract the three data files.

    The wheel, and pip's own temporary files (its ``TMPDIR``), go under ``target``, ``fetch``'s
    staging directory beside the cache: a fetch killed outright during the download (it takes
    minutes) left a directory in the system temp directory for good; its staging is removed by a
    later fetch once stale."""
    download = target / ".download"
    try:
        (download / "tmp").mkdir(parents=True)
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
            "--quiet", "--dest", str(download), RECBOLE_REQUIREMENT,
        ]  # fmt: skip
        env = {**os.environ, "TMPDIR": str(download / "tmp")}
        result = subprocess.run(  # nosec B603
            command, capture_output=True, text=True, timeout=600, check=False, env=env
        )
        wheels = list(download.glob("recbole-*.whl"))
        if result.returncode != 0 or not wheels:
            detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no wheel"]
            raise NotObtainedError(f"pip download {RECBOLE_REQUIREMENT} failed: {detail[0]}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            for ext in ("inter", "item", "user"):
                member = f"{RECBOLE_MEMBER_PREFIX}ml-100k.{ext}"
                (target / f"ml-100k.{ext}").write_bytes(wheel.read(member))
    finally:
        shutil.rmtree(download, ignore_errors=True)


def _from_grouplens(target: Path, timeout: float = 30.0) -> None:
    with urllib.request.urlopen(GROUPLENS_URL, timeout=timeout) as response:  # nosec B310 - fixed https URL
        payload = response.read()
    with zipfile.ZipFile(io.BytesIO(payload)) as archive:
        target.mkdir(parents=True, exist_ok=True)
        for name in ("u.data", "u.item", "u.user"):
            (target / name).write_bytes(archive.read(f"ml-100k/{name}"))


def _publish(staging: Path, target: Path) -> None:
    """Rename the complete ``staging`` to ``target``; a partial ``target`` (an earlier release's
    interrupted copy) is renamed aside first and removed after, so ``target`` is never partial."""
    aside = staging.with_name(f"{staging.name}.old")
    with contextlib.suppress(FileNotFoundError):  # no cache yet: the usual case
        target.rename(aside)
    staging.rename(target)
    if aside.is_dir():
        shutil.rmtree(aside, ignore_errors=True)
    elif aside.exists():  # a file where the cache goes
        aside.unlink()


def mkdir_failure(exc: OSError) -> str:
    """Why a directory could not be made or used, in words. mkdir says "File exists" of a file in
    its way, which reads as if the directory were there already: it is there, but not as one."""
    return os.strerror(errno.ENOTDIR) if isinstance(exc, FileExistsError) else exc.strerror or str(exc)


def fetch(data_dir: Path | str, sources: Sequence[str] = ("pypi", "grouplens")) -> Path:
    """Make ml-100k available under ``data_dir/ml-100k`` and return that directory.

    ``sources`` are tried in order; each is ``"pypi"``, ``"grouplens"`` or a local path (a
    directory in either layout, or the GroupLens zip). An existing cache is used as is. A source
    is staged in ``data_dir`` (``STAGING_PREFIX``) and published with one rename once validated.
    Raises :class:`DataUnavailableError` naming every source tried and why it failed: a
    :class:`NotObtainedError` when no source's files were refused (none was reached, or held them).
    Failed or interrupted, it leaves no directory it created (the data root, its parents) behind.
    """
    target = Path(data_dir) / CACHE_SUBDIR
    if detect_layout(target, cache=True):
        return target
    from app.recommender.bundle import Leftover, remove_stale_leftovers  # bundle imports this module

    def unusable(exc: OSError) -> DataUnavailableError:
        # a data root that is a file (or under one), read-only or full: one line, not a traceback
        return DataUnavailableError(
            f"the data root {target.parent} cannot hold ml-100k: {mkdir_failure(exc)}"
        )

    with removed_unless_done(target.parent):  # a fetch that obtains nothing leaves no data root
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_leftovers(target.parent, (Leftover(_STAGING, stat.S_ISDIR),))
        except OSError as exc:
            raise unusable(exc) from exc
        return _obtain(target, sources, unusable)


@contextlib.contextmanager
def removed_unless_done(directory: Path) -> Iterator[None]:
    """For a block that creates ``directory`` to put its result in: when the block fails (or is
    interrupted with Ctrl-C), the directories it created (``directory`` and its parents missing
    before) are removed again, those still empty, so a failed command leaves the file system as
    it found it. ``data fetch``'s data root; ``train``'s --model-dir and ``evaluate``'s --out's."""
    created: list[Path] = []
    for missing in (directory, *directory.parents):
        if os.path.lexists(missing):
            break
        created.append(missing)
    try:
        yield
    except BaseException:
        for made in created:  # deepest first; one something else wrote into meanwhile stays
            with contextlib.suppress(OSError):
                made.rmdir()
        raise


def _obtain(
    target: Path, sources: Sequence[str], unusable: Callable[[OSError], DataUnavailableError]
) -> Path:
    """:func:`fetch`'s sources tried in order, each staged in the data root (which exists)."""
    failures: list[str] = []
    refused = False  # a source's files were there but not ml-100k (their layout, their content)
    for source in sources:
        # Staged beside the cache, so publishing is one rename: staged in the system temp
        # directory, the move into the data root was a copy across filesystems, and a process
        # killed partway left a partial ml-100k that the next fetch took for the cache.
        try:
            staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=target.parent))
        except OSError as exc:
            raise unusable(exc) from exc
        try:
            if source == "pypi":
                _from_pypi(staging)
            elif source == "grouplens":
                _from_grouplens(staging)
            else:
                path = Path(source)
                if path.is_file() and zipfile.is_zipfile(path):
                    with zipfile.ZipFile(path) as archive:
                        for name in ("u.data", "u.item", "u.user"):
                            (staging / name).write_bytes(archive.read(f"ml-100k/{name}"))
                elif path.is_dir() and detect_layout(path):
                    _copy_layout_files(path, staging)
                else:
                    raise NotObtainedError(f"{path} is not an ml-100k directory or zip")
            if not detect_layout(staging, cache=True):
                raise NotObtainedError("the source did not provide the expected files")
            load_directory(staging)  # validate before publishing into the cache
            _publish(staging, target)
            log.info(
                "fetched ml-100k from %s into %s",
                source,
                target,
                extra={"source": source, "path": str(target)},
            )
            return target
        except Exception as exc:  # noqa: BLE001 - every failure is reported, then the next source is tried
            failures.append(f"{source}: {exc}")
            # a download, a copy or a zip that failed is no refusal (an OSError, a bad zip)
            refused |= isinstance(exc, DataUnavailableError) and not isinstance(exc, NotObtainedError)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    raise (DataUnavailableError if refused else NotObtainedError)(
        "could not obtain MovieLens ml-100k; tried "
        + "; ".join(failures)
        + ". Put the GroupLens files (u.data, u.item, u.user) or the registry-package files "
        "in a directory and pass it with --source PATH."
    )


def find_local(data_dir: Path | str) -> MovieLens | None:
    """ml-100k from ``data_dir`` or its cache if present; never fetches (serving must not)."""
    for candidate, cache in ((Path(data_dir), False), (Path(data_dir) / CACHE_SUBDIR, True)):
        if detect_layout(candidate, cache=cache):
            return load_directory(candidate)
    return None


def load_movielens(data_dir: Path | str, sources: Sequence[str] = ("pypi", "grouplens")) -> MovieLens:
    """Load ml-100k from ``data_dir`` itself, its cache, or fetch it first."""
    data_dir = Path(data_dir)
    if detect_layout(data_dir):
        return load_directory(data_dir)
    return load_directory(fetch(data_dir, sources))
