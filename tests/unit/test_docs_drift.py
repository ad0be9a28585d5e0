"""The user documentation (README.md, docs/*.md) names only what exists: every ``MOVIEREC_*``
variable is a setting (or one of the few variables the scripts, Compose file or tests read), every
setting is documented, the settings tables' defaults are the settings' defaults, every
``movierec …`` command and option, ``make`` target and Compose service named in a command exists,
and every ``jq`` the docs read a container's journal with gets past uwsgi's plain-text lines.

Docs lag behind code changes: a renamed option or service in an example is a command that fails
for the reader who copies it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import click
import pytest
import yaml

from app.cli import cli
from app.config import Settings
from app.secret_files import FILE_SUFFIX, SECRET_VARIABLES

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
# docs/performance.md is a measurement log: it quotes the commands and settings of its day
DOCS = [REPO / "README.md", *sorted(p for p in (REPO / "docs").glob("*.md") if p.name != "performance.md")]
TEXT = {path.relative_to(REPO).as_posix(): path.read_text() for path in DOCS}

# MOVIEREC_* variables that are no setting of app/config.py, and the file that reads each
NOT_SETTINGS = {
    "MOVIEREC_HOST": "app/listener.py",
    "MOVIEREC_PORT": "app/listener.py",
    "MOVIEREC_HTTP_PORT": "docker-compose.yml",
    "MOVIEREC_SECRETS_DIR": "docker-compose.yml",
    "MOVIEREC_TAG": "docker-compose.yml",
    "MOVIEREC_LOAD_SCORES": "tests/integration/test_reliability_load.py",
}


def _setting_variables() -> dict[str, str]:
    """Every variable a setting is read from -> the setting's name."""
    names: dict[str, str] = {}
    for field, info in Settings.model_fields.items():
        names["MOVIEREC_" + field.upper()] = field
        alias = info.validation_alias
        for choice in getattr(alias, "choices", ()):
            names[str(choice)] = field
    return names


SETTINGS = _setting_variables()


def _code(text: str) -> list[str]:
    """The code spans and the lines of fenced code blocks: where a reader copies commands from."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    prose = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)
    spans = [span for _ticks, span in SPAN.findall(prose)]
    return [line for block in blocks for line in block.splitlines()] + spans


# A code span: a run of backticks, then text up to a run of as many (CommonMark), in one paragraph.
SPAN = re.compile(r"(?<!`)(`+)(?!`)((?:(?!\n\s*\n).)+?)(?<!`)\1(?!`)", re.DOTALL)


def test_no_code_span_is_left_open() -> None:
    """Every backtick outside the fenced blocks belongs to a code span closed in its paragraph: a
    span left open (a double-backtick span holding a backtick, read as single ones) had
    :func:`_code` read the rest of the doc with prose and code swapped, and hid 45 of
    docs/pipeline.md's commands from the checks below."""
    open_spans = []
    for doc, text in TEXT.items():
        prose = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)
        for line in SPAN.sub("", prose).splitlines():
            if "`" in line:
                open_spans.append(f"{doc}: {line.strip()[:120]!r}")
    assert not open_spans, "backticks of no closed code span:\n" + "\n".join(open_spans)


def test_every_movierec_variable_named_in_the_docs_exists() -> None:
    unknown = []
    for doc, text in TEXT.items():
        for name in sorted(set(re.findall(r"\bMOVIEREC_[A-Z0-9_]*[A-Z0-9]", text))):
            if name in SETTINGS or name in NOT_SETTINGS:
                continue
            if name.endswith(FILE_SUFFIX) and name.removesuffix(FILE_SUFFIX) in SECRET_VARIABLES:
                continue
            unknown.append(f"{doc}: {name}")
    assert not unknown, "variables no setting (app/config.py) reads:\n" + "\n".join(unknown)


def test_the_variables_that_are_no_setting_are_read_where_said() -> None:
    for name, reader in NOT_SETTINGS.items():
        assert name in (REPO / reader).read_text(), f"{reader} no longer reads {name}: update NOT_SETTINGS"


def test_every_setting_is_documented() -> None:
    everything = "\n".join(TEXT.values())
    missing = [
        variable
        for variable, field in SETTINGS.items()
        if variable.startswith("MOVIEREC_")
        # docs/operations.md's breaker table names them without the prefix, under `MOVIEREC_…`
        and not re.search(rf"\b{variable}\b|`{variable.removeprefix('MOVIEREC_')}`", everything)
        and not any(other != variable and re.search(rf"\b{other}\b", everything)
                    for other, same in SETTINGS.items() if same == field)
    ]  # fmt: skip
    assert not missing, f"settings no doc names: {missing}"


