"""Raw ml-100k files with odd but plausible content: read right, or refused naming file and field."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from app.pipeline.features_store import db_rows, feature_tables
from app.pipeline.ingest import (
    FEEDBACK_COLUMNS,
    FEEDBACK_USER_BASE,
    Ingested,
    feedback_to_ratings,
    ingest,
    merge_feedback,
)
from app.recommender.data import GENRES, DataFormatError, DataUnavailableError, fetch, load_directory
from tests.synthetic import write_grouplens, write_recbole

pytestmark = pytest.mark.unit


def _append(name: str, line: str) -> Callable[[Path], None]:
    def mutate(directory: Path) -> None:
        path = directory / name
        path.write_bytes(path.read_bytes() + line.encode("latin-1"))

    return mutate


def _prepend(name: str, line: bytes) -> Callable[[Path], None]:
    def mutate(directory: Path) -> None:
        path = directory / name
        path.write_bytes(line + path.read_bytes())

    return mutate


def _crlf_and_blank_lines(directory: Path) -> None:
    for name in ("u.data", "u.user", "u.item"):
        path = directory / name
        path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n") + b"\r\n")


def _utf16_crlf(name: str) -> Callable[[Path], None]:
    """``name`` as a spreadsheet's "Unicode text" export: UTF-16 with a byte-order mark, CRLF."""

    def mutate(directory: Path) -> None:
        path = directory / name
        path.write_bytes(path.read_bytes().decode("latin-1").replace("\n", "\r\n").encode("utf-16"))

    return mutate


FLAGS = "|".join(["0"] * 19)


@pytest.mark.parametrize(
    "mutate",
    [
        _prepend("u.data", b"user_id\titem_id\trating\ttimestamp\n"),
        _prepend("u.user", b"user id|age|gender|occupation|zip code\n"),
        _prepend(
            "u.item",
            (
                "movie id|movie title|release date|video release date|IMDb URL|" + "|".join(GENRES) + "\n"
            ).encode(),
        ),
        _prepend("u.data", b"\xef\xbb\xbf"),  # a UTF-8 byte-order mark
        _crlf_and_blank_lines,
        _utf16_crlf("u.data"),
        _utf16_crlf("u.item"),
    ],
    ids=["header-u.data", "header-u.user", "header-u.item", "bom", "crlf-trailing-blank", "utf16-u.data",
         "utf16-u.item"],
)  # fmt: skip
def test_harmless_variations_load_the_same_tables(tmp_path: Path, mutate: Callable[[Path], None]) -> None:
    expected = load_directory(write_grouplens(tmp_path / "plain"))
    directory = write_grouplens(tmp_path / "odd")
    mutate(directory)
    assert load_directory(directory).fingerprint() == expected.fingerprint()


def test_a_file_marked_utf16_that_is_not_is_refused_naming_it(tmp_path: Path) -> None:
    directory = write_grouplens(tmp_path / "odd")
    _utf16_crlf("u.data")(directory)
    path = directory / "u.data"
    path.write_bytes(path.read_bytes() + b"\n")  # one byte more: half a UTF-16 character
    with pytest.raises(
        DataFormatError, match=r"u\.data: starts with a UTF-16 byte-order mark but is not UTF-16"
    ):
        load_directory(directory)


# each layout's item file, and the bytes around Movie 1's title in it (renamed by the tests)
_EACH_ITEM_FILE = pytest.mark.parametrize(
    ("writer", "name", "title"),
    [(write_grouplens, "u.item", b"Movie 1 ("), (write_recbole, "ml-100k.item", b"\tMovie 1\t")],
    ids=["u.item", "ml-100k.item"],
)


