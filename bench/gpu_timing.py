"""Latency of one call for the GPU benchmarks: CUDA events around each call on a GPU, the host
clock on CPU (dry runs under Triton's interpreter, where the figure means nothing)."""

from __future__ import annotations

import statistics
import time


def median_ms(fn, device: str, warmup: int, reps: int) -> float:
    """Median latency of fn() in ms after `warmup` calls."""
    import torch

    for _ in range(warmup):
        fn()
    if device == "cpu":
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(start.elapsed_time(end) for start, end in events)