def _table_defaults() -> list[tuple[str, str, str]]:
    """(doc, variable, default) of every settings table row: `| `NAME` | default | meaning |`."""
    rows = []
    for doc, text in TEXT.items():
        prefixed = False
        for line in text.splitlines():
            if line.startswith("| setting") or line.startswith("| variable"):
                prefixed = "MOVIEREC_…" in line
                continue
            match = re.match(r"\| `([A-Z][A-Z0-9_]+)` \| ([^|]+) \|", line)
            if not match:
                continue
            name = (
                match.group(1)
                if match.group(1).startswith(("MOVIEREC_", "ML_", "SESSION_", "ADMIN_")) or (not prefixed)
                else "MOVIEREC_" + match.group(1)
            )
            if name in SETTINGS:
                rows.append((doc, name, match.group(2).strip().strip("`")))
    return rows


TABLE_DEFAULTS = _table_defaults()


def test_the_settings_tables_are_found() -> None:
    """The parser below still reads the tables (docs/pipeline.md's and operations.md's breaker one)."""
    assert {doc for doc, _, _ in TABLE_DEFAULTS} >= {"docs/pipeline.md", "docs/operations.md"}


@pytest.mark.parametrize(("doc", "variable", "documented"), TABLE_DEFAULTS)
def test_a_settings_table_gives_the_settings_default(doc: str, variable: str, documented: str) -> None:
    default = Settings.model_fields[SETTINGS[variable]].default
    if documented in ("—", "-"):
        assert default is None, f"{doc}: {variable} has the default {default!r}, documented as none"
    elif isinstance(default, bool):
        assert documented in ("true", "false"), f"{doc}: {variable}: {documented!r}"
        assert default == (documented == "true"), (
            f"{doc}: {variable} defaults to {default}, documented {documented}"
        )
    elif isinstance(default, int | float) and re.fullmatch(r"[0-9.,_]+", documented):
        assert float(documented.replace(",", "")) == default, f"{doc}: {variable} defaults to {default}"
    elif isinstance(default, str | Path) and not documented.startswith(("<", "SQLite", "models'")):
        assert documented == str(default), (
            f"{doc}: {variable} defaults to {str(default)!r}, not {documented!r}"
        )


def _commands() -> list[tuple[str, str]]:
    """(doc, text) of every `movierec …` command line in a code span or block."""
    found = []
    for doc, text in TEXT.items():
        for code in _code(text):
            # at the start of a line or after what runs a command: not a container or image name
            for match in re.finditer(r"(?:^\s*|[(;]\s*|&&\s*|bin/)movierec((?:\s+[^\s|;&#`)\\]+)+)", code):
                found.append((doc, "movierec" + match.group(1)))
    return found


COMMANDS = _commands()


def test_the_docs_name_movierec_commands() -> None:
    assert len(COMMANDS) > 20


@pytest.mark.parametrize(("doc", "command"), COMMANDS)
def test_every_movierec_command_and_option_in_the_docs_exists(doc: str, command: str) -> None:
    current: click.Command = cli
    options = {"--help"} | {name for param in cli.params for name in param.opts}
    for word in command.split()[1:]:
        if word.startswith("--"):
            option = word.split("=", 1)[0]
            assert option in options, f"{doc}: `{command}`: {current.name} has no option {option}"
        elif isinstance(current, click.Group) and re.fullmatch(r"[a-z][a-z-]*", word):
            sub = current.commands.get(word)
            if sub is None and current is cli and word in ("is", "are", "does", "and", "or"):
                return  # prose: "movierec is …"
            assert sub is not None, f"{doc}: `{command}`: {current.name} has no command {word!r}"
            current = sub
            options |= {name for param in sub.params for name in param.opts}
        elif not isinstance(current, click.Group) and not word.startswith("-"):
            continue  # an argument or an option's value


def _makefile_targets() -> set[str]:
    makefile = (REPO / "Makefile").read_text()
    return set(re.findall(r"^([a-z][a-z-]*):", makefile, re.MULTILINE))


def test_every_make_target_in_the_docs_exists() -> None:
    targets = _makefile_targets()
    unknown = [
        f"{doc}: make {target}"
        for doc, text in TEXT.items()
        for code in _code(text)
        for target in re.findall(r"(?:^|[\s(=;&])make +([a-z][a-z-]*)\b", code)
        if target not in targets
    ]
    assert not unknown, "\n".join(unknown)


