"""Raw ml-100k files a data engineer re-exported: extra fields per line, a pair rated twice."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from app.recommender.data import DataFormatError, load_directory
from tests.helpers import fail_for_path, free_port
from tests.synthetic import write_grouplens

pytestmark = pytest.mark.unit


def _every_line(name: str, suffix: str) -> Callable[[Path], None]:
    def mutate(directory: Path) -> None:
        path = directory / name
        lines = path.read_bytes().decode("latin-1").splitlines()
        path.write_bytes("".join(f"{line}{suffix}\n" for line in lines).encode("latin-1"))

    return mutate


@pytest.mark.parametrize(
    "mutate",
    [_every_line("u.data", "\t"), _every_line("u.user", "|"), _every_line("u.item", "|")],
    ids=["u.data", "u.user", "u.item"],
)
def test_a_trailing_separator_on_every_line_loads_the_same_tables(
    tmp_path: Path, mutate: Callable[[Path], None]
) -> None:
    """A spreadsheet or ``awk`` export often ends each line with the separator. pandas then took
    the first column as the index and shifted every field: u.user was refused as "user_id must
    be unique" showing ages, u.data as "rating must be 0.5..5.0" showing timestamps."""
    expected = load_directory(write_grouplens(tmp_path / "plain"))
    directory = write_grouplens(tmp_path / "trailing")
    mutate(directory)
    assert load_directory(directory).fingerprint() == expected.fingerprint()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (_every_line("u.data", "\tweb"), r"u\.data: 5 fields .*expected 4 \(user_id, movie_id, rating"),
        (_every_line("u.user", "|x"), r"u\.user: 6 fields .*expected 5"),
    ],
    ids=["u.data", "u.user"],
)  # fmt: skip
def test_an_extra_column_is_refused_as_one(
    tmp_path: Path, mutate: Callable[[Path], None], message: str
) -> None:
    """An extra column is named as such, not reported as bad values of a shifted field."""
    directory = write_grouplens(tmp_path / "extra")
    mutate(directory)
    with pytest.raises(DataFormatError, match=message):
        load_directory(directory)


def test_a_user_movie_pair_rated_twice_is_refused(tmp_path: Path) -> None:
    """Two ratings of one movie by one user were averaged into a rating nobody gave (1 and 5 → 3).
    The refusal names both lines: it named the repeat alone, and in 100,000 lines the rating it
    repeats had to be searched for by hand."""
    directory = write_grouplens(tmp_path / "twice")
    path = directory / "u.data"
    lines = path.read_text().splitlines()
    user, movie, _rating, stamp = lines[2].split("\t")
    path.write_text(path.read_text() + f"{user}\t{movie}\t1\t{int(stamp) + 1}\n")
    with pytest.raises(
        DataFormatError,
        match=rf"u\.data: \(user_id, movie_id\) must be unique \(one rating per user and movie\) "
        rf"\(1 bad rows; line {len(lines) + 1}: '{user}, {movie}, first rated on line 3'\)",
    ):
        load_directory(directory)


@pytest.mark.parametrize("problem", ["refused-data", "database-unreachable"])
def test_features_build_reports_a_refused_data_set_or_database_as_an_error_not_a_traceback(
    make_settings: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, problem: str
) -> None:
    """`movierec features build` printed a 40-line traceback for a DataFormatError (a rating of 9)
    or a database it could not reach; now one `Error:` line naming the problem, exit status 1."""
    from click.testing import CliRunner

    import app.pipeline.commands as commands
    from app.cli import cli

    overrides: dict[str, Any] = {"features_root": str(tmp_path / "features")}
    if problem == "refused-data":
        directory = write_grouplens(tmp_path / "bad")
        (directory / "u.data").write_text((directory / "u.data").read_text() + "1\t3\t9\t880000000\n")
        overrides["data_dir"] = directory
        expected = r"Error: u\.data: rating must be 0\.5\.\.5\.0"
    else:
        overrides["database_url"] = (
            "postgresql+psycopg://movierec:secret-pw@127.0.0.1:1/none"  # nothing listens
        )
        expected = r"Error: the service database cannot be reached"
    monkeypatch.setattr(commands, "settings_for_cli", lambda **_: make_settings(**overrides))
    result = CliRunner().invoke(cli, ["features", "build"])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert re.search(expected, result.output), result.output
    assert "secret-pw" not in result.output
    assert not (tmp_path / "features" / "LATEST").exists()


