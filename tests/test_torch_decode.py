"""Torch-side decoding with the per-head cache (trt_plugins/torch_decode.py): the Triton decode
kernel inside a whole model's decode steps gives the tokens of transformers and of the graph's
own arithmetic (the interpreter here; CUDA on the GPU machine)."""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("triton")

from edgert.models.adapters import adapt, identity_plan  # noqa: E402
from edgert.plan import CachePolicy, HeadPlan  # noqa: E402
from edgert.trt_plugins.torch_decode import TorchDecoder  # noqa: E402

NEW_TOKENS = 10


def tiny_llama(**overrides):
    torch.manual_seed(0)
    options = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, vocab_size=128, max_position_embeddings=512, initializer_range=0.3)
    config = transformers.LlamaConfig(**{**options, **overrides})
    return transformers.LlamaForCausalLM(config).eval()


def prompt(length: int = 21) -> list[int]:
    return np.random.default_rng(length).integers(0, 128, size=length).tolist()


def transformers_greedy(model, tokens: list[int], new_tokens: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([tokens]), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    return out[0, len(tokens):].tolist()


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def test_kernel_decoding_equals_transformers_greedy():
    model = tiny_llama()
    expected = transformers_greedy(model, prompt(), NEW_TOKENS)
    decoder = TorchDecoder(copy.deepcopy(model), device=device(), attention="kernel")
    assert decoder.generate(prompt(), NEW_TOKENS) == expected


def test_kernel_decoding_equals_the_graph_arithmetic_with_streaming_heads():
    """One kv head per layer streaming (sink 2 + recent 5, listed first so the cache reorders
    it), a window that wraps during the prompt: the kernel and the exported graph's arithmetic
    give the same tokens, and the op's reference too."""
    tokens = {}
    for attention in ("graph", "kernel", "op"):
        model = tiny_llama()
        adapt(model)
        plan = identity_plan(model)
        plan = HeadPlan([replace(layer, cache=[CachePolicy("window", 2, 5), CachePolicy()]) for layer in plan.layers],
                        plan.head_dim)
        decoder = TorchDecoder(model, plan, device=device(), attention=attention)
        tokens[attention] = decoder.generate(prompt(), NEW_TOKENS)
        assert decoder.layout.streaming == (1, 1) and decoder.layout.window == 7
    assert tokens["kernel"] == tokens["graph"] == tokens["op"]


def test_unknown_attention_is_refused():
    with pytest.raises(ValueError, match="attention must be one of"):
        TorchDecoder(tiny_llama(), device="cpu", attention="flash")


@pytest.mark.gpu
def test_reference_llama_decodes_on_cuda_like_cpu():
    """The decode benchmark's reference shape (hidden 512, 8 layers, 8 query / 2 kv heads), on
    CUDA with the kernel registered for the op, against the same model's CPU graph arithmetic."""
    from edgert.trt_plugins.kernels import register_cuda_kernels

    register_cuda_kernels()
    options = dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8,
                   num_key_value_heads=2, vocab_size=32000, max_position_embeddings=4096)
    model = tiny_llama(**options)
    tokens = prompt(1000)
    cpu = TorchDecoder(copy.deepcopy(model), device="cpu", attention="graph").generate(tokens, 16)
    assert TorchDecoder(copy.deepcopy(model), device="cuda", attention="op").generate(tokens, 16) == cpu
    assert TorchDecoder(model, device="cuda", attention="kernel").generate(tokens, 16) == cpu
