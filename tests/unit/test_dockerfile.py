"""Dockerfile: what each layer of a shipped image is built from (its build-context inputs)."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
TARGETS = ("api", "server", "pipeline")
VENV = "/opt/venv"
DEPENDENCY_INPUTS = frozenset({"extra-ca/", "pyproject.toml", "requirements.txt", "README.md"})
"""What the third-party packages and the system packages may depend on: a change to anything else
(the code, uwsgi.ini, the scripts, the model) must not rebuild or re-ship them."""


@dataclass(frozen=True)
class Layer:
    keyword: str
    arguments: str
    inputs: frozenset[str]  # every build-context path this layer's content depends on


def _instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction: continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending = f"{pending} {line}" if pending else line
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        keyword, _, arguments = pending.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def _stages(text: str) -> dict[str, tuple[str, list[tuple[str, str]]]]:
    """Each stage's name: its FROM (a stage or an image) and its instructions."""
    stages: dict[str, tuple[str, list[tuple[str, str]]]] = {}
    current: list[tuple[str, str]] | None = None
    for keyword, arguments in _instructions(text):
        if keyword == "FROM":
            words = arguments.split()
            assert len(words) == 3 and words[1].upper() == "AS", arguments  # every stage is named
            current = []
            stages[words[2]] = (words[0], current)
        elif current is not None:
            current.append((keyword, arguments))
    return stages


STAGES = _stages((REPO / "Dockerfile").read_text())


def _layers(stage: str) -> list[Layer]:
    """The stage's instructions, from its base image's up, each with what it depends on: its own
    sources, a source stage's whole content (COPY --from) and everything before it."""
    parent, instructions = STAGES[stage]
    layers = _layers(parent) if parent in STAGES else []
    inputs = layers[-1].inputs if layers else frozenset()
    for keyword, arguments in instructions:
        if keyword in {"COPY", "ADD"}:
            words = shlex.split(arguments)
            source_stage = next((w.removeprefix("--from=") for w in words if w.startswith("--from=")), None)
            if source_stage is not None:
                inputs |= _layers(source_stage)[-1].inputs
            else:
                inputs |= {w for w in words[:-1] if not w.startswith("--")}
        layers.append(Layer(keyword, arguments, inputs))
    return layers


def _destination(layer: Layer) -> str:
    return shlex.split(layer.arguments)[-1].rstrip("/")


@pytest.mark.parametrize("target", TARGETS)
def test_the_third_party_packages_are_a_layer_only_the_dependencies_change(target: str) -> None:
    """The final images copied a virtualenv that held the dependencies and the package together,
    so every change to app/ (and to uwsgi.ini, the start script or the accuracy test, copied
    before it) made a new copy of every dependency: hundreds of MB per image to push and pull for
    a one-line fix, though the Dockerfile installed the dependencies in stages of their own so
    that a code change would not redo them. The layer that brings the dependencies now depends on
    the dependency files only, and the package goes on top of it."""
    layers = _layers(target)
    venv_layers = [layer for layer in layers if layer.keyword == "COPY" and _destination(layer) == VENV]
    assert venv_layers, f"no layer of {target} copies {VENV}"
    for layer in venv_layers:
        assert layer.inputs <= DEPENDENCY_INPUTS, (layer.arguments, sorted(layer.inputs - DEPENDENCY_INPUTS))


@pytest.mark.parametrize("target", TARGETS)
def test_a_code_change_does_not_install_system_packages_again(target: str) -> None:
    """The pipeline image ran apt-get (LightGBM's OpenMP runtime) after the layers that copy
    uwsgi.ini, the start script and the accuracy test: a change to any of them fetched the Debian
    package index and installed the package again."""
    for layer in _layers(target):
        if layer.keyword == "RUN" and "apt-get install" in layer.arguments:
            extra = sorted(layer.inputs - DEPENDENCY_INPUTS)
            assert not extra, (layer.arguments[:60], extra)


@pytest.mark.parametrize("target", TARGETS)
def test_the_image_holds_the_package_built_from_app(target: str) -> None:
    """The other side of the above: the code still reaches each image."""
    assert "app/" in _layers(target)[-1].inputs
