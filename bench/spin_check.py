"""Spin check: per-token decode and time to first token of edgert's Generator with ONNX Runtime's
idle threads spinning or not, on a quiet machine and with one core kept busy by another process
(the evidence behind edgert.generator._spin_policy).

    .venv/bin/python bench/spin_check.py [--context 4096] [--new-tokens 33] [--threads 2] [--repeats 2]
                                         [--no-write]

Every measurement is a fresh process on bench/decode_check.py's reference model (all heads
full, exported to bench/_work/decode/edgert-full.onnx on first use); the four settings alternate,
--repeats times, and the table shows medians. Writes its section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODEL = HERE / "_work" / "decode" / "edgert-full.onnx"


def _child(job: dict) -> None:
    import time

    import numpy as np

    import edgert

    generator = edgert.Generator(job["model"], threads=job["threads"], spin=job["spin"])
    generator.generate([3, 4, 5, 6, 7, 8, 9, 10], 2, stop=())
    prompt = np.random.default_rng(0).integers(3, generator.vocab_size, size=job["context"]).tolist()
    start, times = time.perf_counter(), []
    for _ in generator.stream(prompt, job["new_tokens"], stop=()):
        times.append(time.perf_counter())
    print(json.dumps({"prefill_s": times[0] - start, "decode_ms": float(np.median(np.diff(times))) * 1e3}))


def measure(spin: bool, busy: bool, args) -> dict:
    """One fresh process; with `busy`, another process spins on a core while it runs."""
    from decode_check import busy_core  # bench/ is on sys.path (main)

    job = {"model": str(MODEL), "threads": args.threads, "spin": spin, "context": args.context,
           "new_tokens": args.new_tokens}
    with busy_core(busy):
        result = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(job)],
                                capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--context", type=int, default=4096)
    parser.add_argument("--new-tokens", type=int, default=33)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    from results import machine, write_section

    if not MODEL.exists():
        from decode_model import reference_model_dir

        from edgert.exporters import export

        export(str(reference_model_dir(HERE / "_work" / "decode" / "models")), MODEL)
    settings = [(busy, spin) for busy in (False, True) for spin in (True, False)]
    runs = {s: [] for s in settings}
    for _ in range(args.repeats):
        for busy, spin in settings:
            runs[(busy, spin)].append(measure(spin, busy, args))
    lines = ["| machine | threads spin | prefill s | decode ms/token p50 |", "|---|---|---|---|"]
    for (busy, spin), results in runs.items():
        lines.append(f"| {'one core busy' if busy else 'quiet'} | {'yes' if spin else 'no'} | "
                     f"{statistics.median(r['prefill_s'] for r in results):.2f} | "
                     f"{statistics.median(r['decode_ms'] for r in results):.2f} |")
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        write_section("spin_check", f"### ONNX Runtime's spinning threads, quiet and busy\n\n{machine()}; reference "
                      f"Llama, all heads full, context {args.context}, {args.threads} threads, medians of "
                      f"{args.repeats} fresh processes per row.\n\n{table}\n\nCommand: "
                      f"`.venv/bin/python bench/spin_check.py {' '.join(sys.argv[1:])}`")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        _child(json.loads(sys.argv[2]))
    else:
        sys.exit(main())
