"""Every training and serving example in examples/, run as the README tells
a user to: ``target/venv/bin/python examples/<name>/<script>.py``, in a
process of its own. (The pipeline's example runs in test_pipeline.py, the
job bundle in the Rust suite and ``cargo xtask demo``.)"""

from __future__ import annotations

import re
from pathlib import Path

from conftest import run_python

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_the_lightning_example_trains_and_reports_how_it_ended():
    # Stops early on the validation loss, or runs its 200 steps: either way
    # the end of training is in the data map, though no plugin of the
    # example subscribes to on_train_end.
    run = run_python(str(EXAMPLES / "lightning/train.py"), timeout=600)
    m = re.search(r"stopped at step (\d+) of 200: (stopped|completed)", run.stdout)
    assert m, run.stdout
    assert "checkpoints kept: [" in run.stdout


def test_the_hf_example_trains_and_reports_how_it_ended():
    run = run_python(str(EXAMPLES / "hf-trainer/train.py"), timeout=600)
    m = re.search(r"stopped at step (\d+) of 200: (stopped|completed)", run.stdout)
    assert m, run.stdout
    assert "early stopping: {" in run.stdout
    # Each plugin is listed with its calls.
    for name in ("validate-every", "early-stopping", "checkpoint-policy", "metrics-logger"):
        assert re.search(rf"{name}\s+\d+ calls", run.stdout), run.stdout
    # loss-stats' moving average is in TensorBoard's files, one per log.
    from trackers import tensorboard_scalars

    logs = int(re.search(r"loss EMA .* after (\d+) logs", run.stdout).group(1))
    logdir = re.search(r"tensorboard --logdir (\S+)", run.stdout).group(1)
    scalars = tensorboard_scalars(Path(logdir))
    assert len(scalars["train/loss_ema"]) == logs > 0


def test_the_serving_example_serves_a_real_engine_through_the_plugins():
    # A tiny Llama on vLLM (CPU) behind Ray Serve LLM with the wasm
    # ingress: about a minute to ready, then its demo requests.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = run_python(str(EXAMPLES / "serving/app.py"), "--port", str(port), timeout=900)
    assert "echo of a prompt with an address (200): 'mail [EMAIL]" in run.stdout, run.stdout
    assert "a streamed answer with an address (200): 'write to [EMAIL] today'" in run.stdout
    assert "a denied prompt (403): no-secrets" in run.stdout
    m = re.search(r"usage.jsonl: (\d+) lines", run.stdout)
    assert m and int(m.group(1)) == 3, run.stdout


def test_the_environment_the_readme_runs_examples_from_has_the_release_build():
    # `cargo xtask test` installs the release build into target/venv, where
    # the README runs the examples and the benchmarks run; a debug build
    # costs 3-6x more per fire.
    import wasmhooks

    assert wasmhooks.BUILD == "release"
