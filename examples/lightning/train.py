"""Lightning with wasmhooks plugins: the tiny GPT-2 of the HF example in a
LightningModule, with early-stopping on the validation loss and
checkpoint-policy saving and rotating checkpoints, sandboxed.

    cargo xtask test                     # once: builds the plugins and target/venv
    target/venv/bin/python examples/lightning/train.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "python/tests"))

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from tiny import GRANTS, PLUGINS, Tokens, lightning_module, write_operator  # noqa: E402

from wasmhooks.lightning import WasmHooksCallback  # noqa: E402


def main() -> None:
    out = ROOT / "target/examples/lightning"
    out.mkdir(parents=True, exist_ok=True)
    operator = write_operator(
        out / "operator.toml",
        {stem: GRANTS[stem] for stem in ("early_stopping", "checkpoint_policy")},
    )
    callback = WasmHooksCallback(
        operator,
        plugins=[
            (
                PLUGINS / "early_stopping.wasm",
                {"monitor": "eval_loss", "patience": 2, "min_delta": 0.01},
            ),
            (PLUGINS / "checkpoint_policy.wasm", {"every_steps": 10, "keep_last": 2}),
        ],
    )
    trainer = pl.Trainer(
        callbacks=[callback],
        max_steps=200,
        val_check_interval=5,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(out),
        num_sanity_val_steps=0,
    )
    train = torch.utils.data.DataLoader(Tokens(800), batch_size=8)
    val = torch.utils.data.DataLoader(Tokens(64, seed=1), batch_size=8)
    trainer.fit(lightning_module(), train, val)
    data = callback.data
    print(f"stopped at step {trainer.global_step} of 200: {data['train_end_reason']}")
    print(f"checkpoints kept: {[Path(p).name for p in callback.checkpoints]}")


if __name__ == "__main__":
    main()
