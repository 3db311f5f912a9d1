"""Type stubs for the Rust extension behind :mod:`wasmhooks`."""

from collections.abc import Sequence
from os import PathLike
from types import TracebackType
from typing import Any

_Path = str | PathLike[str]
_Value = Any  # None, bool, int, float, str, and lists, tuples and dicts of them

class WasmHooksError(Exception):
    """Base class of every wasmhooks error."""

class PolicyError(WasmHooksError):
    """The operator config could not be read or is not valid."""

class LoadError(WasmHooksError):
    """A plugin file could not be read, is not allowed, or does not fit the contract."""

class PluginError(WasmHooksError):
    """A call into a plugin failed under the ``fail`` policy."""

    plugin: str
    call: str
    cause: str

class Policy:
    @staticmethod
    def from_file(path: _Path) -> Policy: ...
    @staticmethod
    def from_toml(text: str, base_dir: _Path | None = None) -> Policy: ...
    @property
    def plugins(self) -> list[str]: ...

class Plugin:
    @property
    def name(self) -> str: ...
    @property
    def sha256(self) -> str: ...
    @property
    def file(self) -> str: ...
    @property
    def manifest(self) -> dict[str, Any]: ...

class Host:
    def __init__(self, policy: Policy, cache_dir: _Path | None = None) -> None: ...
    def load(self, path: _Path) -> Plugin: ...
    def load_bytes(self, data: bytes, name: str = "<bytes>") -> Plugin: ...
    def load_job(self, job_dir: _Path) -> tuple[dict[str, Any], list[tuple[Plugin, _Value]]]: ...

class PhaseReport:
    phase: str
    calls: list[dict[str, Any]]
    failures: list[str]

class Hooks:
    def __init__(
        self,
        job_config: _Value,
        plugins: Sequence[tuple[Plugin, _Value]],
        rank: int = 0,
    ) -> None: ...
    def fire(self, phase: str, data: dict[str, _Value]) -> PhaseReport: ...
    def subscribers(self, phase: str) -> list[str]: ...
    def save_state(self) -> dict[str, _Value]: ...
    def load_state(self, states: dict[str, _Value]) -> None: ...
    def stats(self) -> list[dict[str, Any]]: ...
    def flush(self, timeout: float = 10.0) -> int: ...
    def close(self) -> None: ...
    def __enter__(self) -> Hooks: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool: ...

def wit_version() -> str: ...
def restore_trap_handlers() -> int: ...