def test_features_build_reports_a_features_store_it_cannot_write_as_an_error_not_a_traceback(
    make_settings: Any, synthetic_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A features root that is a file (or on a full or read-only disk) was a traceback ending in
    NotADirectoryError; now one `Error:` line naming the store, and nothing loaded."""
    from click.testing import CliRunner

    import app.pipeline.commands as commands
    from app.cli import cli
    from app.storage.user_features import user_features_snapshot

    root = tmp_path / "features"
    root.write_text("not a directory")
    settings = make_settings(features_root=str(root), data_dir=synthetic_data_dir)
    monkeypatch.setattr(commands, "settings_for_cli", lambda **_: settings)
    result = CliRunner().invoke(cli, ["features", "build"])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert re.search(
        rf"Error: the features store {re.escape(str(root))}: .*Not a directory",
        result.output,
    ), result.output
    from app.storage.db import Database

    database = Database(settings.sqlalchemy_url)
    try:
        assert user_features_snapshot(database) == (None, 0)
    finally:
        database.dispose()


def test_train_reports_a_refused_data_set_as_an_error_not_a_traceback(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from app.cli import cli

    directory = write_grouplens(tmp_path / "bad")
    (directory / "u.data").write_text((directory / "u.data").read_text() + "1\t3\t9\t880000000\n")
    command = ["train", "--data-dir", str(directory), "--model-dir", str(tmp_path / "model"), "--seeds", "0"]
    result = CliRunner().invoke(cli, command)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
    assert "Error: u.data: rating must be 0.5..5.0" in result.output


@pytest.mark.parametrize("query", ["", "   ", "/* the users */", ";"])
def test_sql_without_a_statement_is_an_error_line(
    synthetic_data: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, query: str
) -> None:
    """`movierec sql ""` (an empty variable in a script, a query commented out) was an
    AttributeError traceback: DuckDB returns no result at all for no statement."""
    from click.testing import CliRunner

    from app.cli import cli
    from app.pipeline.features_store import FeatureStore
    from app.pipeline.ingest import Ingested

    root = tmp_path / "features"
    FeatureStore(root).write_snapshot(Ingested(synthetic_data))
    result = CliRunner().invoke(cli, ["sql", "--root", str(root), query])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
    assert "Error: no SQL statement to run" in result.output


def test_sql_json_keeps_every_digit_of_a_feature(synthetic_data: Any, tmp_path: Path) -> None:
    """`--format json` wrote 10 decimals (pandas' default): a mean rating of 3.5955882352941178
    came out as 3.5955882353, unequal to the features API's and the CSV's value."""
    import json

    from click.testing import CliRunner

    from app.cli import cli
    from app.pipeline.features_store import FeatureStore
    from app.pipeline.ingest import Ingested

    root = tmp_path / "features"
    store = FeatureStore(root)
    store.write_snapshot(Ingested(synthetic_data))
    query = "select user_id, mean_rating, std_rating, share_action * 1e-12 as tiny from users order by 1"
    result = CliRunner().invoke(cli, ["sql", "--root", str(root), "--format", "json", query])
    assert result.exit_code == 0, result.output
    expected = store.sql(query).to_dict("records")
    assert json.loads(result.output) == expected


def test_sql_json_writes_maps_with_number_keys_and_lists_with_nulls(
    synthetic_data: Any, tmp_path: Path
) -> None:
    """`--format json` died with a TypeError traceback on a map keyed by numbers ('Dict key must be
    str': `select histogram(age) from users`) and on a list holding a NULL (an object array,
    'Type is not JSON serializable: numpy.ndarray'); the table and CSV formats wrote both."""
    import json

    from click.testing import CliRunner

    from app.cli import cli
    from app.pipeline.features_store import FeatureStore
    from app.pipeline.ingest import Ingested

    root = tmp_path / "features"
    FeatureStore(root).write_snapshot(Ingested(synthetic_data))
    query = (
        "select histogram(gender) as genders, histogram(age % 2) as parity, "
        "list(case when age > 30 then occupation end order by user_id)[1:3] as some, "
        "[1.5, null] as halves, [[date '2020-01-02', null]] as dates from users"
    )
    result = CliRunner().invoke(cli, ["sql", "--root", str(root), "--format", "json", query])
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.output)
    users = synthetic_data.users
    assert row["genders"] == users["gender"].value_counts().to_dict()
    assert row["parity"] == {str(k): v for k, v in (users["age"] % 2).value_counts().to_dict().items()}
    over = users.sort_values("user_id")["age"].gt(30).head(3).tolist()
    assert [value is not None for value in row["some"]] == over
    assert row["halves"] == [1.5, None]
    assert row["dates"] == [["2020-01-02T00:00:00", None]]


def _replace_in_every_line(name: str, old: str, new: str) -> Callable[[Path], None]:
    def mutate(directory: Path) -> None:
        path = directory / name
        path.write_bytes(path.read_bytes().decode("latin-1").replace(old, new).encode("latin-1"))

    return mutate


def _drop_last_field(name: str, sep: str) -> Callable[[Path], None]:
    def mutate(directory: Path) -> None:
        path = directory / name
        lines = path.read_bytes().decode("latin-1").splitlines()
        path.write_bytes("".join(line.rsplit(sep, 1)[0] + "\n" for line in lines).encode("latin-1"))

    return mutate


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (_replace_in_every_line("u.data", "\t", ","),
         r"u\.data: 1 field in the first line, expected 4 \(user_id, movie_id, rating, timestamp\) "
         r"separated by tabs"),
        (_replace_in_every_line("u.user", "|", "\t"),
         r"u\.user: 1 field in the first line, expected 5 .* separated by '\|'"),
        (_drop_last_field("u.data", "\t"), r"u\.data: 3 fields in the first line, expected 4 "),
        (_drop_last_field("u.user", "|"), r"u\.user: 4 fields in the first line, expected 5 "),
    ],
    ids=["u.data-commas", "u.user-tabs", "u.data-no-timestamp", "u.user-no-zip"],
)  # fmt: skip
def test_a_wrong_separator_or_a_missing_column_is_refused_as_one(
    tmp_path: Path, mutate: Callable[[Path], None], message: str
) -> None:
    """A file split by another separator was one field per line: its first line (no number in
    that one field) was dropped as a header and the rest refused as "user_id must be 1..", showing
    whole lines from the second on. A missing column was "timestamp must be epoch seconds" for
    every row. Both are now named as such: how many fields, how many expected, split by what."""
    directory = write_grouplens(tmp_path / "short")
    mutate(directory)
    with pytest.raises(DataFormatError, match=message):
        load_directory(directory)


def _first_rating_made(name: str, rating: str, before: str) -> Callable[[Path], None]:
    """The first data line's rating set to ``rating``, ``before`` put ahead of the first line."""

    def mutate(directory: Path) -> None:
        path = directory / name
        lines = path.read_text().splitlines(keepends=True)
        first = 1 if name.endswith(".inter") else 0  # the registry-package files have a header
        fields = lines[first].split("\t")
        fields[2] = rating
        lines[first] = "\t".join(fields)
        path.write_text(before + "".join(lines))

    return mutate


@pytest.mark.parametrize(
    ("layout", "mutate", "line"),
    [
        ("grouplens", _first_rating_made("u.data", "9", ""), 1),
        ("grouplens", _first_rating_made("u.data", "9", "user_id\tmovie_id\trating\ttimestamp\n"), 2),
        ("grouplens", _first_rating_made("u.data", "9", "\n\n\n"), 4),
        ("grouplens", _first_rating_made("u.data", "9", "user_id\tmovie_id\trating\ttimestamp\r\n\r\n"), 3),
        ("recbole", _first_rating_made("ml-100k.inter", "9", ""), 2),
        ("recbole", _first_rating_made("ml-100k.inter", "9", "\n"), 3),
    ],
    ids=["plain", "header", "blank-lines", "header-crlf-blank", "registry-header", "registry-blank"],
)
def test_a_refused_value_is_named_by_its_line_in_the_file(
    tmp_path: Path, layout: str, mutate: Callable[[Path], None], line: int
) -> None:
    """Refusals named "row N", the position among the parsed rows: a header line or blank lines
    put the bad value N lines further down than the message said (the registry-package files,
    the layout `movierec data fetch` gets, always have a header: every row was one line off)."""
    from tests.synthetic import write_recbole

    directory = (write_grouplens if layout == "grouplens" else write_recbole)(tmp_path / layout)
    mutate(directory)
    with pytest.raises(
        DataFormatError, match=rf"rating must be 0\.5\.\.5\.0 \(1 bad rows; line {line}: '?9'?\)"
    ):
        load_directory(directory)


@pytest.mark.parametrize("command", [["features", "build"], ["db", "upgrade"], ["serve"]])
def test_a_database_migrated_by_a_newer_release_is_a_one_line_error(
    make_settings: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    """After a rollback, the database's schema revision is one this code has no migration for:
    alembic's CommandError ("Can't locate revision") came out as a traceback. It is now one
    `Error:` line naming the revision and what to do, exit 1, and the features are not loaded.
    `movierec serve` let the same DatabaseSchemaError out as a traceback; it is the same line."""
    from click.testing import CliRunner
    from sqlalchemy import text

    import app.pipeline.commands as commands
    from app.cli import cli
    from app.storage.db import Database

    settings = make_settings(features_root=str(tmp_path / "features"))
    database = Database(settings.sqlalchemy_url)
    database.upgrade()
    with database.engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '0099_from_a_newer_release'"))
    database.dispose()
    monkeypatch.setattr(commands, "settings_for_cli", lambda **_: settings)
    monkeypatch.setattr("app.run_development_server", lambda *args: pytest.fail("the server was started"))
    port = ["--port", str(free_port())] if command == ["serve"] else []
    result = CliRunner().invoke(cli, [*command, *port])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert re.search(
        r"Error: .*schema revision '?0099_from_a_newer_release'?.*newer release", result.output
    ), result.output
    assert not (tmp_path / "features" / "LATEST").exists()


@pytest.mark.parametrize("layout", ["grouplens", "recbole"])
def test_a_title_with_double_quotes_is_kept_as_written(tmp_path: Path, layout: str) -> None:
    """The raw files have no quoting: a title starting with a double quote was read as a CSV quoted
    field, so '"Weird Al" Yankovic Live' became 'Weird Al Yankovic Live', and one with a lone
    opening quote swallowed the lines after it (or the rest of the file) into its title."""
    from tests.synthetic import write_recbole

    titles = ['"Weird Al" Yankovic Live', '"Open quote', 'Say "Hi"']
    if layout == "grouplens":
        directory, name, sep, field = write_grouplens(tmp_path / "gl"), "u.item", "|", 1
    else:
        directory, name, sep, field = write_recbole(tmp_path / "rb"), "ml-100k.item", "\t", 1
    expected = load_directory(directory)
    path = directory / name
    lines = path.read_bytes().decode("latin-1").splitlines()
    first = 0 if layout == "grouplens" else 1  # past recbole's header
    for offset, title in enumerate(titles):
        fields = lines[first + offset].split(sep)
        year = fields[field].rsplit(" (", 1)[1] if layout == "grouplens" else ""
        fields[field] = f"{title} ({year}" if year else title
        lines[first + offset] = sep.join(fields)
    path.write_bytes("".join(f"{line}\n" for line in lines).encode("latin-1"))

    loaded = load_directory(directory)
    assert len(loaded.items) == len(expected.items)
    assert [t.rsplit(" (", 1)[0] for t in loaded.items["title"].iloc[:3]] == titles
    assert loaded.items["title"].iloc[3:].tolist() == expected.items["title"].iloc[3:].tolist()


def test_a_title_of_spaces_alone_is_the_unknown_title_not_an_empty_one(tmp_path: Path) -> None:
    """An empty u.item title is 'unknown' (GroupLens' movie 267), but one of spaces was stripped
    after that test and loaded as the title '': recommended as such, and never scorable, as
    /api/recommend/score refuses an empty movie title."""
    directory = write_grouplens(tmp_path / "blank")
    path = directory / "u.item"
    lines = path.read_bytes().decode("latin-1").splitlines()
    fields = lines[2].split("|")
    fields[1] = "   "
    lines[2] = "|".join(fields)
    path.write_bytes("".join(f"{line}\n" for line in lines).encode("latin-1"))
    items = load_directory(directory).items.set_index("movie_id")
    assert items.loc[3, "title"] == "unknown"
    assert (items["title"].str.strip() != "").all()


@pytest.mark.parametrize("layout", ["grouplens", "recbole"])
def test_a_title_too_long_to_be_scored_is_refused_naming_its_line(tmp_path: Path, layout: str) -> None:
    """/api/recommend/score takes a movie title of at most 255 characters (the feedback table's
    column): a longer catalogue title loaded, was recommended, and every score of it was a 400."""
    from tests.synthetic import write_recbole

    if layout == "grouplens":
        directory, name, sep, first = write_grouplens(tmp_path / "gl"), "u.item", "|", 0
    else:
        directory, name, sep, first = write_recbole(tmp_path / "rb"), "ml-100k.item", "\t", 1
    path = directory / name
    original = path.read_bytes()
    suffix = " (1983)" if layout == "grouplens" else ""  # recbole's title gets its year appended
    for length, refused in ((255, False), (256, True)):
        lines = original.decode("latin-1").splitlines()
        fields = lines[first + 2].split(sep)
        fields[1] = "T" * (length - len(" (1983)")) + suffix
        lines[first + 2] = sep.join(fields)
        path.write_bytes("".join(f"{line}\n" for line in lines).encode("latin-1"))
        if refused:
            refusal = rf"{re.escape(name)}: title must be 1\.\.255 characters \(1 bad rows; line {first + 3}:"
            with pytest.raises(DataFormatError, match=refusal):
                load_directory(directory)
        else:
            assert len(load_directory(directory).items.set_index("movie_id").loc[3, "title"]) == 255


@pytest.mark.parametrize("layout", ["grouplens", "recbole"])
def test_a_title_with_a_nul_character_is_refused_naming_its_line(tmp_path: Path, layout: str) -> None:
    """PostgreSQL's text and JSON cannot hold a NUL. A title with one (a damaged byte) loaded and
    was recommended; on PostgreSQL every score of it was answered 200 but refused by the database
    (kept in the journal's rejected.jsonl, never a rating), and the online monitor's quality query
    over the lists served failed every round while that list was among them."""
    from tests.synthetic import write_recbole

    if layout == "grouplens":
        directory, name, sep, first = write_grouplens(tmp_path / "gl"), "u.item", "|", 0
    else:
        directory, name, sep, first = write_recbole(tmp_path / "rb"), "ml-100k.item", "\t", 1
    path = directory / name
    lines = path.read_bytes().decode("latin-1").splitlines()
    fields = lines[first + 2].split(sep)
    fields[1] = "Caf\x00e" + fields[1]
    lines[first + 2] = sep.join(fields)
    path.write_bytes("".join(f"{line}\n" for line in lines).encode("latin-1"))
    refusal = rf"{re.escape(name)}: title must hold no NUL character \(1 bad rows; line {first + 3}: "
    with pytest.raises(DataFormatError, match=refusal + r"'Caf\\x00e"):
        load_directory(directory)


def test_a_genre_flag_that_is_not_a_number_is_named_by_its_line(tmp_path: Path) -> None:
    """One flag 'x' (or a title with a '|' on a line one flag short) made pandas read the whole
    column as text, and every line was refused: '60 bad rows; line 1: ['0', ...]' sent the
    data engineer to line 1, which is fine."""
    directory = write_grouplens(tmp_path / "flag")
    path = directory / "u.item"
    lines = path.read_bytes().decode("latin-1").splitlines()
    fields = lines[4].split("|")
    fields[5] = "x"  # the 'unknown' genre flag of line 5
    lines[4] = "|".join(fields)
    path.write_bytes("".join(f"{line}\n" for line in lines).encode("latin-1"))
    with pytest.raises(
        DataFormatError, match=r"u\.item: genre flags must be 0 or 1 \(1 bad rows; line 5: \['x'"
    ):
        load_directory(directory)


def _with_release_dates(directory: Path, dates: dict[int, str]) -> Path:
    """u.item with the release date of the given (0-based) lines replaced."""
    path = directory / "u.item"
    lines = path.read_bytes().decode("latin-1").splitlines()
    for index, date in dates.items():
        fields = lines[index].split("|")
        fields[2] = date
        lines[index] = "|".join(fields)
    path.write_bytes("".join(f"{line}\n" for line in lines).encode("latin-1"))
    return directory


@pytest.mark.parametrize("date", ["32-Foo-1995", "1995", "31-Feb-1995", "01-01-1995", "x"])
def test_a_release_date_that_is_no_date_is_named_by_its_line(tmp_path: Path, date: str) -> None:
    """A u.item release date that did not parse became "no year", silently (the movie's year
    feature missing), where every other bad field is refused naming its line."""
    directory = _with_release_dates(write_grouplens(tmp_path / "date"), {6: date})
    with pytest.raises(
        DataFormatError,
        match=rf"u\.item: release date must be a date like 01-Jan-1995, or empty "
        rf"\(1 bad rows; line 7: '{date}'\)",
    ):
        load_directory(directory)


def test_an_empty_release_date_is_no_year(tmp_path: Path) -> None:
    """GroupLens' own u.item has one: movie 267, "unknown", has no release date at all."""
    directory = _with_release_dates(write_grouplens(tmp_path / "empty"), {6: "", 7: " "})
    items = load_directory(directory).items.set_index("movie_id")
    assert items["year"].isna().sum() == 2
    assert items["year"].notna().sum() == len(items) - 2


@pytest.mark.parametrize("year", ["1995.5", "inf", "99999999999999999999999", "1e10", "-5"])
def test_a_recbole_release_year_that_is_no_year_is_named_by_its_line(tmp_path: Path, year: str) -> None:
    """ml-100k.item's release_year was cast as it came: '1995.5', 'inf' or a number beyond 64 bits
    raised a bare TypeError or OverflowError (a traceback of `features build` and `train`, a 500 of
    the features API computed from the local files), and '1e10' and '-5' became titles 'Movie (-5)'.
    Text stays no year: the registry's own file has 'unkonwn' and 'V'."""
    from tests.synthetic import write_recbole

    directory = write_recbole(tmp_path / "rb")
    path = directory / "ml-100k.item"
    lines = path.read_text().splitlines()
    fields = lines[3].split("\t")
    fields[2] = year
    lines[3] = "\t".join(fields)
    path.write_text("".join(f"{line}\n" for line in lines))
    rule = r"release_year must be a year 1\.\.9999, or no number \(no year\)"
    refusal = rf"ml-100k\.item: {rule} \(1 bad rows; line 4: '{re.escape(year)}'\)"
    with pytest.raises(DataFormatError, match=refusal):
        load_directory(directory)


def test_an_empty_recbole_release_year_is_no_year(tmp_path: Path) -> None:
    from tests.synthetic import write_recbole

    directory = write_recbole(tmp_path / "rb")
    path = directory / "ml-100k.item"
    lines = path.read_text().splitlines()
    for number, year in ((3, ""), (4, " "), (5, "1995.0"), (6, "unkonwn"), (7, "V")):
        fields = lines[number].split("\t")
        fields[2] = year
        lines[number] = "\t".join(fields)
    path.write_text("".join(f"{line}\n" for line in lines))
    items = load_directory(directory).items.set_index("movie_id")
    assert items.loc[[3, 4, 6, 7], "year"].isna().all()
    assert items.loc[7, "title"] == "Movie 7"
    assert items.loc[5, "year"] == 1995 and items.loc[5, "title"] == "Movie 5 (1995)"


def test_a_recbole_genre_outside_the_vocabulary_is_refused_at_load(
    make_settings: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ml-100k.item's class column was taken as it came: a genre spelled 'Sci-fi' loaded (and
    `movierec data fetch` cached it), then `movierec features build` and `train` died with a
    ValueError traceback ('unknown genres in the catalogue') in the features."""
    from click.testing import CliRunner

    import app.pipeline.commands as commands
    from app.cli import cli
    from tests.synthetic import write_recbole

    directory = write_recbole(tmp_path / "rb")
    path = directory / "ml-100k.item"
    lines = path.read_text().splitlines()
    fields = lines[3].split("\t")
    fields[3] = "Action Sci-fi"
    lines[3] = "\t".join(fields)
    path.write_text("".join(f"{line}\n" for line in lines))
    with pytest.raises(
        DataFormatError, match=r"ml-100k\.item: class .*\(1 bad rows; line 4: 'Action Sci-fi'\)"
    ):
        load_directory(directory)

    overrides = {"features_root": str(tmp_path / "features"), "data_dir": directory}
    monkeypatch.setattr(commands, "settings_for_cli", lambda **_: make_settings(**overrides))
    result = CliRunner().invoke(cli, ["features", "build"])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert re.search(r"Error: ml-100k\.item: class must be", result.output), result.output


@pytest.mark.parametrize("layout", ["grouplens", "recbole"])
def test_a_movie_without_any_genre_is_of_the_unknown_genre(tmp_path: Path, layout: str) -> None:
    """A u.item line with every genre flag 0 (or an ml-100k.item class of spaces alone) loaded as
    genres '', and the features of every user died on it with a bare ValueError ('unknown genres
    in the catalogue: ['']'): a traceback of `movierec features build` and `train`, a 500 of the
    features API computed from the local files. No genre is GroupLens' 'unknown' genre, as an
    empty recbole class already was."""
    from app.recommender.features import item_features, user_features
    from tests.synthetic import write_recbole

    if layout == "grouplens":
        directory = write_grouplens(tmp_path / "gl")
        path, sep, first = directory / "u.item", "|", 0
    else:
        directory = write_recbole(tmp_path / "rb")
        path, sep, first = directory / "ml-100k.item", "\t", 1
    lines = path.read_bytes().decode("latin-1").splitlines()
    fields = lines[first + 2].split(sep)
    if layout == "grouplens":
        fields[5:] = ["0"] * (len(fields) - 5)
    else:
        fields[3] = " "
    lines[first + 2] = sep.join(fields)
    path.write_bytes("".join(f"{line}\n" for line in lines).encode("latin-1"))

    data = load_directory(directory)
    assert data.items.set_index("movie_id").loc[3, "genres"] == "unknown"
    movies = item_features(data.ratings, data.items).set_index("movie_id")
    assert movies.loc[3, "genre_unknown"] == 1
    assert len(user_features(data.ratings, data.users, data.items)) == len(data.users)


@pytest.mark.parametrize("byte", [b"\xc2\x85", b"\x0c", b"\x1c"], ids=["NEL", "form feed", "file separator"])
def test_a_first_title_with_a_character_python_breaks_lines_at_loads(tmp_path: Path, byte: bytes) -> None:
    """The first line's field count was taken with str.splitlines(), which also breaks at U+0085
    (Latin-1 byte 0x85, Windows' '…'), form feeds and \\x1c-\\x1e; pandas does not. A u.item whose
    first title held one was refused as '2 fields in the first line, expected 24'. (U+0085 in UTF-8:
    a byte 0x85 in a file that is not UTF-8 is read as Windows-1252's '…'.)"""
    directory = write_grouplens(tmp_path / "gl")
    path = directory / "u.item"
    lines = path.read_bytes().split(b"\n")
    fields = lines[0].split(b"|")
    fields[1] = b"Wait" + byte + b" what (1995)"
    lines[0] = b"|".join(fields)
    path.write_bytes(b"\n".join(lines))
    title = load_directory(directory).items["title"].iloc[0]
    assert title == "Wait" + byte.decode("utf-8") + " what (1995)"


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("u.item", PermissionError(13, "Permission denied")),
        ("u.data", OSError(5, "Input/output error")),
    ],
    ids=["permission-denied", "io-error"],
)
def test_features_build_reports_a_raw_file_it_cannot_read_as_an_error_not_a_traceback(
    make_settings: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    error: OSError,
) -> None:
    """A raw file the command may not read (permission denied) or whose disk fails (EIO) ended
    `movierec features build` in a traceback; now one `Error:` line naming the file, exit 1.
    Tests run as root, where chmod 000 denies nothing, so the read itself is made to fail."""
    from click.testing import CliRunner

    import app.pipeline.commands as commands
    from app.cli import cli

    directory = write_grouplens(tmp_path / "data")
    unreadable = directory / name
    fail_for_path(monkeypatch, "read_bytes", unreadable, error)
    settings = make_settings(features_root=str(tmp_path / "features"), data_dir=directory)
    monkeypatch.setattr(commands, "settings_for_cli", lambda **_: settings)
    result = CliRunner().invoke(cli, ["features", "build"])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.output.startswith(f"Error: {unreadable}: cannot be read: {error.strerror}"), result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "features" / "LATEST").exists()


def _add_user(directory: Path, user_id: int) -> int:
    """Append raw user ``user_id`` (and a rating of theirs) to either layout; return the user's
    line in the users file."""
    grouplens = (directory / "u.user").exists()
    users = directory / ("u.user" if grouplens else "ml-100k.user")
    ratings = directory / ("u.data" if grouplens else "ml-100k.inter")
    sep = "|" if grouplens else "\t"
    users.write_text(users.read_text() + sep.join([str(user_id), "30", "M", "doctor", "12345"]) + "\n")
    ratings.write_text(ratings.read_text() + f"{user_id}\t3\t4\t880000000\n")
    return len(users.read_text().splitlines())


@pytest.mark.parametrize("layout", ["grouplens", "recbole"])
def test_a_raw_user_id_in_the_feedback_range_is_refused_at_load_naming_its_line(
    tmp_path: Path, layout: str
) -> None:
    """Ids above 1,000,000 are the synthetic feedback users' (one per scored anonymous request).
    Only ingest refused raw ones: `movierec train`, `evaluate`, `data fetch` and the features
    loaded them as feedback users (never evaluated, no precomputed list, mixed with real ones)."""
    from tests.synthetic import write_recbole

    directory = (write_grouplens if layout == "grouplens" else write_recbole)(tmp_path / layout)
    line = _add_user(directory, 1_000_001)
    users = "u.user" if layout == "grouplens" else "ml-100k.user"
    with pytest.raises(
        DataFormatError,
        match=rf"{re.escape(users)}: user_id must be 1\.\.1000000, ids above are reserved for feedback "
        rf"users \(1 bad rows; line {line}: '?1000001'?\)",
    ):
        load_directory(directory)


def test_raw_user_id_1000000_is_a_movielens_user_everywhere(tmp_path: Path) -> None:
    """The boundary was `>=` in ingest and the features' source, `>` in evaluation and batch
    inference: raw user 1,000,000 was refused by ingest but a MovieLens user to `movierec train`.
    Feedback users are numbered from 1,000,001, so 1,000,000 is the last raw id."""
    from app.pipeline.features_store import feature_tables
    from app.pipeline.ingest import ingest
    from app.recommender.data import is_feedback_user

    assert not is_feedback_user(1_000_000) and is_feedback_user(1_000_001)
    directory = write_grouplens(tmp_path / "data")
    _add_user(directory, 1_000_000)
    ingested = ingest(directory, None)
    assert 1_000_000 in ingested.data.users["user_id"].tolist()
    assert ingested.stats()["feedback_users"] == 0
    users = feature_tables(ingested)["users"]
    assert users.loc[users["user_id"] == 1_000_000, "source"].tolist() == ["movielens"]


@pytest.mark.parametrize("command", ["train", "evaluate", "fetch"])
def test_every_command_reading_raw_files_refuses_a_feedback_range_user(tmp_path: Path, command: str) -> None:
    from click.testing import CliRunner

    from app.cli import cli

    directory = write_grouplens(tmp_path / "raw")
    _add_user(directory, 2_000_000)
    args = {
        "train": [
            "train",
            "--data-dir",
            str(directory),
            "--model-dir",
            str(tmp_path / "model"),
            "--seeds",
            "0",
        ],
        "evaluate": [
            "evaluate",
            "--data-dir",
            str(directory),
            "--seeds",
            "0",
            "--out",
            str(tmp_path / "r.json"),
        ],
        "fetch": ["data", "fetch", "--source", str(directory), "--data-dir", str(tmp_path / "root")],
    }[command]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
    assert "u.user: user_id must be 1..1000000, ids above are reserved for feedback users" in result.output
    assert not (tmp_path / "model").exists() and not (tmp_path / "r.json").exists()
    assert not (tmp_path / "root" / "ml-100k").exists()


@pytest.mark.parametrize("name", ["ml-100k.inter", "ml-100k.user", "ml-100k.item"])
def test_a_registry_header_ending_in_a_tab_loads_the_same_tables(tmp_path: Path, name: str) -> None:
    """A tab after the header's last name is an unnamed, empty column the data lines may leave
    out: the lines are not short of a field for it (every line is counted since 2026-12-06)."""
    from tests.synthetic import write_recbole

    expected = load_directory(write_recbole(tmp_path / "plain"))
    path = write_recbole(tmp_path / "tab") / name
    path.write_text(path.read_text().replace("\n", "\t\n", 1))
    assert load_directory(path.parent).fingerprint() == expected.fingerprint()


@pytest.mark.parametrize(("layout", "name"), [("grouplens", "u.data"), ("recbole", "ml-100k.inter")])
def test_a_line_of_tabs_alone_is_named_by_its_line(tmp_path: Path, layout: str, name: str) -> None:
    """A spreadsheet's empty row exported as its tabs alone is a row of empty fields to pandas,
    but was passed over as a blank line when rows were matched to lines (str.strip() takes tabs
    too): the rows no longer matched the lines one to one, and the refusal said "row 5", a
    position among the parsed rows, instead of the line."""
    from tests.synthetic import write_recbole

    directory = (write_grouplens if layout == "grouplens" else write_recbole)(tmp_path / layout)
    path = directory / name
    lines = path.read_text().splitlines(keepends=True)
    lines.insert(4, "\t" * 3 + "\n")
    path.write_text("".join(lines))
    with pytest.raises(
        DataFormatError, match=rf"{re.escape(name)}: user_id must be .* \(1 bad rows; line 5: "
    ):
        load_directory(directory)
