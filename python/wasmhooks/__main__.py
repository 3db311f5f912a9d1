"""The ``wasmhooks`` command (``python -m wasmhooks``, and the console entry
``pip install`` puts on the PATH): the CLI's own Rust code, run inside the
extension by :func:`wasmhooks._native.cli_main`, so the wheel that gives the
module gives the command too, with no Rust toolchain and no second binary.
"""

from __future__ import annotations

import signal
import sys


def main() -> None:
    """Runs the command line on ``sys.argv`` and exits with its code."""
    from wasmhooks._native import cli_main

    # The Rust code writes to the file descriptors, past Python's buffers.
    sys.stdout.flush()
    sys.stderr.flush()
    # Ctrl-C stops the command as it stops the native binary: Python's own
    # handler only sets a flag, which nothing reads while Rust runs.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    # The program's name as the user knows it, not __main__.py, in usage
    # lines and errors.
    # `run` starts a job's worker ranks with this same command: this
    # process's executable is Python, so it is told how.
    sys.exit(cli_main(["wasmhooks", *sys.argv[1:]], [sys.executable, "-m", "wasmhooks"]))


if __name__ == "__main__":
    main()
