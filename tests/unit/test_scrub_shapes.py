"""The shapes a secret takes in real log text, each scrubbed by ``scrub_text``, and the text around
secret-looking words that must come through whole.

``scrub_text`` runs on every line the service logs and on every alert the monitor sends; what
these cases write is what a library's message, a config dump, a header or a debug line holds.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from app.monitoring.logs import REDACTED, scrub_text

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "scrubbed"),
    [
        # a colon and a space: YAML, a header, a debug line's "label: value"
        ("password: hunter2", f"password: {REDACTED}"),
        ("db password: hunter2 (from env)", f"db password: {REDACTED} (from env)"),
        ("password:hunter2", f"password:{REDACTED}"),
        ("password\t:\thunter2", f"password\t:\t{REDACTED}"),
        ("  smtp_password: hunter2\n  port: 587", f"  smtp_password: {REDACTED}\n  port: 587"),
        ("secret: s3cr3t-value", f"secret: {REDACTED}"),
        ("client_secret: abc123", f"client_secret: {REDACTED}"),
        ("token: abcdef123", f"token: {REDACTED}"),
        ("access_token: k123, refresh_token: r456", f"access_token: {REDACTED}, refresh_token: {REDACTED}"),
        ("X-Api-Key: k1234567", f"X-Api-Key: {REDACTED}"),
        ("x-auth-token: abc123", f"x-auth-token: {REDACTED}"),
        ("api_key: k123; apikey: k456", f"api_key: {REDACTED}; apikey: {REDACTED}"),
        ("passwd: hunter2", f"passwd: {REDACTED}"),
        # an equals sign with spaces round it: ini files, shell `set`, printed settings
        ("Password = hunter2", f"Password = {REDACTED}"),
        ("token= abc123", f"token= {REDACTED}"),
        ("password = 'hunter 2' port = 5432", f"password = '{REDACTED}' port = 5432"),
        # a quoted value after a colon, whole even with a space or the other quote in it
        ('password: "hunter 2"', f'password: "{REDACTED}"'),
        ("secret: 'it\"s'", f"secret: '{REDACTED}'"),
        ('{"note": "x", "password": "it\'s me"}', f'{{"note": "x", "password": "{REDACTED}"}}'),
        # JSON's escaped quote inside the value: the value runs to the quote that closes it
        ('{"password": "a\\"b c"}', f'{{"password": "{REDACTED}"}}'),
        # JSON held in a JSON string (a logged request body, a re-serialised event)
        ('"{\\"password\\": \\"hunter2\\"}"', f'"{{\\"password\\": \\"{REDACTED}\\"}}"'),
        (
            'body="{\\"user\\":\\"bob\\",\\"token\\":\\"abc 123\\"}"',
            f'body="{{\\"user\\":\\"bob\\",\\"token\\":\\"{REDACTED}\\"}}"',
        ),
        # Python reprs of bytes: b'...' (a secret read from a file, a header value)
        ("Config(jwt_secret=b'abc')", f"Config(jwt_secret=b'{REDACTED}')"),
        ("{'password': b'hunter2'}", f"{{'password': b'{REDACTED}'}}"),
        # libpq conninfo escapes a quote in a quoted value with a backslash
        ("host=db password='it\\'s' port=5432", f"host=db password='{REDACTED}' port=5432"),
    ],
)  # fmt: skip
def test_secret_key_value_shapes_are_scrubbed(text: str, scrubbed: str) -> None:
    assert scrub_text(text) == scrubbed


@pytest.mark.parametrize(
    "text",
    [
        "password: [REDACTED] already",
        "token: <token> from /api/login",
        "the password has 12 characters; token expired at 10:30",
        'set "password": "" to clear it',
        "user: bob, role: admin",
    ],
)
def test_text_around_secret_words_without_a_value_is_kept(text: str) -> None:
    assert scrub_text(text) == text


@pytest.mark.parametrize(
    "text",
    [
        "password: " * 100_000,
        "password:" * 100_000,
        "password = " * 100_000,
        'password: "' + "a" * 1_000_000,
        "password: '\\" * 100_000,
        '\\"password\\": \\"' * 60_000,
        '"password": "\\' * 80_000,
        "a password:" + "-" * 1_000_000,
        "x" * 1_000_000 + ":",
        "password" * 120_000 + ": x",
        "Authorization: " * 70_000,
        "authorization: bearer " * 50_000,
        '"Authorization": "Token ' * 40_000,
        "tokens: 1} " * 90_000,
        "token_at" * 125_000 + ": x",
        "password: token:" * 60_000,
        "password: " + ",;" * 500_000,
        "password: a, " * 80_000,
        "--password " * 90_000,
        "--password '" * 80_000,
        "--password 'a" + "b" * 1_000_000,
    ],
)
def test_key_value_scrubbing_stays_linear_on_a_hostile_megabyte(text: str) -> None:
    """The monitor scrubs a joined line of up to 1 MB whole: ~0.6 s here, where a pattern that
    rescanned the rest of the line from each key would take hours."""
    started = time.perf_counter()
    scrub_text(text)
    assert time.perf_counter() - started < 3.0


@pytest.mark.parametrize(
    ("text", "scrubbed"),
    [
        ("Authorization: Token abcdefghijkl", f"Authorization: Token {REDACTED}"),
        ("authorization: ApiKey k-123", f"authorization: ApiKey {REDACTED}"),
        ("Authorization: abcdefghijklmnop", f"Authorization: {REDACTED}"),
        # a short credential: the bearer/basic pattern alone wants 8 characters
        ("Authorization: Bearer abc123", f"Authorization: Bearer {REDACTED}"),
        ("Proxy-Authorization: Basic YTpi", f"Proxy-Authorization: Basic {REDACTED}"),
        ('{"Authorization": "Token abc123"}', f'{{"Authorization": "Token {REDACTED}"}}'),
        ("headers={'authorization': 'k123'}", f"headers={{'authorization': '{REDACTED}'}}"),
        ("Authorization=Digest-less k123 rest", f"Authorization={REDACTED} k123 rest"),
    ],
)
def test_authorization_values_are_scrubbed_whatever_their_scheme(text: str, scrubbed: str) -> None:
    assert scrub_text(text) == scrubbed


@pytest.mark.parametrize(
    "text",
    [
        "invalid access token: send one Authorization: Bearer <token>",
        "missing Authorization header",
        "Authorization: none sent",
    ],
)
def test_authorization_prose_is_kept(text: str) -> None:
    assert scrub_text(text) == text


@pytest.mark.parametrize(
    "text",
    [
        # what a secret's key names but is no secret: when it changed, what it is, where it is
        "password_changed_at=2026-12-01T10:00:00Z",
        "password_changed_at: 2026-12-01",
        '{"token_type": "bearer", "token_expires_in": 3600}',
        "token_type=bearer",
        "SESSION_PASSWORD_FILE=/run/secrets/session_password",
        "password_file: /run/secrets/pw",
        "min_password_length: 12",
        "compose-secrets: cannot read /run/secrets/jwt_secret",
        # counts: a plural key with a number
        "tokens: 3",
        "tokens=3 max_tokens=512",
        '{"revoked_tokens": 12}',
    ],
)
def test_what_names_a_secret_but_is_none_is_kept(text: str) -> None:
    assert scrub_text(text) == text


@pytest.mark.parametrize(
    ("text", "scrubbed"),
    [
        # a plural key's value that is not a count is still a secret (a list of tokens)
        ("tokens=abc123,def456", f"tokens={REDACTED},def456"),
        ("api_keys: k1234567", f"api_keys: {REDACTED}"),
        # a number under a singular key may be a secret (a one-time code, a PIN)
        ("otp_token=123456", f"otp_token={REDACTED}"),
        # a secret's key ending in a word that is no suffix
        ("PASSWORD_DATA=hunter2", f"PASSWORD_DATA={REDACTED}"),
        ("password_hash: $2b$12$abc", f"password_hash: {REDACTED}"),
    ],
)
def test_secrets_whose_keys_look_like_metadata_are_still_scrubbed(text: str, scrubbed: str) -> None:
    assert scrub_text(text) == scrubbed


def test_extras_that_name_a_secret_but_are_none_are_kept() -> None:
    from app.monitoring.logs import redact

    extras = {"password_changed_at": "2026-12-01", "token_type": "bearer", "password": "hunter2"}
    assert redact(extras) == {**extras, "password": REDACTED}


@pytest.mark.parametrize(
    ("text", "scrubbed"),
    [
        ("pwd=hunter2", f"pwd={REDACTED}"),
        ("Server=db;Uid=sa;Pwd=hunter2;Database=x", f"Server=db;Uid=sa;Pwd={REDACTED};Database=x"),
        ("db_pwd: hunter2", f"db_pwd: {REDACTED}"),
        ("cwd=/srv/movierec", "cwd=/srv/movierec"),
    ],
)
def test_pwd_the_short_name_for_a_password_is_scrubbed(text: str, scrubbed: str) -> None:
    from app.monitoring.logs import redact

    assert scrub_text(text) == scrubbed
    assert redact({"pwd": "hunter2", "cwd": "/srv"}) == {"pwd": REDACTED, "cwd": "/srv"}


def test_a_label_after_a_secret_word_is_no_value(tmp_path: Path) -> None:
    """The monitor's own error "SMTP password: MONITOR_SMTP_PASSWORD_FILE: /run/... is empty"
    names the variable to fix: a word ending in a colon is the next label, not a password."""
    from app.monitoring.alerts import PasswordSourceError, load_smtp_password

    empty = tmp_path / "smtp_password"
    empty.write_text("")
    with pytest.raises(PasswordSourceError) as caught:
        load_smtp_password(environ={"MONITOR_SMTP_PASSWORD_FILE": str(empty)})
    message = str(caught.value)
    assert "MONITOR_SMTP_PASSWORD_FILE" in message
    assert scrub_text(message) == message
    assert scrub_text("password: hunter2: extra") == f"password: {REDACTED} extra"


def test_the_cheap_test_before_the_key_value_patterns_never_skips_a_match() -> None:
    """The key-value patterns are tried only on text that names a secret word, found with a
    case-folded substring search: every character the patterns' case-insensitive matching takes
    for a letter of a word (the Kelvin sign for k, a long s, a dotless i) must pass it too."""
    import re

    from app.monitoring.logs import _TEXT_PATTERNS, _may_name_a_secret

    words = ["password", "passwd", "pwd", "passphrase", "secret", "token", "apikey", "api_key"]
    words += ["authorization", "private_key", "privatekey"]
    letters = sorted({c for word in words for c in word if c.isalpha()})
    every_character = "".join(map(chr, range(0x110000)))
    alike = {letter: re.findall(f"(?i){letter}", every_character) for letter in letters}
    for word in words:
        for i, letter in enumerate(word):
            for other in alike.get(letter, [letter]):
                spelled = word[:i] + other + word[i + 1 :]
                text = f"{spelled}: hunter2 {spelled}=hunter2"
                assert _may_name_a_secret(text), spelled
                assert any(pattern.search(text) for _, pattern, _ in _TEXT_PATTERNS), spelled


@pytest.mark.parametrize(
    "text",
    [
        "falls back to basic popularity ranking",
        "bearer authentication failed for 3 clients",
        "Basic Authentication is not offered",
        'WWW-Authenticate: Bearer realm="movierec", error="invalid_token"',
    ],
)
def test_a_word_after_bearer_or_basic_in_prose_is_kept(text: str) -> None:
    assert scrub_text(text) == text


@pytest.mark.parametrize(
    ("text", "leak"),
    [
        ("retrying with Bearer dGhpcyBpcyBhIHRva2Vu", "dGhpcyBpcyBhIHRva2Vu"),
        ("curl -H 'X: Basic dXNlcjpwYXNz'", "dXNlcjpwYXNz"),
        ("bearer 0123456789abcdef0123456789abcdef", "0123456789abcdef"),
        ("bearer opaque-token_value", "opaque-token_value"),
        # letters only after a capitalised "Bearer": a token, not prose
        ("auth failed for Bearer abcdefghijklmnop", "abcdefghijklmnop"),
        ("BASIC dXNlcjpwYXNzd29yZA", "dXNlcjpwYXNzd29yZA"),
    ],
)
def test_a_credential_after_bearer_or_basic_is_still_scrubbed(text: str, leak: str) -> None:
    assert leak not in scrub_text(text)


@pytest.mark.parametrize(
    ("text", "scrubbed"),
    [
        # a quoted value with no closing quote on its line (a message cut short by the library that
        # wrote it, a value with a line break in it): it was left whole, quoted or unquoted
        ("cannot connect with password='hunter2", f"cannot connect with password='{REDACTED}'"),
        ('{"token": "abc123', f'{{"token": "{REDACTED}"'),
        ("secret: 'line one\nnext line", f"secret: '{REDACTED}'\nnext line"),
    ],
)
def test_a_quoted_value_with_no_closing_quote_is_scrubbed_to_its_line_end(text: str, scrubbed: str) -> None:
    assert scrub_text(text) == scrubbed


@pytest.mark.parametrize(
    ("text", "scrubbed"),
    [
        # after a colon (YAML, a header, a label) a , or ; inside the value is part of it: only
        # key=value pairs are written one after another with them (a query string, a conninfo)
        ("password: abc;def,ghi", f"password: {REDACTED}"),
        ("  smtp_password: pa,ss;word\n", f"  smtp_password: {REDACTED}\n"),
        ("token: abc123, user: bob; role: admin", f"token: {REDACTED}, user: bob; role: admin"),
    ],
)
def test_a_value_after_a_colon_runs_to_the_next_space(text: str, scrubbed: str) -> None:
    assert scrub_text(text) == scrubbed


@pytest.mark.parametrize(
    ("text", "scrubbed"),
    [
        # a command line's option and its value (a failed command's text, an argv list's repr:
        # monitor-docker.py takes --password)
        ("psql --password hunter2 -h db", f"psql --password {REDACTED} -h db"),
        (
            "Command '['monitor-docker.py', 'movierec', '--password', 'hunter2']' returned 2",
            f"Command '['monitor-docker.py', 'movierec', '--password', '{REDACTED}']' returned 2",
        ),
        ('["run", "--db-password", "p w"]', f'["run", "--db-password", "{REDACTED}"]'),
        ("cli --token abc123 --verbose", f"cli --token {REDACTED} --verbose"),
    ],
)
def test_a_command_line_options_secret_value_is_scrubbed(text: str, scrubbed: str) -> None:
    assert scrub_text(text) == scrubbed


@pytest.mark.parametrize(
    "text",
    [
        "use --password-file instead",
        "--password is visible in ps",
        "pass --secrets-dir to choose another",
        "monitor --password --smtp-user bob",
    ],
)
def test_a_command_lines_words_around_a_secret_option_are_kept(text: str) -> None:
    assert scrub_text(text) == text


@pytest.mark.parametrize(
    ("text", "scrubbed"),
    [
        ("private_key: MIIEvQIBADANBg", f"private_key: {REDACTED}"),
        ("PRIVATE-KEY=MIIEvQIBADANBg", f"PRIVATE-KEY={REDACTED}"),
        ('{"privateKey": "MIIEvQIBADANBg"}', f'{{"privateKey": "{REDACTED}"}}'),
    ],
)
def test_a_private_keys_value_is_scrubbed_in_text_as_in_extra(text: str, scrubbed: str) -> None:
    from app.monitoring.logs import is_secret_key

    assert is_secret_key("private_key")
    assert scrub_text(text) == scrubbed
