"""One rank of a two-process HF Trainer run under torchrun (gloo, CPU): the
adversary plugin asks to stop on rank 1 only; every rank must stop at the
same step. Writes this rank's final step to OUT/rank-N.json."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from tiny import Tokens, gpt2, training_args
from transformers import Trainer

from wasmhooks.transformers import WasmHooksCallback


def main() -> None:
    operator, adversary, out, cache = sys.argv[1:5]
    rank = int(os.environ["RANK"])
    script = {"on_step_end": {"should_training_stop": True}} if rank == 1 else {}
    callback = WasmHooksCallback(
        operator, plugins=[(adversary, {"updates": script})], cache_dir=cache
    )
    args = training_args(Path(out) / "trainer", max_steps=20, ddp_backend="gloo")
    trainer = Trainer(model=gpt2(), args=args, train_dataset=Tokens(160), callbacks=[callback])
    trainer.train()
    Path(out, f"rank-{rank}.json").write_text(
        json.dumps({"step": trainer.state.global_step, "world_size": args.world_size})
    )


if __name__ == "__main__":
    main()
