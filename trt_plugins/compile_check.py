"""Compile every edgert Triton kernel ahead of time for GPUs this machine may not have.

    python -m edgert.trt_plugins.compile_check [--arch 90 89] [--json]

Runs each kernel module's `aot_builds()` through `triton.compile` for each architecture and
prints one row per build (PTX size, shared memory, global scratch). Exits non-zero when a
build fails or needs Triton's global scratch buffer (TensorRT's AOT plugins cannot provide
one). Must run without TRITON_INTERPRET (the interpreter replaces the kernels).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from edgert.trt_plugins.triton_support import DEFAULT_ARCHS, compile_build, interpreting

# Modules with an aot_builds() -> list[AotBuild]; each kernel module adds itself here.
KERNEL_MODULES: tuple[str, ...] = ("edgert.trt_plugins.headwise_decode", "edgert.trt_plugins.clipped_softmax",
                                   "edgert.trt_plugins.vision_attention")


def all_builds() -> list:
    """Every AotBuild of every kernel module."""
    import importlib

    return [build for name in KERNEL_MODULES for build in importlib.import_module(name).aot_builds()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, nargs="+", default=list(DEFAULT_ARCHS))
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if interpreting():
        print("error: unset TRITON_INTERPRET: the interpreter replaces the kernels this compiles", file=sys.stderr)
        return 2
    results, failures = [], []
    for build in all_builds():
        for arch in args.arch:
            try:
                result = compile_build(build, arch)
            except Exception as exc:  # noqa: BLE001 - report every failing build, then fail
                failures.append(f"{build.name} sm_{arch}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
                continue
            results.append(result)
            if result.global_scratch_size:
                failures.append(f"{build.name} sm_{arch}: needs {result.global_scratch_size} bytes of global scratch")
    if args.json:
        print(json.dumps({"results": [asdict(r) for r in results], "failures": failures}))
    else:
        for r in results:
            print(f"{r.name:40s} sm_{r.arch}  ptx {r.ptx_bytes:>8d} B  shared {r.shared_bytes:>6d} B  "
                  f"scratch {r.global_scratch_size}  warps {r.num_warps}")
        for failure in failures:
            print(f"FAILED {failure}", file=sys.stderr)
    return 1 if failures or not results else 0


if __name__ == "__main__":
    sys.exit(main())
