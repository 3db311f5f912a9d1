"""The smallest wasmhooks plugin in Python: it asks the node to download the
model and tokenizer on every node. Build: sdk/python/build.sh DIR OUT.wasm"""

from wasmhooks import Plugin, export, keys, log


class ForceDownload(Plugin):
    name = "hello-python"
    phases = [keys.phases.PRE_DOWNLOAD]
    reads = []

    def on_phase(self, phase, data):
        log("info", f"hello from Python at {phase}")
        return {keys.LOCAL_NODE_DOWNLOAD_MODEL: "MODEL_AND_TOKENIZER"}


Hooks = export(ForceDownload())
