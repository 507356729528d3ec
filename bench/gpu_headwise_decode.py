"""Headwise decode attention on the GPU: the Triton kernel (trt_plugins/headwise_decode.py)
against torch's own attention for one new token of a Llama-3-8B-like layer (32 query heads,
8 kv heads, head dim 128, fp16; streaming heads keep sink 64 + recent 256).

    python bench/gpu_headwise_decode.py --out DIR [--dry-run]

Per batch (1, 8), context (4k, 32k, 128k) and retrieval share of the kv heads (25%, 50%):
(k) the kernel over the per-head cache (retrieval heads: the whole context, streaming heads:
their 320-slot window); (a) SDPA over the full cache for every head (GQA, the all-full model);
(b) two SDPA calls, retrieval heads over the full cache and streaming heads over the window;
(c) flex_attention (torch.compile) over the full cache with a per-head sink + recent block
mask. Latency: CUDA events around each call, median of many after warm-up (Python launch
overhead included, as a decode loop sees it); the kernel also inside a CUDA graph (GPU time).
Bandwidth: the bytes the kernel reads over its graph time, against a device-to-device copy
measured in the same run. Writes DIR/gpu_headwise_decode.json and prints a markdown table.
--dry-run: the same code on CPU under Triton's interpreter at tiny shapes (no flex, no graphs).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from gpu_timing import median_ms  # bench/ is on sys.path when a script of it runs


@dataclass(frozen=True)
class Setup:
    """Shapes and timing effort of one run."""

    heads: int
    kv: int
    head_dim: int
    sink: int
    recent: int
    batches: tuple[int, ...]
    contexts: tuple[int, ...]
    ratios: tuple[float, ...]
    warmup: int
    reps: int
    copy_bytes: int


GPU = Setup(32, 8, 128, 64, 256, (1, 8), (4096, 32768, 131072), (0.25, 0.5), 10, 100, 2**30)
DRY = Setup(8, 4, 32, 4, 12, (1, 2), (64, 160), (0.25, 0.5), 1, 3, 2**24)
# The GPU run must fit ~90 s: flex_attention compiles (tens of seconds for a new shape), so it is
# measured last, and a point is started only before this many seconds into the run.
FLEX_START_BY_S = 55.0
BASELINES = ("sdpa_full", "sdpa_split", "flex")  # (a), (b), (c): the rows' `{name}_ms`


def timer(device: str, warmup: int, reps: int):
    """fn -> median ms per call (bench/gpu_timing.py)."""
    return lambda fn: median_ms(fn, device, warmup, reps)


def copy_bandwidth(device: str, nbytes: int, measure) -> float:
    """GB/s of a device-to-device copy (bytes read + bytes written per second)."""
    import torch

    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = measure(lambda: dst.copy_(src))
    return 2 * nbytes / ms / 1e6


def make_inputs(setup: Setup, batch: int, context: int, ratio: float, device: str) -> dict:
    """The full cache of `context` tokens (the last is the new token) and the per-head cache the
    kernel reads: retrieval heads' slots as views into the full cache, streaming heads' window
    gathered as KVCache.append would have left it (sinks, then the ring of recent tokens)."""
    import torch

    dtype = torch.float16 if device == "cuda" else torch.float32
    kv, d, g = setup.kv, setup.head_dim, setup.heads // setup.kv
    r = max(1, round(kv * ratio))
    gen = torch.Generator(device=device).manual_seed(context + batch)
    full_k = torch.randn(batch, kv, context, d, device=device, dtype=dtype, generator=gen)
    full_v = torch.randn(batch, kv, context, d, device=device, dtype=dtype, generator=gen)
    q = torch.randn(batch, setup.heads, d, device=device, dtype=dtype, generator=gen)
    p, past = context - 1, context - 1  # the new token's position; slots before it
    kept = [t for t in range(p) if t < setup.sink or p - t <= setup.recent]  # what the window still holds
    window = setup.sink + setup.recent
    slots = torch.tensor([t if t < setup.sink else setup.sink + (t - setup.sink) % setup.recent for t in kept],
                         device=device)
    stream_k = torch.zeros(batch, kv - r, window, d, device=device, dtype=dtype)
    stream_v = torch.zeros_like(stream_k)
    kept_t = torch.tensor(kept, device=device)
    stream_k[:, :, slots] = full_k[:, r:, kept_t]
    stream_v[:, :, slots] = full_v[:, r:, kept_t]
    window_positions = torch.full((batch, window), -1, dtype=torch.int64, device=device)
    window_positions[:, slots] = kept_t
    headwise = dict(q=q, k_new=full_k[:, :, p], v_new=full_v[:, :, p],
                    retrieval_key=full_k[:, :r, :past], retrieval_value=full_v[:, :r, :past],
                    past_mask=torch.ones(batch, past, dtype=torch.int64, device=device),
                    streaming_key=stream_k, streaming_value=stream_v, window_positions=window_positions,
                    position=torch.full((batch,), p, dtype=torch.int64, device=device),
                    sink=setup.sink, recent=setup.recent)
    return dict(headwise=headwise, full_k=full_k, full_v=full_v, r=r, g=g, p=p)


def kernel_bytes(inputs: dict, num_splits: int) -> int:
    """Bytes the two launches read: retrieval and streaming keys/values, their masks, q and the
    new token's key/value (twice: both kernels), and the partials the reduce reads back."""
    hw = inputs["headwise"]
    batch, heads, d = hw["q"].shape
    item = hw["q"].element_size()
    cache = sum(hw[k].numel() for k in ("retrieval_key", "retrieval_value", "streaming_key", "streaming_value"))
    streaming = hw["streaming_key"].shape[1]
    masks = (hw["past_mask"].numel() * inputs["r"] + hw["window_positions"].numel() * streaming) * 8
    small = (2 * hw["q"].numel() + hw["k_new"].numel() + hw["v_new"].numel()) * item
    partials = batch * heads * num_splits * (d + 2) * 4
    return cache * item + masks + small + partials


