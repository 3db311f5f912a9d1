"""Stand-in (see ../../../README.md): vLLM's frontend arguments, none used."""

from dataclasses import dataclass


@dataclass
class FrontendArgs:
    pass
