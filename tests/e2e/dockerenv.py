"""A real Docker engine for the docker tier: install it, start it, and provide a base image.

This machine (and CI) has no Docker Hub, so the images are built on a Debian bookworm base
made with debootstrap from the Debian mirror apt already uses; the tarball is cached outside
the repository (``/var/cache/movierec`` by default, ``MOVIEREC_DOCKER_CACHE`` to move it) so
only the first run pays for it. Debian's ``docker.io`` 20.10 ships a CLI that can use the
daemon's built-in BuildKit without the buildx plugin, which builds independent stages in
parallel and skips stages the target does not need; it is preferred when present.

Everything here raises :class:`DockerUnavailable` with the reason when Docker truly cannot
run (not root and no engine, dockerd failing to start); the fixtures turn that into a skip.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BASE_IMAGE = "movierec/base:bookworm"
CACHE_DIR = Path(os.environ.get("MOVIEREC_DOCKER_CACHE", "/var/cache/movierec"))
BASE_TARBALL = CACHE_DIR / "base-bookworm.tar"
DEBIAN_CLI = Path("/usr/bin/docker")
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
PACKAGES = ("docker.io", "debootstrap", "docker-compose")
# what the base image needs: Python with venv (pip comes with it) and CA certificates
BASE_PACKAGES = "python3,python3-venv,ca-certificates"


class DockerUnavailable(Exception):
    """Docker cannot run on this machine; the message says why."""


def log(message: str) -> None:
    print(f"[dockerenv] {message}", flush=True)


def _run(argv: Sequence[str], timeout: float = 600, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False, **kwargs)  # type: ignore[call-overload]


@dataclass
class DockerEnv:
    """The docker CLI to use, the environment to run it with, and what we started."""

    cli: str
    env: dict[str, str] = field(default_factory=dict)
    started_daemon: subprocess.Popen[bytes] | None = None
    compose: str | None = None

    def __call__(
        self, *args: str, timeout: float = 600, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = _run([self.cli, *args], timeout=timeout, env=self.env)
        if check and result.returncode != 0:
            raise AssertionError(
                f"docker {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}"
            )
        return result

    def stream(self, *args: str, timeout: float = 900) -> tuple[int, str]:
        """Run docker with its output shown as it comes (pytest -s) and captured."""
        lines: list[str] = []
        with subprocess.Popen(
            [self.cli, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.env
        ) as proc:
            assert proc.stdout is not None
            deadline = time.monotonic() + timeout
            for line in proc.stdout:
                print(line, end="", flush=True)
                lines.append(line)
                if time.monotonic() > deadline:
                    proc.kill()
                    raise AssertionError(f"docker {' '.join(args[:2])} took more than {timeout:.0f}s")
            return proc.wait(), "".join(lines)

    def image_exists(self, ref: str) -> bool:
        return self("image", "inspect", ref, check=False).returncode == 0


def apt_install(packages: Sequence[str]) -> None:
    if os.geteuid() != 0:
        raise DockerUnavailable(f"{', '.join(packages)} missing and installing them needs root")
    log(f"apt-get install {' '.join(packages)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    update = _run(["apt-get", "update", "-q"], env=env)
    install = _run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages], env=env)
    if install.returncode != 0:
        raise DockerUnavailable(f"apt-get install failed: {(update.stderr + install.stderr)[-800:]}")


def ensure_packages() -> None:
    missing = [
        pkg
        for pkg, binary in zip(PACKAGES, ("dockerd", "debootstrap", "docker-compose"), strict=True)
        if shutil.which(binary) is None
    ]
    if missing:
        apt_install(missing)


def choose_cli() -> DockerEnv:
    """Debian's 20.10 CLI with BuildKit if installed; else whatever `docker` is on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    if DEBIAN_CLI.exists():
        return DockerEnv(
            str(DEBIAN_CLI), {**env, "DOCKER_BUILDKIT": "1"}, compose=shutil.which("docker-compose")
        )
    cli = shutil.which("docker")
    if cli is None:
        raise DockerUnavailable("no docker CLI")
    return DockerEnv(cli, {**env, "DOCKER_BUILDKIT": "0"}, compose=shutil.which("docker-compose"))


