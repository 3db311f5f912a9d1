"""Write wasmhooks plugins in Python (built with componentize-py).

A plugin is a subclass of `Plugin` with class attributes for its manifest and
methods for the callbacks it needs; `export(MyPlugin())` turns it into the
`Hooks` class that componentize-py exports. Data values arrive as Python
objects (numbers, strings, booleans and None as they crossed, lists and maps
decoded from JSON) and updates are a dict of new values, with `REMOVE` to
delete a key, so a callback reads like a Python one::

    class ForceDownload(Plugin):
        name = "force-download"
        phases = ["pre_download"]
        reads = []

        def on_phase(self, phase, data):
            return {"local_node_download_model": "MODEL_AND_TOKENIZER"}

    Hooks = export(ForceDownload())

An exception in a callback becomes the call's error: the host reports it with
the plugin's name and the phase, and merges nothing.
"""

import json

import wasmhooks_keys as keys
from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import log as _log
from wit_world.imports import types

__all__ = ["REMOVE", "Plugin", "PluginError", "export", "keys", "log"]

REMOVE = object()
"""The value of an update that removes its key from the data map."""


class PluginError(Exception):
    """A failure with a message for the operator (any exception works too)."""


class Plugin:
    """Defaults for every callback; override what the plugin needs."""

    #: Must equal the name the operator allows the plugin under.
    name = "plugin"
    version = "0.1.0"
    #: Phases to be called for; `*` is every phase.
    phases = ["*"]
    #: Lower runs first among plugins of the same phase.
    order = 0
    #: Keys the plugin reads; None for the whole map, [] for none. A plugin
    #: whose keys come from its config sets ``self.reads`` in ``init``.
    reads = None
    #: Phases in which the plugin only observes (called in the background).
    observe = []
    #: Call only in the process of rank zero.
    rank_zero_only = False

    def init(self, job_config, plugin_config):
        """Called once, before any phase, with both configs decoded."""

    def on_phase(self, phase, data):
        """Returns a dict of updates (or None) for the data map `data`."""
        return None

    def save_state(self):
        """Returns JSON-able state for a checkpoint, or None."""
        return None

    def load_state(self, state):
        """Restores what `save_state` returned."""


def log(level, message):
    """Logs through the host: level is trace, debug, info, warn or error."""
    _log.log(types.Level[level.upper()], str(message))


def _failure(error):
    text = str(error) if isinstance(error, PluginError) else f"{type(error).__name__}: {error}"
    return Err(types.Failure(text))


def _lift(value):
    """A value as the host sent it, as a Python object."""
    if isinstance(value, types.Value_Json):
        return json.loads(value.value)
    if isinstance(value, types.Value_Null):
        return None
    return value.value


def _lower(value):
    """A value to send: scalars as themselves, the rest as JSON text."""
    if value is None:
        return types.Value_Null()
    if isinstance(value, bool):
        return types.Value_Boolean(value)
    if isinstance(value, int) and -(2**63) <= value < 2**63:
        return types.Value_Integer(value)
    if isinstance(value, float):
        return types.Value_Float(value)
    if isinstance(value, str):
        return types.Value_Text(value)
    return types.Value_Json(json.dumps(value))


def export(plugin):
    """The `Hooks` class componentize-py exports, calling `plugin`."""
    # What the host refers to by position: the manifest's phases and keys.
    phases = list(plugin.phases)
    reads = None if plugin.reads is None else list(plugin.reads)

    class Hooks(exports.Hooks):
        def describe(self):
            return types.Manifest(
                plugin.name,
                plugin.version,
                phases,
                plugin.order,
                reads,
                list(plugin.observe),
                plugin.rank_zero_only,
            )

        def init(self, job_config, plugin_config):
            nonlocal reads
            try:
                plugin.init(json.loads(job_config), json.loads(plugin_config))
            except Exception as error:
                raise _failure(error) from None
            # Keys the config decided (`self.reads = [...]` in `init`)
            # replace the manifest's; values follow their order.
            if plugin.reads is not None and list(plugin.reads) != reads:
                reads = list(plugin.reads)
                return reads
            return None

        def on_phase(self, phase, data):
            try:
                if isinstance(phase, types.Phase_Listed):
                    phase = phases[phase.value]
                else:
                    phase = phase.value
                if isinstance(data, types.Data_Listed):
                    values = {
                        key: _lift(value)
                        for key, value in zip(reads, data.value)
                        if value is not None
                    }
                else:
                    values = {entry.key: _lift(entry.value) for entry in data.value}
                changes = plugin.on_phase(phase, values) or {}
                return [
                    types.Update_Remove(key)
                    if value is REMOVE
                    else types.Update_Set(types.Entry(key, _lower(value)))
                    for key, value in changes.items()
                ]
            except Exception as error:
                raise _failure(error) from None

        def save_state(self):
            state = plugin.save_state()
            return None if state is None else json.dumps(state)

        def load_state(self, state):
            try:
                plugin.load_state(json.loads(state))
            except Exception as error:
                raise _failure(error) from None

    return Hooks
