"""Reading back what a run's trackers wrote, as their own tools would:
TensorBoard's event files with TensorBoard's reader, and a W&B offline
run's history records from its ``.wandb`` file, parsed with W&B's own
protobuf messages."""

from __future__ import annotations

import struct
from collections import defaultdict
from pathlib import Path
from typing import Any


def tensorboard_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the event files under ``logdir``: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for events in sorted(Path(logdir).rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0, "tensors": 0})
        acc.Reload()
        tags = acc.Tags()
        for tag in tags.get("scalars", []):
            out[tag] += [(e.step, e.value) for e in acc.Scalars(tag)]
        # TensorBoard's own SummaryWriter may store scalars as tensors (and
        # text, such as HF's arguments, as string tensors: skipped).
        for tag in tags.get("tensors", []):
            from tensorboard.util import tensor_util

            for e in acc.Tensors(tag):
                value = tensor_util.make_ndarray(e.tensor_proto)
                if value.dtype.kind in "fiu" and value.size == 1:
                    out[tag].append((e.step, float(value)))
    return dict(out)


def _records(path: Path) -> list[bytes]:
    """The records of a ``.wandb`` file: W&B's LevelDB-style log (a 7-byte
    header, then 32 KiB blocks of chunks, each with a CRC-32C'd header of
    checksum, length and type: full, first, middle, last)."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B data file"
    block = 32768
    pos, out, partial = 7, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        if kind == 1:
            out.append(chunk)
        elif kind == 2:
            partial = chunk
        elif kind == 3:
            partial += chunk
        elif kind == 4:
            out.append(partial + chunk)
            partial = b""
    return out


def wandb_history(wandb_dir: Path) -> list[dict[str, Any]]:
    """The history rows (``run.log`` calls) of the offline runs under
    ``wandb_dir``, each a dict of key -> value."""
    import json

    from wandb.proto import wandb_internal_pb2 as pb

    rows = []
    for path in sorted(Path(wandb_dir).rglob("run-*.wandb")):
        for raw in _records(path):
            record = pb.Record()
            record.ParseFromString(raw)
            if record.WhichOneof("record_type") == "history":
                row = {}
                for item in record.history.item:
                    key = item.key or "/".join(item.nested_key)
                    row[key] = json.loads(item.value_json)
                rows.append(row)
    return rows


__all__ = ["tensorboard_scalars", "wandb_history"]
