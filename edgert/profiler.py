"""Latency profiling, the public face: percentiles, throughput, memory and side-by-side runs
of forward models (bench_models) and of decoders (profile_decode, bench_decode).

The work lives in modules named for what they hold: edgert/latency.py (LatencyStats and the
interleaved timing loop), edgert/bench_config.py (BenchConfig, DecodeConfig),
edgert/bench_report.py (BenchReport, one for both kinds), edgert/forward_bench.py,
edgert/decode_bench.py and edgert/memory.py (resident set, available memory).
"""

from __future__ import annotations

from edgert.bench_config import (DEFAULT_DECODE_ITERS, DEFAULT_DECODE_WARMUP, MAX_BATCH, MAX_ITERS, BenchConfig,
                                 DecodeConfig)
from edgert.bench_report import AGREEMENT_TOLERANCE, BenchReport
from edgert.decode_bench import DecodeResult, DecodeStats, bench_decode, profile_decode, total_decode_runs
from edgert.forward_bench import ModelResult, bench_models, disagreement_warning, total_iterations
from edgert.latency import LatencyStats, Progress, interleaved_runs, time_interleaved
from edgert.memory import peak_rss_mb, reset_peak_rss, rss_mb

__all__ = ["AGREEMENT_TOLERANCE", "DEFAULT_DECODE_ITERS", "DEFAULT_DECODE_WARMUP", "MAX_BATCH", "MAX_ITERS",
           "BenchConfig", "BenchReport", "DecodeConfig", "DecodeResult", "DecodeStats", "LatencyStats",
           "ModelResult", "Progress", "bench_decode", "bench_models", "disagreement_warning",
           "interleaved_runs", "peak_rss_mb", "profile_decode", "reset_peak_rss", "rss_mb",
           "time_interleaved", "total_decode_runs", "total_iterations"]

DecodeReport = BenchReport  # its name before forward and decode benches shared one report class