def baselines(inputs: dict):
    """(a) SDPA over the full cache, (b) two SDPA calls (retrieval heads full, streaming heads window)."""
    import torch
    import torch.nn.functional as F

    hw, r, g = inputs["headwise"], inputs["r"], inputs["g"]
    q4 = hw["q"].unsqueeze(2)  # [B, H, 1, d]
    full_k, full_v = inputs["full_k"], inputs["full_v"]
    ret_k, ret_v = full_k[:, :r], full_v[:, :r]

    def sdpa_full():
        return F.scaled_dot_product_attention(q4, full_k, full_v, enable_gqa=True)

    def sdpa_split():
        retrieval = F.scaled_dot_product_attention(q4[:, :r * g], ret_k, ret_v, enable_gqa=True)
        streaming = F.scaled_dot_product_attention(q4[:, r * g:], hw["streaming_key"], hw["streaming_value"],
                                                   enable_gqa=True)
        return torch.cat([retrieval, streaming], dim=1)

    return sdpa_full, sdpa_split


class Flex:
    """(c) compiled flex_attention over the full cache with a per-head sink + recent block mask
    (built per point, outside the timing; retrieval heads see everything). The mask reads the
    split head and the query position from tensors filled per point, so a new point recompiles
    only for new shapes."""

    def __init__(self, setup: Setup, device: str):
        import torch
        from torch.nn.attention.flex_attention import flex_attention

        self.setup, self.device = setup, device
        self.split = torch.zeros((), dtype=torch.int64, device=device)
        self.query = torch.zeros((), dtype=torch.int64, device=device)
        self.compiled = torch.compile(flex_attention)
        split, query, sink, recent = self.split, self.query, setup.sink, setup.recent

        def mask_mod(b, h, q_idx, kv_idx):  # a plain function: create_block_mask takes no bound method
            return (h < split) | (kv_idx < sink) | (query - kv_idx <= recent)

        self.mask_mod = mask_mod

    def call(self, inputs: dict):
        from torch.nn.attention.flex_attention import create_block_mask

        self.split.fill_(inputs["r"] * inputs["g"])
        self.query.fill_(inputs["p"])
        context = inputs["full_k"].shape[2]
        block_mask = create_block_mask(self.mask_mod, B=None, H=self.setup.heads, Q_LEN=1, KV_LEN=context,
                                       device=self.device)
        q4 = inputs["headwise"]["q"].unsqueeze(2)
        return lambda: self.compiled(q4, inputs["full_k"], inputs["full_v"], block_mask=block_mask, enable_gqa=True)


