"""What a bench runs: BenchConfig (forward runs of any model) and DecodeConfig (generations
of a decoder), each checked field by field before anything is opened, and the checks of a
bench call's other arguments (model paths, progress callback).

Only limits that need no model are checked here; the model-dependent ones (sequence length,
memory) are checked per model before its inputs are made.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from edgert._io import path_argument
from edgert.devices import DEVICES
from edgert.errors import OptionError
from edgert.session import check_threads

MAX_ITERS = 100_000  # per model, for --iters and --warmup: past this a run is a typo, not a benchmark
MAX_BATCH = 65_536  # far past any edge workload; memory is checked per model as well
DEFAULT_DECODE_WARMUP = 1  # generation runs per model before timing (ONNX Runtime's first runs are slow)
DEFAULT_DECODE_ITERS = 5  # timed generation runs per model; each gives new_tokens - 1 token latencies


def check_whole(name: str, value: object, low: int, high: int | None) -> None:
    """OptionError unless `value` is a whole number in low..high (high None: no upper bound)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise OptionError(f"{name} must be a whole number, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        bounds = f"lie in {low}..{high}" if high is not None else f"be >= {low}"
        why = " (decode latency is the time between consecutive tokens)" if name == "new_tokens" else ""
        raise OptionError(f"{name} must {bounds}{why}, got {value}")


def _check_device(device: object) -> None:
    if not isinstance(device, str) or device not in DEVICES:
        raise OptionError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")


@dataclass
class BenchConfig:
    """What to run: batch, sequence length, warmup and timed iterations per model."""

    batch: int = 1
    seq: int = 128
    warmup: int = 10
    iters: int = 100
    threads: int | None = None
    device: str = "cpu"
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    block: int | None = None  # iterations per interleaved block; None: iters // 10
    spin: bool = True  # ONNX Runtime's default; False disables intra-op thread spinning

    def check(self) -> BenchConfig:
        """Raise OptionError naming the first field out of its bounds; return self.

        The model-dependent limits (sequence length, memory) are checked per model when
        its inputs are made (Session.check_shapes)."""
        for name, low, high in (("batch", 1, MAX_BATCH), ("seq", 1, None), ("iters", 1, MAX_ITERS),
                                ("warmup", 0, MAX_ITERS), ("block", 1, None)):
            if name != "block" or self.block is not None:
                check_whole(name, getattr(self, name), low, high)
        check_threads(self.threads)
        _check_device(self.device)
        if not isinstance(self.spin, bool):
            raise OptionError(f"spin must be True or False, got {type(self.spin).__name__}")
        if not isinstance(self.shapes, dict) or not all(
                isinstance(k, str) and isinstance(v, tuple) and v
                and all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in v)
                for k, v in self.shapes.items()):
            raise OptionError("shapes must map input names to tuples of sizes >= 1, "
                              "e.g. {'pixel_values': (1, 3, 224, 224)}")
        return self


@dataclass
class DecodeConfig:
    """What bench_decode runs: `iters` timed generations of `new_tokens` tokens after a
    prompt of `context` tokens per batch row, after `warmup` untimed ones."""

    context: int = 256
    new_tokens: int = 64
    batch: int = 1
    warmup: int = DEFAULT_DECODE_WARMUP
    iters: int = DEFAULT_DECODE_ITERS
    threads: int | None = None
    device: str = "cpu"
    seed: int = 0

    def check(self) -> DecodeConfig:
        """Raise OptionError naming the first field out of its bounds; return self. The
        model's limits (context + new_tokens, memory) are checked per model."""
        for name, low, high in (("context", 1, None), ("new_tokens", 2, None), ("batch", 1, MAX_BATCH),
                                ("warmup", 0, MAX_ITERS), ("iters", 1, MAX_ITERS), ("seed", 0, None)):
            check_whole(name, getattr(self, name), low, high)
        check_threads(self.threads)
        _check_device(self.device)
        return self


def checked_run(paths: object, config: object, config_type: type, progress: object) -> list[str]:
    """The model paths of a bench run, after checking them, its config and its progress callback."""
    paths = _model_paths(paths)
    if not isinstance(config, config_type):
        raise OptionError(f"config must be a {config_type.__name__}, got {type(config).__name__}")
    if progress is not None and not callable(progress):
        raise OptionError(f"progress must be callable, got {type(progress).__name__}")
    config.check()
    return paths


def _model_paths(paths: object) -> list[str]:
    if isinstance(paths, (str, bytes, os.PathLike)):
        raise OptionError("paths must be a list of model paths, not one path; e.g. [path]")
    if not isinstance(paths, Sequence) or not paths:
        raise OptionError("paths must be a non-empty list of model paths")
    return [str(path_argument(p, "a model path", OptionError)) for p in paths]


def total_runs(num_models: int, warmup: int, iters: int) -> int:
    """How many runs a bench of `num_models` reports through `progress`: each model's warm-up
    and timed runs alone, and again interleaved when there are several models."""
    return num_models * (warmup + iters) * (2 if num_models > 1 else 1)
