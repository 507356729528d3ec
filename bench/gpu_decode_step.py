"""End-to-end decode step on the GPU: edgert's torch model with the per-head cache and the
Triton headwise decode kernel (trt_plugins/torch_decode.py) against transformers' own greedy
decoding with its KV cache, same model, same GPU, float32.

    python bench/gpu_decode_step.py --out DIR [--dry-run]

The model has the decode benchmark's reference shape (hidden 512, 8 layers, 8 query / 2 kv
heads, random init); contexts 4k and 32k; per-token latency is the median gap between
consecutive greedy tokens (each token is read back to the host, as a server would). edgert
runs all heads full and with 25% retrieval heads (the rest sink 64 + recent 256). --dry-run:
a tiny model on CPU under Triton's interpreter, to rehearse the script without a GPU.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

REFERENCE = dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8,
                 num_key_value_heads=2, vocab_size=32000, initializer_range=0.02)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=128, initializer_range=0.3)


def _model(options: dict, max_positions: int):
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(**options, max_position_embeddings=max_positions)
    return transformers.LlamaForCausalLM(config).eval()


def _gaps(times: list[float]) -> float:
    return statistics.median(b - a for a, b in zip(times, times[1:])) * 1e3


def edgert_decode(model, prompt: list[int], new_tokens: int, device: str, retrieval: float | None) -> dict:
    """Per-token ms and tokens of TorchDecoder (all full, or a fraction of kv heads retrieval)."""
    from edgert.models.adapters import adapt, identity_plan
    from edgert.plan import CachePolicy, HeadPlan
    from edgert.trt_plugins.torch_decode import TorchDecoder

    plan = None
    if retrieval is not None:
        adapt(model)
        plan = identity_plan(model)
        # The first `retrieval` of all kv heads (layer by layer) keep everything, the rest a window.
        heads = sum(len(layer.cache) for layer in plan.layers)
        full, layers = round(heads * retrieval), []
        for layer in plan.layers:
            kv = len(layer.cache)
            keep, full = min(full, kv), full - min(full, kv)
            layers.append(replace(layer, cache=[CachePolicy()] * keep + [CachePolicy("window", 64, 256)] * (kv - keep)))
        plan = HeadPlan(layers, plan.head_dim)
    decoder = TorchDecoder(model, plan, device=device, attention="op" if device == "cuda" else "kernel")
    _sync(device)
    start, times, tokens = time.perf_counter(), [], []
    for token in decoder.stream(prompt, new_tokens):
        times.append(time.perf_counter())
        tokens.append(token)
    return {"prefill_s": times[0] - start, "decode_ms": _gaps(times), "tokens": tokens,
            "cache_mib": sum(a.nbytes for p in decoder.cache.retrieval + decoder.cache.streaming if p for a in p) / 2**20}


def transformers_decode(model, prompt: list[int], new_tokens: int, device: str) -> dict:
    """Per-token ms of transformers' greedy decoding with its DynamicCache (a streamer marks each token)."""
    import torch

    times = []

    class Clock:
        def put(self, value):
            times.append(time.perf_counter())

        def end(self):
            pass

    model = model.to(device)
    ids = torch.tensor([prompt], device=device)
    _sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(input_ids=ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                             pad_token_id=0, streamer=Clock())
    times = times[1:]  # the streamer's first call is the prompt
    return {"prefill_s": times[0] - start, "decode_ms": _gaps(times), "tokens": out[0, len(prompt):].tolist()}


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()
    if args.dry_run:
        os.environ.setdefault("TRITON_INTERPRET", "1")
        options, contexts, device, new_tokens = TINY, [48], "cpu", 6
    else:
        options, contexts, device, new_tokens = REFERENCE, [4096, 32768], "cuda", args.new_tokens
        from edgert.trt_plugins.kernels import register_cuda_kernels

        register_cuda_kernels()
    import numpy as np

    rows = []
    for context in contexts:
        model = _model(options, context + new_tokens)
        prompt = np.random.default_rng(context).integers(3, options["vocab_size"], size=context).tolist()
        peer = transformers_decode(copy.deepcopy(model), prompt, new_tokens, device)
        for label, retrieval in (("edgert all full", None), ("edgert 25% retrieval", 0.25)):
            run = edgert_decode(copy.deepcopy(model), prompt, new_tokens, device, retrieval)
            same = sum(a == b for a, b in zip(run["tokens"], peer["tokens"]))
            rows.append({"context": context, "runtime": label, **{k: v for k, v in run.items() if k != "tokens"},
                         "speedup": peer["decode_ms"] / run["decode_ms"], "tokens_equal": same, "tokens": len(peer["tokens"])})
        rows.append({"context": context, "runtime": "transformers", "prefill_s": peer["prefill_s"],
                     "decode_ms": peer["decode_ms"], "speedup": 1.0, "tokens_equal": None, "tokens": len(peer["tokens"])})
        print(f"context {context}: done", file=sys.stderr)
    lines = ["#### End-to-end decode step (reference Llama shape, float32)" if not args.dry_run else
             "#### End-to-end decode step (dry run: tiny model, CPU interpreter)", "",
             "| context | runtime | prefill s | decode ms/token p50 | vs transformers | greedy tokens equal |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        equal = "-" if r["tokens_equal"] is None else f"{r['tokens_equal']}/{r['tokens']}"
        lines.append(f"| {r['context']} | {r['runtime']} | {r['prefill_s']:.3f} | {r['decode_ms']:.3f} | "
                     f"{r['speedup']:.2f}x | {equal} |")
    markdown = "\n".join(lines)
    print(markdown)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_decode_step.json").write_text(json.dumps({"rows": rows, "markdown": markdown}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