@_EACH_ITEM_FILE
def test_titles_of_a_latin1_or_utf8_item_file_are_not_mojibake(
    tmp_path: Path, writer: Callable[[Path], Path], name: str, title: bytes
) -> None:
    """GroupLens' own u.item is Latin-1, a converted copy may be UTF-8; the registry package's
    ml-100k.item, converted from u.item with its bytes kept, was a UnicodeDecodeError (a 500)."""
    expected = load_directory(writer(tmp_path / "plain"))
    latin = writer(tmp_path / "latin")
    utf8 = writer(tmp_path / "utf8")
    for directory, encoding in ((latin, "latin-1"), (utf8, "utf-8")):
        path = directory / name
        path.write_bytes(
            path.read_bytes().replace(title, title.replace(b"Movie 1", "Les Misérables".encode(encoding)), 1)
        )
    for directory in (latin, utf8):
        loaded = load_directory(directory)
        assert "Les Misérables (1981)" in loaded.items["title"].tolist(), directory
        assert loaded.ratings.equals(expected.ratings)


@_EACH_ITEM_FILE
def test_titles_of_an_item_file_saved_as_windows_1252_are_not_control_characters(
    tmp_path: Path, writer: Callable[[Path], Path], name: str, title: bytes
) -> None:
    """A u.item saved by a Windows spreadsheet is Windows-1252: its curly quotes, dashes, '…' and
    'œ' are bytes 0x80-0x9f, which Latin-1 reads as invisible C1 control characters, so
    "Schindler’s List" was served (and had to be scored) as 'Schindler\\x92s List'. Latin-1 has
    no text in those bytes; GroupLens' own Latin-1 file has none of them and reads as before."""
    directory = writer(tmp_path / "cp1252")
    path = directory / name
    renamed = "Schindler’s “Cœur” – Les Misérables…"
    path.write_bytes(path.read_bytes().replace(title, title.replace(b"Movie 1", renamed.encode("cp1252")), 1))
    assert f"{renamed} (1981)" in load_directory(directory).items["title"].tolist()


