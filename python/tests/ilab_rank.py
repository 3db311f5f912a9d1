"""InstructLab training's loop in small: a real ``CallbackManager`` driven the
way ``instructlab.training.main_ds.train`` drives it (the same context
fields set at the same points, the same hooks in the same order), around a
real (tiny, CPU) torch model. The tests drive it in their own process
(:func:`train`); under torchrun each rank runs this file's ``main``, which
rebuilds the callbacks from ``--callbacks=`` as ``main_ds.main`` does, sets
up InstructLab's metric logger in each rank as ``main_ds.main`` does, and
writes what the rank saw to ``OUT/rank-N.json``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from instructlab.training.callbacks import CallbackManager


def _mean_across_ranks(value: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= dist.get_world_size()
    return value


def prepare(manager: CallbackManager, out: Path, epochs: int) -> None:
    """The context fields ``main_ds.main`` sets before training."""
    ctx = manager.context
    ctx.output_dir = str(out)
    ctx.model_name_or_path = "tiny-linear"
    ctx.max_epochs = epochs
    ctx.world_size = int(os.environ.get("WORLD_SIZE", "1"))
    ctx.is_local_process_zero = int(os.environ.get("LOCAL_RANK", "0")) == 0
    ctx.is_world_process_zero = (dist.get_rank() if dist.is_initialized() else 0) == 0


def train(
    manager: CallbackManager,
    out: Path,
    *,
    epochs: int = 2,
    steps: int = 3,
    microbatches: int = 2,
    val_every: int = 2,
    val_losses: list[float] | None = None,
    step_time: float = 0.0,
) -> dict[str, Any]:
    """``main_ds.train``'s hooks around a tiny linear regression; returns
    what it fed (the step losses at ``on_log``, the validation losses) and
    how many times it fired each hook. ``step_time`` stretches each step to
    at least that many seconds, as a real model's step is (far longer):
    the callbacks run behind the loop, and W&B drops what is logged for a
    step once a later step was logged."""
    torch.manual_seed(0)
    rank = dist.get_rank() if dist.is_initialized() else 0
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    gen = torch.Generator().manual_seed(100 + rank)
    model = torch.nn.Linear(8, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    target = torch.arange(8, dtype=torch.float32) / 8
    metric_logger = logging.getLogger("instructlab.training.metrics")
    fired: dict[str, int] = {}
    losses: list[tuple[int, float]] = []
    vals: list[tuple[int, float]] = []

    def fire(hook: str, **kwargs: Any) -> None:
        fired[hook] = fired.get(hook, 0) + 1
        manager.fire(hook, **kwargs)

    global_step = 1
    samples_seen = tokens_seen = 0
    manager.context.step = global_step
    manager.context.total_samples = samples_seen
    fire("on_train_begin")
    for epoch in range(epochs):
        manager.context.epoch = epoch
        fire("on_epoch_begin")
        for _ in range(steps):
            start = time.time()
            manager.context.step = global_step
            fire("on_step_begin")
            opt.zero_grad()
            total = torch.zeros(())
            for _ in range(microbatches):
                fire("on_before_forward")
                x = torch.randn(4, 8, generator=gen)
                loss = ((model(x).squeeze(-1) - x @ target) ** 2).mean()
                (loss / microbatches).backward()
                fire("on_after_backward")
                total += loss.detach()
            # The loss across ranks, as BatchLossManager reduces it; the
            # gradients too, as DDP would.
            avg = float(_mean_across_ranks(total / microbatches))
            for p in model.parameters():
                p.grad = _mean_across_ranks(p.grad)
            manager.context.loss = avg
            fire("on_pre_optimizer_step")
            grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1e9))
            opt.step()
            sched.step()
            fire("on_optimizer_step")
            samples_seen += 4 * microbatches
            tokens_seen += 32 * microbatches
            if local_rank == 0:
                elapsed = time.time() - start
                lr = sched.get_last_lr()[0]
                metric_logger.info(
                    {"epoch": epoch, "step": global_step, "avg_loss": avg, "lr": lr},
                    extra={"step": global_step},
                )
                manager.context.learning_rate = lr
                manager.context.grad_norm = grad_norm
                manager.context.elapsed_time = elapsed
                manager.context.overall_throughput = 4 * microbatches / max(elapsed, 1e-9)
                manager.context.cuda_mem_allocated = 0.0
            manager.context.total_samples = samples_seen
            manager.context.total_tokens = tokens_seen
            manager.context.loss = avg
            manager.context.batch_metrics = {
                "total_samples": 4 * microbatches,
                "total_length": 32 * microbatches,
                "num_loss_counted_tokens": 32 * microbatches,
                "grad_accum_steps": microbatches,
                "num_minibatches": microbatches,
            }
            losses.append((global_step, avg))
            fire("on_log")
            if global_step % val_every == 0:
                if val_losses is not None:
                    val = val_losses[len(vals)]
                else:
                    with torch.no_grad():
                        x = torch.randn(16, 8, generator=gen)
                        val = float(
                            _mean_across_ranks(((model(x).squeeze(-1) - x @ target) ** 2).mean())
                        )
                vals.append((global_step, val))
                manager.context.val_metrics = {"val_loss": val, "val_num_tokens": 512}
                fire("on_evaluate")
            fire("on_step_end")
            time.sleep(max(0.0, step_time - (time.time() - start)))
            global_step += 1
        # checkpoint_at_epoch: the checkpoint written, then on_save.
        ckpt = out / "hf_format" / f"samples_{samples_seen}"
        if rank == 0:
            ckpt.mkdir(parents=True, exist_ok=True)
            torch.save(model.state_dict(), ckpt / "model.pt")
        if dist.is_initialized():
            dist.barrier()
        fire("on_save", checkpoint_path=str(ckpt))
        fire("on_epoch_end")
    fire("on_train_end")
    manager.close()
    return {"losses": losses, "vals": vals, "fired": fired, "last_step": global_step - 1}


def drain_metric_logger() -> None:
    """Waits for InstructLab's JSONL handler to write what it was given (it
    writes on a loop of its own and has no flush), then flushes and closes
    every handler of the metric logger (TensorBoard's writer among them)."""
    from instructlab.training.logger import AsyncStructuredHandler

    for handler in logging.getLogger("instructlab.training.metrics").handlers:
        if isinstance(handler, AsyncStructuredHandler) and handler._struct_logger is not None:
            loop = handler._struct_logger.loop

            async def pending() -> None:
                me = asyncio.current_task()
                await asyncio.gather(
                    *(t for t in asyncio.all_tasks() if t is not me), return_exceptions=True
                )

            asyncio.run_coroutine_threadsafe(pending(), loop).result(timeout=10)
        handler.flush()
        handler.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--callbacks", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()

    from instructlab.training.callbacks import deserialize_callbacks_from_cli
    from instructlab.training.logger import setup_metric_logger, setup_root_logger

    # As main_ds.main: the metric logger in every rank (TensorBoard and W&B
    # keep to rank 0 by their filter; the JSONL file is per rank).
    setup_metric_logger(
        str(args.out),
        tensorboard_log_dir=str(args.out / "tb"),
        wandb_project=os.environ.get("WANDB_PROJECT"),
    )
    setup_root_logger("INFO")
    manager = CallbackManager()
    callbacks = deserialize_callbacks_from_cli(args.callbacks)
    for cb in callbacks:
        manager.add_callback(cb)
    prepare(manager, args.out, args.epochs)
    fed = train(manager, args.out, epochs=args.epochs, steps=args.steps, step_time=0.05)
    drain_metric_logger()
    if rank == 0 and os.environ.get("WANDB_PROJECT"):
        import wandb

        wandb.finish()
    cb = callbacks[0]
    bridge = cb.bridge
    (args.out / f"rank-{rank}.json").write_text(
        json.dumps(
            {
                **fed,
                "rank": rank,
                "class": type(cb).__name__,
                "ranks": bridge.ranks if bridge else None,
                "stats": {s["plugin"]: s for s in bridge.stats} if bridge else None,
                "ignored_controls": cb.ignored_controls,
                "unflushed": bridge.unflushed if bridge else None,
                "setup_error": cb.setup_error,
            }
        )
    )
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
