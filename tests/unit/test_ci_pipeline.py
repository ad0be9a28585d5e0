"""bitbucket-pipelines.yml: the steps can run as written."""

from __future__ import annotations

import json
import shlex
import stat
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from app.secret_files import SECRET_VARIABLES, read_secret_file
from tests.helpers import PG_ADMIN_URL

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
PIPELINES: dict[str, Any] = yaml.safe_load((REPO / "bitbucket-pipelines.yml").read_text())


def _step(name: str) -> dict[str, Any]:
    steps = PIPELINES["definitions"]["steps"]
    return next(item["step"] for item in steps if item["step"]["name"].startswith(name))


def test_the_test_step_has_the_postgresql_and_redis_the_tests_use() -> None:
    """The unit and API tests run against PostgreSQL (tests/helpers.py PG_ADMIN_URL) and Redis on
    127.0.0.1; the step declared neither service, so every test that needs one was skipped in CI
    ("PostgreSQL is not reachable") and the job still passed."""
    step = _step("Unit and API tests")
    assert {"postgres", "redis"} <= set(step.get("services", []))
    services = PIPELINES["definitions"]["services"]
    url = urlsplit(PG_ADMIN_URL)
    postgres = services["postgres"]
    assert postgres["image"].startswith("postgres:")
    variables = postgres["variables"]
    assert variables["POSTGRES_HOST_AUTH_METHOD"] == "trust"  # the tests connect without a password
    assert variables["POSTGRES_DB"] == url.path.lstrip("/")
    assert variables.get("POSTGRES_USER", "postgres") == url.username
    assert url.hostname == "127.0.0.1" and (url.port or 5432) == 5432  # services listen on localhost
    assert services["redis"]["image"].startswith("redis:")


def _steps() -> list[dict[str, Any]]:
    """Every step: the definitions' and the ones written inline in a pipeline."""
    steps = [item["step"] for item in PIPELINES["definitions"]["steps"]]
    for pipeline in [PIPELINES["pipelines"]["default"], *PIPELINES["pipelines"]["branches"].values()]:
        steps += [item["step"] for item in pipeline if "step" in item]
    return steps


def _words(command: str) -> list[str]:
    return shlex.split(command.replace("\\\n", " "), comments=True)


def _env_names(words: list[str]) -> list[str]:
    """The variables ``docker run`` words give the container: ``-e NAME[=value]``, ``--env …``,
    ``--env=…``, ``-eNAME…``."""
    names = []
    for before, word in zip(["", *words], words, strict=False):
        if before in ("-e", "--env"):
            names.append(word.split("=", 1)[0])
        elif word.startswith("--env="):
            names.append(word[len("--env=") :].split("=", 1)[0])
        elif word.startswith("-e") and len(word) > 2 and not word.startswith("--"):
            names.append(word[2:].lstrip("=").split("=", 1)[0])
    return names


def test_no_step_gives_a_container_a_secret_as_a_variable() -> None:
    """The smoke container got SESSION_PASSWORD and MOVIEREC_JWT_SECRET with `--env NAME`: their
    values were in its configuration, which `docker inspect` shows on the CI runner, while
    deploy-docker.py and compose give secrets as files. No secret (app/secret_files.py) goes to a
    container as `-e NAME`, `-e NAME=value` or `--env`; no env file either."""
    found = []
    for step in _steps():
        for command in [*step.get("script", []), *step.get("after-script", [])]:
            if not isinstance(command, str):  # a pipe: runs on the server (deploy-docker.py)
                continue
            words = _words(command)
            assert "--env-file" not in words and not any(w.startswith("--env-file=") for w in words)
            found += [(step["name"], name) for name in _env_names(words) if name in SECRET_VARIABLES]
    assert not found