def ensure_daemon(docker: DockerEnv, timeout: float = 60) -> None:
    if docker("info", "--format", "{{.ServerVersion}}", check=False, timeout=20).returncode == 0:
        return
    if os.geteuid() != 0:
        raise DockerUnavailable("the Docker daemon is not running and starting it needs root")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    log_path = CACHE_DIR / "dockerd.log"
    log(f"starting dockerd (log: {log_path})")
    with log_path.open("ab") as handle:
        docker.started_daemon = subprocess.Popen(
            ["dockerd"], stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if docker.started_daemon.poll() is not None:
            tail = log_path.read_text(errors="replace")[-1500:]
            raise DockerUnavailable(f"dockerd exited with {docker.started_daemon.returncode}: {tail}")
        if docker("info", "--format", "{{.ServerVersion}}", check=False, timeout=20).returncode == 0:
            return
        time.sleep(0.5)
    raise DockerUnavailable(f"dockerd did not answer within {timeout:.0f}s; see {log_path}")


def stop_daemon(docker: DockerEnv) -> None:
    """Stop dockerd only if this session started it."""
    proc = docker.started_daemon
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def debian_mirror() -> str:
    """The Debian mirror apt uses here (deb822 .sources or one-line sources.list)."""
    candidates = [*sorted(Path("/etc/apt/sources.list.d").glob("*.sources")), Path("/etc/apt/sources.list")]
    for path in candidates:
        try:
            text = path.read_text()
        except OSError:
            continue
        for match in re.finditer(r"^URIs:\s*(\S+)", text, re.MULTILINE):
            if "security" not in match.group(1):
                return match.group(1)
        for match in re.finditer(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+bookworm\s", text, re.MULTILINE):
            return match.group(1)
    return "http://deb.debian.org/debian"


def build_base_tarball() -> None:
    """debootstrap a minimal bookworm with Python into BASE_TARBALL (about a minute)."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    mirror = debian_mirror()
    rootfs = Path(tempfile.mkdtemp(prefix="rootfs-", dir=CACHE_DIR))
    try:
        log(f"debootstrap --variant=minbase bookworm from {mirror}")
        started = time.monotonic()
        result = _run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={BASE_PACKAGES}",
                "bookworm",
                str(rootfs),
                mirror,
            ],
            timeout=900,
        )
        if result.returncode != 0:
            raise DockerUnavailable(f"debootstrap failed: {(result.stdout + result.stderr)[-1500:]}")
        # downloaded packages, package lists and documentation: apt-get update restores the lists
        for junk in (
            "var/cache/apt/archives/*.deb",
            "var/lib/apt/lists/*",
            "usr/share/doc/*",
            "usr/share/man/*",
        ):
            for child in rootfs.glob(junk):
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        partial = BASE_TARBALL.with_suffix(".tar.partial")
        tar = _run(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(partial), "."], timeout=300)
        if tar.returncode != 0:
            raise DockerUnavailable(f"tar of the base rootfs failed: {tar.stderr[-500:]}")
        partial.replace(BASE_TARBALL)
        size_mib = BASE_TARBALL.stat().st_size >> 20
        log(f"base tarball {BASE_TARBALL} ({size_mib} MiB) in {time.monotonic() - started:.0f}s")
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)


def ensure_base_image(docker: DockerEnv) -> None:
    if docker.image_exists(BASE_IMAGE):
        return
    if not BASE_TARBALL.exists():
        build_base_tarball()
    log(f"docker import {BASE_TARBALL} {BASE_IMAGE}")
    docker(
        "import",
        "--change",
        "ENV LANG=C.UTF-8",
        "--change",
        'CMD ["/bin/bash"]',
        str(BASE_TARBALL),
        BASE_IMAGE,
    )


def prepare_extra_ca(repo: Path = REPO) -> None:
    """Trust this machine's CA bundle in the build (pip behind a TLS-inspecting proxy).

    extra-ca/ is git-ignored except for .gitkeep; the file is rewritten only when the host
    bundle changed, so Docker's layer cache stays valid between runs.
    """
    target = repo / "extra-ca" / "host-bundle.crt"
    if HOST_CA_BUNDLE.exists():
        data = HOST_CA_BUNDLE.read_bytes()
        if not target.exists() or target.read_bytes() != data:
            target.write_bytes(data)


def docker_env() -> DockerEnv:
    """Everything the docker tier needs, ready; DockerUnavailable says why not."""
    ensure_packages()
    docker = choose_cli()
    ensure_daemon(docker)
    ensure_base_image(docker)
    prepare_extra_ca()
    return docker
