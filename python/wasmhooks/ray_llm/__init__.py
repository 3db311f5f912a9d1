"""Wasm plugins in Ray Serve LLM: node initialization and the request path.

- :class:`WasmNodeInitCallback` (``node_init``): a ``CallbackBase`` for
  ``LLMConfig(callback_config=...)``: the node phases around Ray's
  ``initialize_node``.
- :class:`WasmIngress` (``ingress``): an ``OpenAiIngress`` for
  ``build_openai_app({..., "ingress_cls_config": {"ingress_cls": WasmIngress,
  "ingress_extra_kwargs": {"operator": ..., "job": ...}}})``: the serving
  phases on every chat and completions request, streamed or not.
- :class:`WasmGuard`: the same phases in the shape of Ray's ``LLMMiddleware``
  (``before_inference``, ``after_inference``, ``on_inference_complete``);
  where the installed Ray has ``ray.serve.llm.governance``,
  ``WasmLLMMiddleware`` is that middleware over it.
"""

from wasmhooks.ray_llm.ingress import WasmGuard, WasmIngress
from wasmhooks.ray_llm.node_init import WasmNodeInitCallback

__all__ = ["WasmGuard", "WasmIngress", "WasmNodeInitCallback"]

try:  # Ray's main branch; not in 2.60.
    from wasmhooks.ray_llm.governance import WasmLLMMiddleware

    __all__ += ["WasmLLMMiddleware"]
except ImportError:
    pass