@pytest.mark.parametrize(
    ("writer", "name", "titles"),
    [
        (write_grouplens, "u.item", (b"Movie 1 (", b"Movie 2 (", b"Movie 3 (")),
        (write_recbole, "ml-100k.item", (b"\tMovie 1\t", b"\tMovie 2\t", b"\tMovie 3\t")),
    ],
    ids=["u.item", "ml-100k.item"],
)
def test_one_latin1_line_in_a_utf8_item_file_leaves_the_other_titles_alone(
    tmp_path: Path,
    writer: Callable[[Path], Path],
    name: str,
    titles: tuple[bytes, bytes, bytes],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The encoding was guessed for the whole file: one stray Latin-1 byte in a UTF-8 u.item (a
    line pasted from the original) read every accented title of the file as "Ã©" mojibake.
    Each line is read as UTF-8 when it is valid UTF-8, as Latin-1 otherwise."""
    directory = writer(tmp_path / "mixed")
    path = directory / name
    content = path.read_bytes()
    renamed = (("Misérables", "utf-8"), ("Cérémonie", "latin-1"), ("Á köldum klaka", "utf-8"))
    for n, (title, (new, encoding)) in enumerate(zip(titles, renamed, strict=True), start=1):
        content = content.replace(title, title.replace(f"Movie {n}".encode(), new.encode(encoding)), 1)
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="app.recommender.data"):
        shown = load_directory(directory).items["title"].tolist()
    assert {"Misérables (1981)", "Cérémonie (1982)", "Á köldum klaka (1983)"} <= set(shown), [
        t for t in shown if not t.isascii()
    ]
    latin = "Cérémonie".encode("latin-1")
    line = next(n for n, text in enumerate(content.split(b"\n"), start=1) if latin in text)
    warned = [r.getMessage() for r in caplog.records if "Latin-1" in r.getMessage()]
    assert warned == [f"{name} mixes UTF-8 and Latin-1; lines read as Latin-1: {line}"], warned


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (_append("u.data", "1\t999\t4\t880000000\n"), r"u\.data: movie_id must be a movie of u\.item"),
        (_append("u.data", "999\t1\t4\t880000000\n"), r"u\.data: user_id must be a user of u\.user"),
        (_append("u.data", "1\t3\t0\t880000000\n"), r"u\.data: rating must be 0\.5\.\.5\.0"),
        (_append("u.data", "1\t3\t\t880000000\n"), r"u\.data: rating must be 0\.5\.\.5\.0"),
        (_append("u.data", "1\t3\t4\n"),
         r"u\.data: fields must be 4 per line \(1 bad rows; line \d+: '1\\t3\\t4'\)"),
        (_append("u.data", "1\t3\t4\t4102444800\n"), r"u\.data: timestamp .* not in the future"),
        (_append("u.data", "-5\t1\t4\t880000000\n"), r"u\.data: user_id must be 1\.\."),
        (_append("u.data", "1\tabc\t4\t880000000\n"), r"u\.data: movie_id must be 1\.\..*'abc'"),
        (_append("u.user", "1|30|M|doctor|12345\n"), r"u\.user: user_id must be unique"),
        (_append("u.user", "500|30|Male|doctor|12345\n"), r"u\.user: gender must be one of M, F, O"),
        (_append("u.user", "500|30|M|astronaut|12345\n"), r"u\.user: occupation"),
        (_append("u.user", "99999999999|30|M|doctor|12345\n"), r"u\.user: user_id must be 1\.\.2147483647"),
        (_append("u.user", "500|0|M|doctor|12345\n"), r"u\.user: age must be 1\.\.120"),
        (_append("u.item", f"1|Again (1990)|01-Jan-1990||x|{FLAGS}\n"), r"u\.item: movie_id must be unique"),
        (_append("u.item", "61|Short (1990)|01-Jan-1990||x|0|0|1\n"), r"u\.item: fields must be 24 per line"),
        (_append("u.user", "500|30|M|doctor\n"), r"u\.user: fields must be 5 per line .*'500\|30\|M\|doc"),
    ],
    ids=[
        "unknown-movie", "unknown-user", "rating-0", "rating-missing", "missing-field", "future-timestamp",
        "negative-id", "text-id", "duplicate-user", "gender", "occupation", "huge-user-id", "age-0",
        "duplicate-movie", "short-item-line", "user-without-zip",
    ],
)  # fmt: skip
def test_malformed_content_is_refused_naming_file_and_field(
    tmp_path: Path, mutate: Callable[[Path], None], message: str
) -> None:
    directory = write_grouplens(tmp_path / "bad")
    mutate(directory)
    with pytest.raises(DataFormatError, match=message):
        load_directory(directory)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (_append("ml-100k.inter", "1\t3\tfour\t880000000\n"), r"ml-100k\.inter: rating must be .*'four'"),
        (_append("ml-100k.inter", "1\tx9\t4\t880000000\n"), r"ml-100k\.inter: movie_id must be 1\.\..*'x9'"),
        (_append("ml-100k.inter", "1\t3\t4\n"), r"ml-100k\.inter: fields must be 4 per line .*'1\\t3\\t4'"),
        (_append("ml-100k.user", "500\t30\tM\tdoctor\n"), r"ml-100k\.user: fields must be 5 per line"),
        (_append("ml-100k.user", "500\tthirty\tM\tdoctor\t12345\n"), r"ml-100k\.user: age must be 1\.\.120"),
        (_append("ml-100k.user", "1.0\t30\tM\tdoctor\t12345\n"), r"ml-100k\.user: user_id must be unique"),
        (_append("ml-100k.item", "abc\tNew\t1990\tDrama\n"), r"ml-100k\.item: movie_id must be 1\.\."),
        (lambda d: (d / "ml-100k.inter").write_text("user_id:token\titem_id:token\n1\t3\n"),
         r"ml-100k\.inter: its header has no rating, timestamp column"),
        # a bare ValueError ('Buffer has wrong number of dimensions'): a traceback of features build
        (lambda d: (d / "ml-100k.inter").write_text(
            "user_id:token\titem_id:token\trating:float\ttimestamp:float\trating:float\n1\t3\t4\t880000000\t4\n"
        ), r"ml-100k\.inter: its header names rating twice"),
        (lambda d: (d / "ml-100k.user").write_text(
            "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\tuser_id:float\n"
            "1\t30\tM\tdoctor\t12345\t1\n"
        ), r"ml-100k\.user: its header names user_id twice"),
    ],
    ids=["text-rating", "text-movie", "missing-field", "user-without-zip", "text-age",
         "same-id-spelled-twice", "text-item-id", "missing-columns", "column-twice", "column-twice-typed"],
)  # fmt: skip
def test_malformed_registry_package_files_are_refused_naming_file_and_field(
    tmp_path: Path, mutate: Callable[[Path], None], message: str
) -> None:
    """The registry-package reader cast each column before validation: a bad value was a bare
    ValueError ("could not convert string to float: 'four'") naming neither file nor row."""
    directory = write_recbole(tmp_path / "bad")
    mutate(directory)
    with pytest.raises(DataFormatError, match=message):
        load_directory(directory)


def test_fetch_does_not_cache_a_malformed_source(tmp_path: Path) -> None:
    source = write_grouplens(tmp_path / "source")
    _append("u.data", "1\t3\t9\t880000000\n")(source)
    with pytest.raises(DataUnavailableError, match=r"rating must be 0\.5\.\.5\.0"):
        fetch(tmp_path / "root", sources=[str(source)])
    assert not (tmp_path / "root" / "ml-100k").exists()


def test_a_user_without_ratings_gets_empty_features_not_an_error(tmp_path: Path) -> None:
    directory = write_grouplens(tmp_path / "data")
    _append("u.user", "500|30|M|doctor|12345\n")(directory)
    tables = feature_tables(Ingested(load_directory(directory)))
    users = tables["users"]
    row = users[users["user_id"] == 500].iloc[0]
    assert row["n_ratings"] == 0 and row["liked_share"] == 0.0 and row["source"] == "movielens"
    assert any(
        record["user_id"] == 500 and record["mean_rating"] is None and record["rated_movies"] == []
        for record in db_rows(users, tables["ratings"])
    )


def test_raw_user_ids_in_the_feedback_range_are_refused(tmp_path: Path) -> None:
    """A raw user 1,000,001 was filed as a feedback user: left out of the service's table (404)."""
    directory = write_grouplens(tmp_path / "data")
    _append("u.user", f"{FEEDBACK_USER_BASE + 1}|30|M|doctor|12345\n")(directory)
    with pytest.raises(DataFormatError, match="reserved for feedback users"):
        ingest(directory, None)


def test_a_known_users_newest_feedback_score_wins(tmp_path: Path) -> None:
    """User 5 scores movie 10 under request r1, then 4 under r2, then changes r1's score to 5:
    the upsert keeps r1's old feedback id, and the older score (4) used to win by id order."""
    data = load_directory(write_grouplens(tmp_path / "data"))
    t1, t2, t3 = (datetime(2026, 1, day, tzinfo=UTC) for day in (1, 2, 3))
    feedback = pd.DataFrame(
        [(1, "r1", 10, 5.0, t1, t3, 5, 30, "M", "doctor"), (2, "r2", 10, 4.0, t2, t2, 5, 30, "M", "doctor")],
        columns=FEEDBACK_COLUMNS,
    )
    ratings, users, _ = feedback_to_ratings(
        feedback, data.users["user_id"].to_numpy(), data.items["movie_id"].to_numpy()
    )
    merged = merge_feedback(data, ratings, users).ratings
    pair = merged[(merged["user_id"] == 5) & (merged["movie_id"] == 10)]
    # the rating's time is when r1 was first scored: a retry's newer acknowledgement is no new data
    assert pair["rating"].tolist() == [5.0] and pair["timestamp"].tolist() == [int(t1.timestamp())]
    assert not merged.duplicated(["user_id", "movie_id"]).any()


@pytest.mark.parametrize(
    ("writer", "mutate", "message"),
    [
        (write_grouplens, _append("u.data", "1\t3\t4\t880000000\t9\n"), r"u\.data: .*Expected 4 fields"),
        (write_grouplens, _append("u.user", "500|30|M|doctor|12345|x\n"), r"u\.user: .*Expected 5 fields"),
        (write_grouplens, _append("u.data", '"1\t3\t4\t880000000\n'), r"u\.data: "),
        (write_recbole, _append("ml-100k.inter", "1\t3\t4\t880000000\t9\n"), r"ml-100k\.inter: "),
        (write_recbole, lambda d: (d / "ml-100k.inter").write_bytes(b""), r"ml-100k\.inter: "),
    ],
    ids=["extra-field-u.data", "extra-field-u.user", "stray-quote", "extra-field-inter", "empty-inter"],
)  # fmt: skip
def test_rows_pandas_cannot_tokenize_are_refused_naming_the_file(
    tmp_path: Path, writer: Callable[[Path], Path], mutate: Callable[[Path], None], message: str
) -> None:
    directory = writer(tmp_path / "bad")
    mutate(directory)
    with pytest.raises(DataFormatError, match=message):
        load_directory(directory)


@pytest.mark.parametrize("name", ["u.data", "u.user", "u.item"])
def test_an_empty_grouplens_file_is_refused(tmp_path: Path, name: str) -> None:
    directory = write_grouplens(tmp_path / "data")
    (directory / name).write_bytes(b"")
    with pytest.raises(DataFormatError, match=rf"{name}"):
        load_directory(directory)


def test_a_header_only_ratings_file_is_refused(tmp_path: Path) -> None:
    directory = write_recbole(tmp_path / "data")
    (directory / "ml-100k.inter").write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n")
    with pytest.raises(DataFormatError, match=r"ml-100k\.inter: no rows"):
        load_directory(directory)


@pytest.mark.api
@pytest.mark.parametrize(
    "mutate",
    [_append("u.data", "1\t3\t4\t880000000\t9\n"), lambda directory: (directory / "u.data").write_bytes(b"")],
    ids=["extra-field", "empty"],
)
def test_a_ratings_file_that_cannot_be_read_is_a_503_from_the_features_api(
    make_app: Any, auth_headers: dict, tmp_path: Path, mutate: Callable[[Path], object]
) -> None:
    """No snapshot loaded: the features are computed from the local files. pandas' ParserError
    (a row with an extra field) was not a DataUnavailableError, and zero ratings died on the
    empty frames' dtypes (UFuncTypeError): both a bare 500."""
    directory = write_grouplens(tmp_path / "bad-data")
    mutate(directory)
    client = make_app(data_dir=directory).test_client()
    response = client.get("/api/users/1/features", headers=auth_headers)
    assert response.status_code == 503, response.get_json()
    assert "u.data" in response.get_json()["error"]["message"]


def test_a_known_users_newest_feedback_score_wins_within_the_same_second(tmp_path: Path) -> None:
    """As above, but r2's 4 and r1's changed 5 were acknowledged in the same second (two tabs, a
    double click): training timestamps are whole seconds, and that tie went to the higher
    feedback id, r2's older score. The acknowledgement times themselves tell them apart."""
    data = load_directory(write_grouplens(tmp_path / "data"))
    older, newer = datetime(2026, 1, 2, 0, 0, 0, 300_000, UTC), datetime(2026, 1, 2, 0, 0, 0, 800_000, UTC)
    feedback = pd.DataFrame(
        [
            (1, "r1", 10, 5.0, older, newer, 5, None, None, None),
            (2, "r2", 10, 4.0, older, older, 5, None, None, None),
        ],
        columns=FEEDBACK_COLUMNS,
    )
    ratings, users, _ = feedback_to_ratings(
        feedback, data.users["user_id"].to_numpy(), data.items["movie_id"].to_numpy()
    )
    merged = merge_feedback(data, ratings, users).ratings
    pair = merged[(merged["user_id"] == 5) & (merged["movie_id"] == 10)]
    assert pair["rating"].tolist() == [5.0]