def test_every_compose_service_in_a_docs_command_exists() -> None:
    services = set(yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"])
    verbs = "exec|run|logs|restart|stop|start|up|ps|kill|rm|pull|build|top"
    unknown = []
    for doc, text in TEXT.items():
        for code in _code(text):
            for match in re.finditer(rf"docker[ -]compose +(?:{verbs})((?: +[^\s`|;&#]+)*)", code):
                words = [w for w in match.group(1).split() if not w.startswith("-")]
                if words and words[0] not in services:
                    unknown.append(f"{doc}: `{match.group(0)}`: no service {words[0]!r}")
    assert not unknown, "\n".join(unknown)


def test_every_stop_grace_period_quoted_in_the_docs_is_docker_compose_yml_s() -> None:
    """A `stop_grace_period: ...` in the docs is a line of docker-compose.yml as it stands (the
    api's became ``${MOVIEREC_STOP_TIMEOUT_SECONDS:-60}s`` and docs/docker.md kept quoting 60s)."""
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    values = {
        str(service["stop_grace_period"]) for service in compose.values() if "stop_grace_period" in service
    }
    quoted = [
        (doc, match.group(1))
        for doc, text in TEXT.items()
        for code in _code(text)
        for match in re.finditer(r"stop_grace_period: *(\S+)", code)
    ]
    assert quoted, "the docs quote no stop_grace_period: is this test still needed?"
    stale = [f"{doc}: stop_grace_period: {value}" for doc, value in quoted if value not in values]
    assert not stale, f"not in docker-compose.yml ({sorted(values)}): " + "; ".join(stale)


def _journal_filters() -> list[tuple[str, str]]:
    """(doc, jq command) of every jq the docs pipe a container's journal into (in a table's cell
    a pipe is written ``\\|``, which GitHub's tables show as ``|``, in code spans too)."""
    return [
        (doc, match.group(1).replace("\\|", "|"))
        for doc, text in TEXT.items()
        for code in _code(text)
        for match in re.finditer(r"journalctl [^|`]*\\?\| *(jq [^']*'[^']*')", code)
    ]


JOURNAL_FILTERS = _journal_filters()
# what `journalctl … -o cat` gives for a container: uwsgi's plain-text lines between the app's JSON
JOURNAL = "\n".join(
    [
        "*** Starting uWSGI 2.0.31 (64bit) on [Sun Dec  6 12:00:00 2026] ***",
        '{"ts": "2026-12-06T12:00:01.000Z", "level": "ERROR", "message": "boom", "request_id": "r1"}',
        "[pid: 12|app: -|req: -/-] 10.0.0.1 () {30 vars in 400 bytes} [Sun Dec  6 12:00:02 2026] POST "
        "/api/recommend => generated 90 bytes in 3 msecs (HTTP/1.1 500) 2 headers in 70 bytes "
        "(1 switches on core 0)",
        "2026",  # a plain-text line that happens to be JSON (a number)
        '{"ts": "2026-12-06T12:00:03.000Z", "level": "ERROR", "message": "again", "request_id": "r1"}',
    ]
)


def test_the_docs_read_the_journal_with_jq() -> None:
    assert len(JOURNAL_FILTERS) >= 3


@pytest.mark.parametrize(("doc", "command"), JOURNAL_FILTERS)
def test_a_documented_jq_over_the_journal_reads_past_uwsgi_s_plain_text_lines(doc: str, command: str) -> None:
    """A container's journal starts with uwsgi's banner, and uwsgi's own lines (its request line of a
    4xx/5xx, workers spawned, HARAKIRI) come between the app's JSON ones. ``jq -c
    'select(.level=="ERROR")'``, as docs/operations.md gave it, stopped at the first of them (``parse
    error: Invalid numeric literal``, exit 4) and printed nothing: the operator found no error. Every
    documented filter must print each JSON line it selects, whatever lines come between."""
    import shlex
    import shutil
    import subprocess

    jq = shutil.which("jq")
    if jq is None:
        pytest.skip("jq is not installed")
    argv = shlex.split(re.sub(r'"(?:<[^>"]*>|…)"', '"r1"', command))  # a placeholder: the sample's id
    result = subprocess.run(  # the docs' own jq, on a sample
        [jq, *argv[1:]], input=JOURNAL, capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, f"{doc}: `{command}`: {result.stderr}"
    messages = [entry["message"] for entry in _json_values(result.stdout)]
    assert messages == ["boom", "again"], f"{doc}: `{command}` printed {result.stdout!r}"


def _json_values(text: str) -> list[dict]:  # type: ignore[type-arg]
    """The JSON values jq printed one after the other (compact with -c, indented without)."""
    decoder, values, at = json.JSONDecoder(), [], 0
    while text[at:].strip():
        value, at = decoder.raw_decode(text, at + len(text[at:]) - len(text[at:].lstrip()))
        values.append(value)
    return values
