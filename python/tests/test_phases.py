"""The phase names the Python package fires come from the key schema:
``wasmhooks._phases`` (made from wit/keys.toml by ``cargo xtask schema``)
is the schema the extension embeds, and every phase an adapter fires is a
phase of its lifecycle there, but for the framework's own events the schema
does not list, named below."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from wasmhooks import _native, _phases

PACKAGE = Path(_phases.__file__).parent

#: Each adapter, the lifecycle it drives, and the events it fires under the
#: framework's own name although the schema lists no such phase (a plugin
#: may still subscribe to them). A phase added to the schema leaves this
#: list, and the adapter fires it through ``_phases``.
ADAPTERS = {
    "transformers.py": ("training", set()),
    "lightning.py": ("training", set()),
    "ray_llm/node_init.py": ("node", set()),
    "ray/driver.py": ("node", set()),
    "ray/tasks.py": ("node", set()),
    "pipeline/__init__.py": ("pipeline", set()),
    "pipeline/_runner.py": ("pipeline", set()),
    "pipeline/_cache.py": ("pipeline", set()),
    "pipeline/_query.py": ("pipeline", set()),
    "pipeline/_workers.py": ("pipeline", set()),
}


def schema_phases() -> dict[str, list[str]]:
    return {
        name: [p["name"] for p in lifecycle["phases"]]
        for name, lifecycle in _native.schema()["lifecycle"].items()
    }


def test_the_phase_constants_are_the_embedded_schemas():
    for name, listed in schema_phases().items():
        lifecycle = getattr(_phases, name)
        assert list(lifecycle.ALL) == listed, name
        for phase in listed:
            assert getattr(lifecycle, phase.upper()) == phase
    made = {n for n, v in vars(_phases).items() if isinstance(v, type)}
    assert made == set(schema_phases())


def fired(source: str) -> list[str | tuple[str, str]]:
    """The first argument of every ``_fire``/``fire`` call in ``source``: a
    string literal as itself, ``phases.<lifecycle>.<NAME>`` as the pair."""
    found: list[str | tuple[str, str]] = []
    for node in ast.walk(ast.parse(source)):
        if not (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("_fire", "fire")
            and node.args
        ):
            continue
        arg = node.args[0]
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            found.append(arg.value)
        elif (
            isinstance(arg, ast.Attribute)
            and isinstance(arg.value, ast.Attribute)
            and isinstance(arg.value.value, ast.Name)
            and arg.value.value.id == "phases"
        ):
            found.append((arg.value.attr, arg.attr))
    return found


@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
def test_every_phase_an_adapter_fires_is_one_of_its_lifecycle(adapter):
    lifecycle, own = ADAPTERS[adapter]
    listed = schema_phases()[lifecycle]
    names = set()
    for phase in fired((PACKAGE / adapter).read_text()):
        if isinstance(phase, tuple):
            assert phase[0] == lifecycle, f"{adapter} fires a {phase[0]} phase"
            phase = getattr(getattr(_phases, lifecycle), phase[1])
        else:
            assert phase not in listed, f"{adapter} spells {phase!r}; use _phases"
        names.add(phase)
    assert names - set(listed) == own


def test_every_phase_constant_the_package_names_exists():
    """``phases.<lifecycle>.<NAME>`` is looked up only when the line runs;
    this finds a misspelt one in any module (a rarely taken path, or a
    driver not listed above) before a run does."""
    named = 0
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Attribute)
                and isinstance(node.value.value, ast.Name)
                and node.value.value.id == "phases"
            ):
                lifecycle = getattr(_phases, node.value.attr, None)
                where = f"{path.relative_to(PACKAGE)}:{node.lineno}"
                assert lifecycle is not None, f"{where}: no lifecycle {node.value.attr}"
                assert hasattr(lifecycle, node.attr), f"{where}: no phase {node.attr}"
                named += 1
    assert named > 0
