"""``python -m wasmhooks.ray run JOB_DIR --operator OP.toml``: the tasks and
the actor it starts live in importable modules, so Ray ships them by
reference."""

import sys

from wasmhooks.ray.cli import main

sys.exit(main())