def graphed(fn):
    """fn captured in a CUDA graph: its replay is GPU time without Python."""
    import torch

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def timed(row: dict, what: str, run) -> float | None:
    """run() (a timing in ms), or None with a note in `row` when it fails: one failing
    measurement must not end the run."""
    try:
        return run()
    except Exception as exc:  # noqa: BLE001 - reported in the row's notes and the table
        row["notes"].append(f"{what} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
        return None


def measure_row(setup: Setup, batch: int, context: int, ratio: float, device: str, measure):
    """The kernel and both SDPA baselines at one point; returns the row, its inputs and the
    kernel's output."""
    import torch

    from edgert.models.headwise_decode import headwise_decode_reference
    from edgert.trt_plugins.headwise_decode import choose_splits, headwise_decode_attention, tile_config

    inputs = make_inputs(setup, batch, context, ratio, device)
    hw = inputs["headwise"]
    block_n, _ = tile_config(torch.device(device), hw["q"].dtype)
    splits = choose_splits(context - 1, batch * inputs["r"], torch.device(device), block_n)
    kernel = lambda: headwise_decode_attention(**hw)  # noqa: E731
    out = kernel()
    row = {"batch": batch, "context": context, "retrieval_ratio": ratio, "retrieval_heads": inputs["r"],
           "num_splits": splits, "notes": []}
    if context <= 32768:  # the float32 reference is cheap enough here
        row["max_abs_diff_vs_reference"] = float((out.float() - headwise_decode_reference(**hw).float()).abs().max())
    sdpa_full, sdpa_split = baselines(inputs)
    row["kernel_ms"] = measure(kernel)
    row["kernel_graph_ms"] = timed(row, "kernel in a CUDA graph", lambda: measure(graphed(kernel))) \
        if device == "cuda" else None
    row["sdpa_full_ms"] = timed(row, "(a) SDPA full", lambda: measure(sdpa_full))
    row["sdpa_split_ms"] = timed(row, "(b) SDPA split", lambda: measure(sdpa_split))
    row["kernel_bytes"] = kernel_bytes(inputs, splits)
    row["kernel_gbs"] = row["kernel_bytes"] / (row["kernel_graph_ms"] or row["kernel_ms"]) / 1e6
    return row, inputs, out


def add_flex(row: dict, flex: Flex, inputs: dict, kernel_out, measure) -> None:
    """Time (c) into `row` and compare its output with the kernel's, or note why not."""
    def run() -> float:
        call = flex.call(inputs)
        row["flex_max_abs_diff_vs_kernel"] = float((call().squeeze(2).float() - kernel_out.float()).abs().max())
        return measure(call)

    row["flex_ms"] = timed(row, "(c) flex_attention", run)


def flex_pass(rows: list[dict], setup: Setup, device: str, measure, started: float) -> None:
    """(c) for each measured point, smallest first, while the run's time budget lasts (each new
    shape may recompile)."""
    import torch

    from edgert.trt_plugins.headwise_decode import headwise_decode_attention

    flex = None
    for row in sorted(rows, key=lambda r: (r["batch"] * r["context"], r["retrieval_ratio"])):
        if time.perf_counter() - started > FLEX_START_BY_S:
            row["notes"].append("flex_attention skipped where the run's time budget was spent")
            continue
        inputs = make_inputs(setup, row["batch"], row["context"], row["retrieval_ratio"], device)
        flex = flex or Flex(setup, device)
        add_flex(row, flex, inputs, headwise_decode_attention(**inputs["headwise"]), measure)
        del inputs
        torch.cuda.empty_cache()
        print(f"batch {row['batch']} context {row['context']} retrieval {row['retrieval_ratio']:.0%}: flex "
              f"{row['flex_ms']} ms ({time.perf_counter() - started:.0f} s)", file=sys.stderr)


def fits(setup: Setup, batch: int, context: int, device: str) -> bool:
    """Whether the full cache (plus headroom for the reference and workspaces) fits in free memory."""
    import torch

    if device != "cuda":
        return True
    need = 2 * batch * setup.kv * context * setup.head_dim * 2 * 2.5
    return need < torch.cuda.mem_get_info()[0]


def markdown(rows: list[dict], copy_gbs: float, dry: bool, device_name: str, skipped: list[str]) -> str:
    title = ("#### Headwise decode attention (dry run: CPU interpreter, tiny shapes; not a measurement)" if dry else
             f"#### Headwise decode attention, one new token ({device_name}; 32 q / 8 kv heads, d 128, fp16, "
             "sink 64 + recent 256)")
    how = ("perf_counter per call" if dry else "CUDA events per call, Python launch included; `graph`: the "
           "kernel replayed from a CUDA graph, whose time the bandwidth uses")
    lines = [title, "", f"Device-to-device copy: {copy_gbs:.0f} GB/s (read + write). Latency in ms, median ({how}).",
             "",
             "| batch | context | retrieval | kernel | graph | (a) SDPA full | (b) SDPA split | (c) flex | "
             "vs (a) | vs (b) | vs (c) | kernel GB/s | of copy |", "|" + "---|" * 13]

    def fmt(v, spec=".3f"):
        return "-" if v is None else format(v, spec)

    for r in rows:
        speed = [r[f"speedup_vs_{name}"] for name in BASELINES]
        lines.append(f"| {r['batch']} | {r['context']} | {r['retrieval_ratio']:.0%} | {r['kernel_ms']:.3f} | "
                     f"{fmt(r['kernel_graph_ms'])} | {fmt(r['sdpa_full_ms'])} | {fmt(r['sdpa_split_ms'])} | "
                     f"{fmt(r['flex_ms'])} | " + " | ".join(fmt(s, ".2f") + ("x" if s else "") for s in speed)
                     + f" | {r['kernel_gbs']:.0f} | {r['bandwidth_fraction']:.0%} |")
    notes = sorted({n for r in rows for n in r["notes"]}) + skipped
    return "\n".join(lines + ([""] + [f"- {n}" for n in notes] if notes else []))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dry-run", action="store_true", help="CPU, Triton's interpreter, tiny shapes")
    args = parser.parse_args()
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # before the kernel module is imported
    import torch

    started = time.perf_counter()
    setup, device = (DRY, "cpu") if args.dry_run else (GPU, "cuda")
    if device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA GPU (use --dry-run to rehearse on CPU)", file=sys.stderr)
        return 2
    measure = timer(device, setup.warmup, setup.reps)
    copy_gbs = copy_bandwidth(device, setup.copy_bytes, measure)
    device_name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    rows, skipped = [], []
    for batch in setup.batches:
        for context in setup.contexts:
            if not fits(setup, batch, context, device):
                skipped.append(f"batch {batch}, context {context}: skipped, not enough free GPU memory")
                continue
            for ratio in setup.ratios:
                row, inputs, out = measure_row(setup, batch, context, ratio, device, measure)
                row["bandwidth_fraction"] = row["kernel_gbs"] / copy_gbs
                row["flex_ms"] = None
                rows.append(row)
                del inputs, out
                print(f"batch {batch} context {context} retrieval {ratio:.0%}: kernel {row['kernel_ms']:.3f} ms "
                      f"({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    if args.dry_run:
        for row in rows:
            row["notes"].append("dry run: no flex_attention (no torch.compile under the interpreter), no CUDA graphs")
    else:
        flex_pass(rows, setup, device, measure, started)
    for row in rows:
        for name in BASELINES:
            ms = row[f"{name}_ms"]
            row[f"speedup_vs_{name}"] = None if ms is None else ms / row["kernel_ms"]
    table = markdown(rows, copy_gbs, args.dry_run, device_name, skipped)
    print(table)
    import triton

    result = {"device": device_name, "dry_run": args.dry_run, "torch": torch.__version__, "triton": triton.__version__,
              "setup": setup.__dict__, "copy_gbs": copy_gbs, "rows": rows, "skipped": skipped,
              "seconds": time.perf_counter() - started, "markdown": table}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_headwise_decode.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