def test_the_smoke_container_reads_its_secrets_from_files_removed_after_the_step(tmp_path: Path) -> None:
    """The step's own shell, run with a `docker` that only records its arguments: the smoke
    container gets `<NAME>_FILE` paths in a read-only bind mount (`-v`: Pipelines refuses
    `--mount` and any source outside the clone directory) of files the image's user can read
    by name (0444, in a 0711 directory, under a 0700 one no other user of the runner may enter),
    holding exactly the repository variables; the after-script removes them."""
    step = _step("Build the image")
    run = next(c for c in step["script"] if isinstance(c, str) and "docker run" in c)
    bin_dir, clone = tmp_path / "bin", tmp_path / "clone"
    bin_dir.mkdir()
    clone.mkdir()
    calls = tmp_path / "docker-calls"
    docker = bin_dir / "docker"
    record = shlex.quote(str(calls))  # one line of NUL-separated arguments per call
    docker.write_text(f'#!/bin/sh\nprintf "%s\\0" "$@" >> {record}\nprintf "\\n" >> {record}\n')
    docker.chmod(0o755)
    secrets = {"SESSION_PASSWORD": "pw with spaces ", "MOVIEREC_JWT_SECRET": "j" * 48}
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin", "BITBUCKET_CLONE_DIR": str(clone), "IMAGE": "movierec:test",
        **secrets,
    }  # fmt: skip
    subprocess.run(["sh", "-c", run], env=env, check=True, cwd=clone)
    (call,) = [line.rstrip("\0").split("\0") for line in calls.read_text().splitlines()]
    assert call[:2] == ["run", "--detach"] and "--mount" not in call
    assert not set(_env_names(call)) & SECRET_VARIABLES
    volume = call[call.index("--volume") + 1]
    source, target, options = volume.split(":")
    assert (target, options) == ("/run/secrets", "ro")
    mounted = Path(source)
    assert mounted.parent.parent == clone
    assert stat.S_IMODE(mounted.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(mounted.stat().st_mode) == 0o711
    files = {word.split("=", 1)[0]: word.split("=", 1)[1] for word in call if word.endswith(tuple(secrets))}
    assert files == {f"{name}_FILE": f"/run/secrets/{name}" for name in secrets}
    for name, value in secrets.items():
        assert stat.S_IMODE((mounted / name).stat().st_mode) == 0o444
        assert read_secret_file(mounted / name, name) == value
    for command in step["after-script"]:
        subprocess.run(["sh", "-c", command], env=env, check=True, cwd=clone)
    assert list(clone.iterdir()) == []


def test_the_lint_step_runs_every_check_make_lint_runs() -> None:
    """`make lint` ran pip-audit on requirements.txt (known vulnerabilities in the pinned
    dependencies) and the CI lint step did not: a pin with a published vulnerability passed CI.
    Every tool of the Makefile's lint recipe is a command of the step, with its arguments."""
    recipe, in_lint = [], False
    for line in (REPO / "Makefile").read_text().splitlines():
        if line.startswith("lint:"):
            in_lint = True
        elif in_lint and line.startswith("\t"):
            recipe.append(line.strip().removeprefix("$(VENV)/bin/"))
        elif in_lint:
            break
    assert any(command.startswith("pip-audit ") for command in recipe), recipe
    step = _step("Lint")
    commands = [c for c in step["script"] if isinstance(c, str)]
    for command in recipe:
        tool, *arguments = _words(command)
        ran = [words for words in map(_words, commands) if words and words[0] == tool]
        assert ran, f"the lint step does not run {tool}"
        # the Makefile names the paths ruff checks; the step checks the whole clone ('.')
        if tool != "ruff":
            assert [arguments] == [words[1:] for words in ran], (tool, ran)


def _trained(clone: Path, version: str) -> None:
    """model/latest in ``clone``: a bundle of ``version``, as `movierec train` leaves it."""
    bundle = clone / "model" / version
    bundle.mkdir(parents=True)
    (bundle / "manifest.json").write_text(json.dumps({"version": version}))
    (clone / "model" / "latest").symlink_to(version)


def _version_command() -> str:
    """The image step's command that writes model/latest's version to model-version.txt."""
    step = _step("Build the image")
    (command,) = [c for c in step["script"] if isinstance(c, str) and "> model-version.txt" in c]
    assert "model-version.txt" in step["artifacts"]  # the later steps get it
    return command


@pytest.mark.parametrize(("built", "passes"), [("v1", True), ("v2", False)])
def test_the_smoke_test_checks_the_image_serves_the_model_it_was_built_with(
    tmp_path: Path, built: str, passes: bool
) -> None:
    """The step's smoke command, run by its shell in a clone whose model/latest is the bundle the
    step trained (version ``built``), against an API serving model v1: it logged in, recommended
    and scored whatever model the image served, and passed. It now fails unless the served
    version is model/latest's."""
    import os
    import sys

    from tests.unit.test_deploy import PASSWORD, _SeedApi

    step = _step("Build the image")
    (smoke,) = [c for c in step["script"] if isinstance(c, str) and "app.deploy smoke" in c]
    assert "http://127.0.0.1:8000" in smoke
    _trained(tmp_path, built)
    bin_dir = Path(sys.executable).parent
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "PYTHONPATH": str(REPO), "SESSION_PASSWORD": PASSWORD,
           "HOME": os.environ.get("HOME", str(tmp_path))}  # fmt: skip
    subprocess.run(["sh", "-c", _version_command()], env=env, cwd=tmp_path, check=True)
    api = _SeedApi()  # /health/ready: model v1
    try:
        done = subprocess.run(
            ["sh", "-c", smoke.replace("http://127.0.0.1:8000", api.url)],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        api.close()
    assert (done.returncode == 0) == passes, done.stdout + done.stderr
    if not passes:
        assert "serves model 'v1', not the 'v2' expected" in done.stderr


def _deploy_step() -> dict[str, Any]:
    (step,) = [
        item["step"] for item in PIPELINES["pipelines"]["branches"]["main"]
        if item["step"].get("deployment") == "production"
    ]  # fmt: skip
    return step


def _server_command(clone: Path) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """The production step's script run by a shell in ``clone`` (the image step's artifacts in
    it), then its pipe's COMMAND as Pipelines gives it to the server: its ``$NAME``s replaced by
    the values the script left in the environment. The deploy-docker.py words of that command."""
    import re

    step = _deploy_step()
    script = "\n".join(c for c in step["script"] if isinstance(c, str))
    (pipe,) = [c for c in step["script"] if isinstance(c, dict)]
    env = {"PATH": "/usr/bin:/bin", "BITBUCKET_COMMIT": "0123abc", "DOCKER_REGISTRY": "registry.example"}
    done = subprocess.run(
        ["sh", "-ec", script + '\nenv -0'], env=env, cwd=clone, capture_output=True, text=True
    )  # fmt: skip
    if done.returncode != 0:
        return done, []
    left = dict(item.split("=", 1) for item in done.stdout.split("\0") if "=" in item)
    command = re.sub(
        r"\$\{(\w+)\}|\$(\w+)", lambda m: left.get(m[1] or m[2], ""), pipe["variables"]["COMMAND"]
    )
    words = shlex.split(command)
    start = next(i for i, word in enumerate(words) if word.endswith("deploy-docker.py"))
    return done, words[start + 1 :]


def test_the_production_deployment_checks_the_model_version_the_image_step_baked_in(tmp_path: Path) -> None:
    """The production step ran deploy-docker.py with --no-build and no model version: the container
    it started was checked for health only, whatever model it served. The image step's version of
    model/latest reaches it as an artifact, and deploy-docker.py gets it as --model-version."""
    from app.deploy import parse_args

    _trained(tmp_path, "20261206T170903-79b81c")
    subprocess.run(["sh", "-c", _version_command()], cwd=tmp_path, check=True)
    (tmp_path / "model").rename(tmp_path / "trained")  # the deploy step's clone has no model
    done, argv = _server_command(tmp_path)
    assert done.returncode == 0, done.stderr
    args = parse_args(argv)
    assert args.no_build and args.model_version == "20261206T170903-79b81c"
    assert (args.image_name, args.image_version) == ("registry.example/movierec", "0123abc")


@pytest.mark.parametrize("version", [None, "", 'v2"; touch pwned; "', "v2\nv3"])
def test_the_production_deployment_stops_without_a_safe_model_version(
    tmp_path: Path, version: str | None
) -> None:
    """No artifact, an empty one, or one that would be shell code on the server: the step fails
    before it runs anything there."""
    if version is not None:
        (tmp_path / "model-version.txt").write_text(version + "\n")
    done, argv = _server_command(tmp_path)
    assert done.returncode != 0 and argv == []
    assert not (tmp_path / "pwned").exists()
