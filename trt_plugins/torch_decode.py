"""Greedy decoding in torch, on any device, with edgert's per-head KV cache: the torch model
edgert exports (models/decoder.py's DecoderStep over a plan's retrieval and streaming caches),
with one-token steps attending through the headwise decode attention op (on CUDA, the Triton
kernel of trt_plugins/headwise_decode.py).

It exists so the GPU machine can check more than single kernels: a whole decode step of a real
model on CUDA, token for token against the CPU reference. The runtime's own decoding is
edgert.Generator (ONNX Runtime); this module is for GPU checks and benchmarks.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from edgert.kv_cache import ATTENTION_MASK, INPUT_IDS, POSITION_IDS, CacheLayout, KVCache
from edgert.models.adapters import adapt, head_attentions, identity_plan, model_shape
from edgert.models.decoder import DecoderStep, order_for_cache
from edgert.plan import HeadPlan

ATTENTIONS = ("kernel", "op", "graph")
PREFILL_CHUNK = 512


class TorchDecoder:
    """Greedy generation with a transformers causal LM (Llama, Qwen2, Mistral) adapted to a
    HeadPlan, on `device`.

    model: a transformers *ForCausalLM, either untouched (plan None: every head keeps its full
    cache) or already adapted by edgert's head transforms, with `plan` the plan they returned.
    attention: how one-token steps attend: "kernel" calls the Triton launcher directly (CUDA,
    or CPU tensors under TRITON_INTERPRET=1), "op" calls torch.ops.edgert.headwise_decode_attention
    (the Triton kernel on CUDA once trt_plugins.kernels.register_cuda_kernels() ran, the torch
    reference elsewhere), "graph" keeps the arithmetic of the exported graph. float32 only, as
    the exported graph (its masks are float32).
    """

    def __init__(self, model, plan: HeadPlan | None = None, *, device: str | torch.device = "cuda",
                 attention: str = "kernel"):
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
        if plan is None:
            adapt(model)
            plan = identity_plan(model)
        plan = order_for_cache(model, plan)
        self.layout = CacheLayout.from_plan(plan, model_shape(model).head_dim)
        self.device = torch.device(device)
        self.step = DecoderStep(model.float(), self.layout).to(self.device).eval()
        function = _decode_attention(attention)
        for module in head_attentions(model):
            module.decode_attention = function
        self.cache: KVCache | None = None

    def stream(self, prompt: Sequence[int], max_new_tokens: int) -> Iterator[int]:
        """Yield greedy tokens after `prompt` (one sequence), each as soon as it exists."""
        ids = np.asarray([list(prompt)], np.int64)
        positions = np.arange(ids.shape[1], dtype=np.int64)[None]
        self.cache = KVCache(self.layout, 1, ids.shape[1] + max_new_tokens, dtype=torch.float32,
                             zeros=lambda shape, dtype: torch.zeros(shape, dtype=dtype, device=self.device))
        with torch.inference_mode():
            for start in range(0, ids.shape[1], PREFILL_CHUNK):
                end = min(start + PREFILL_CHUNK, ids.shape[1])
                logits = self._run(ids[:, start:end], positions[:, start:end], compact=True)
            position = ids.shape[1]
            for produced in range(max_new_tokens):
                token = int(logits[0].argmax())
                yield token
                if produced + 1 < max_new_tokens:
                    logits = self._run(np.asarray([[token]]), np.asarray([[position]]), compact=False)
                    position += 1

    def generate(self, prompt: Sequence[int], max_new_tokens: int) -> list[int]:
        """The greedy tokens after `prompt`."""
        return list(self.stream(prompt, max_new_tokens))

    def _run(self, ids: np.ndarray, positions: np.ndarray, *, compact: bool) -> torch.Tensor:
        """One DecoderStep over the cache (compact: only its written slots, as prefill chunks
        read it; else the whole buffers, as one-token steps do); writes the new keys/values."""
        mask = np.ones_like(ids)
        feeds = {INPUT_IDS: ids, POSITION_IDS: positions, ATTENTION_MASK: mask,
                 **self.cache.feeds(compact=compact, contiguous=lambda view: view)}
        logits, *new = self.step(*(self._on_device(feeds[name]) for name in self.layout.input_names()))
        outputs = dict(zip(self.layout.output_names()[1:], new))
        self.cache.append(outputs, positions, mask)
        return logits

    def _on_device(self, value) -> torch.Tensor:
        """A cache buffer (already a device tensor) or a numpy input, as a tensor on the device."""
        if isinstance(value, torch.Tensor):
            return value
        return torch.from_numpy(np.ascontiguousarray(value)).to(self.device)


def _decode_attention(attention: str):
    """The function HeadAttention's one-token steps call (None: the graph's arithmetic)."""
    if attention == "graph":
        return None
    if attention == "op":
        import edgert.models.ops  # noqa: F401  (defines the op)

        return torch.ops.edgert.headwise_decode_attention
    from edgert.trt_plugins.kernels import launchers
    from edgert.op_spec import HEADWISE_DECODE_ATTENTION

    return launchers()[HEADWISE_DECODE_ATTENTION.name]
