"""A tiny GPT-2 built from a config (2 layers, hidden 32, vocab 100; no hub
download) and synthetic data, for the trainer tests, the examples and the
benchmark; and an operator config for the built plugins."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch.utils.data import Dataset

#: The Rust plugins as ``cargo xtask test`` builds them.
PLUGINS = Path(__file__).resolve().parents[2] / "target/plugins/wasm32-wasip2/release"


#: The operator's grants for the reference plugins, by file stem: (name,
#: grant lines). The metrics logger's folder grant is the caller's to give.
GRANTS = {
    "validate_every": ("validate-every", 'write = ["should_evaluate"]'),
    "early_stopping": ("early-stopping", 'write = ["should_training_stop", "early_stopping"]'),
    "checkpoint_policy": ("checkpoint-policy", 'write = ["should_save", "checkpoints_to_delete"]'),
    "metrics_collector": ("metrics-collector", 'write = ["metrics"]'),
    "loss_stats": ("loss-stats", 'write = ["metrics.*"]'),
}


def write_operator(path: Path, grants: dict[str, tuple[str, str]]) -> Path:
    """An operator config allowing each plugin file stem of ``grants`` under
    its name, pinned by sha256, with its grant lines."""
    text = ""
    for stem, (name, grant) in grants.items():
        digest = hashlib.sha256((PLUGINS / f"{stem}.wasm").read_bytes()).hexdigest()
        text += f'[[plugin]]\nname = "{name}"\nsha256 = "{digest}"\n{grant}\n\n'
    path.write_text(text)
    return path


class Tokens(Dataset):
    """Sequences of a repeating pattern: learnable, so the loss falls."""

    def __init__(self, n: int, length: int = 16, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        starts = torch.randint(0, 100, (n,), generator=g)
        steps = torch.randint(1, 4, (n,), generator=g)
        ids = (starts[:, None] + steps[:, None] * torch.arange(length)[None, :]) % 100
        self.ids = ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=32)
    return GPT2LMHeadModel(config)


def training_args(out, **kw):
    from transformers import TrainingArguments

    base = {
        "output_dir": str(out),
        "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 8,
        "learning_rate": 5e-3,
        "num_train_epochs": 1,
        "max_steps": 20,
        "logging_steps": 5,
        "eval_strategy": "no",
        "save_strategy": "no",
        "report_to": [],
        "use_cpu": True,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "seed": 0,
    }
    base.update(kw)
    return TrainingArguments(**base)


def lightning_module():
    """The tiny GPT-2 as a LightningModule, logging ``eval_loss``."""
    import lightning.pytorch as pl

    class TinyLM(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = gpt2()

        def training_step(self, batch, batch_idx):
            return self.model(**batch).loss

        def validation_step(self, batch, batch_idx):
            self.log("eval_loss", self.model(**batch).loss)

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=5e-3)

    return TinyLM()
