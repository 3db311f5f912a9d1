"""Stand-in (see ../../README.md): the fields of vLLM's engine arguments the tests use."""

from dataclasses import dataclass
from typing import Optional


@dataclass
class AsyncEngineArgs:
    model: str = ""
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    max_model_len: Optional[int] = None
    distributed_executor_backend: Optional[str] = None
