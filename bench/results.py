"""Write one script's section of bench/RESULTS.md, leaving the other scripts' sections alone."""

from __future__ import annotations

import datetime
import os
import platform
import re
from pathlib import Path

from edgert._io import write_text_atomic
from edgert.cpu import cpu_isa

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = ("# edgert benchmark results\n\nEach section below is written by the script it names; "
          "rerun the script to refresh it. Figures are from the machine named in the section.\n")


def machine() -> str:
    """CPU model and core count of this machine, for the record."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    isa = cpu_isa()  # INT8 figures depend on these (ONNX Runtime's kernels differ with VNNI)
    return (f"{model} ({', '.join(isa.detected) or 'no INT8-relevant instruction sets found'}; "
            f"INT8 class {isa.int8_class}), {os.cpu_count()} logical cores, {platform.system()}")


def write_section(name: str, body: str) -> None:
    """Replace (or append) the section between `<!-- name:start -->` and `<!-- name:end -->`."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    block = f"{start}\n{body.rstrip()}\n\n_Written by `bench/{name}.py` on {stamp}._\n{end}"
    text = RESULTS.read_text() if RESULTS.exists() else HEADER
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.DOTALL)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    write_text_atomic(RESULTS, text)
