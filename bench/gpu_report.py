"""The GPU run's record: the machine (environment.json), and the RESULTS.md section made from
what bench/gpu_check.sh wrote under OUT.

    python bench/gpu_report.py OUT --environment   # write OUT/environment.json
    python bench/gpu_report.py OUT                 # write OUT/gpu_section.md from OUT's results
    python bench/gpu_report.py OUT --write         # also put that section into bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

HERE = Path(__file__).resolve().parent
SECTION = "gpu_report"  # its RESULTS.md section (stamped with this script's name)
BENCHES = ("gpu_headwise_decode.json", "gpu_vision_attention.json", "gpu_decode_step.json")


def environment() -> dict:
    """GPU, driver-visible facts, and the versions of Python, torch and Triton."""
    import torch

    facts = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
             "gpu": None, "interpreter": False}
    try:
        import triton

        facts["triton"] = triton.__version__
    except ImportError:
        facts["triton"] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        facts.update(gpu=props.name, multiprocessors=props.multi_processor_count,
                     memory_gib=round(props.total_memory / 2**30, 1),
                     capability=f"{props.major}.{props.minor}")
    else:
        from edgert.trt_plugins.triton_support import interpreting

        facts["interpreter"] = interpreting()
    return facts


def test_summary(path: Path) -> str:
    """'N passed, M failed, K skipped' from pytest's JUnit XML."""
    if not path.exists():
        return "no test report"
    suite = ElementTree.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    total, failed = int(suite.get("tests", 0)), int(suite.get("failures", 0)) + int(suite.get("errors", 0))
    skipped = int(suite.get("skipped", 0))
    return f"{total - failed - skipped} passed, {failed} failed, {skipped} skipped"


def section(out: Path) -> str:
    """Markdown for bench/RESULTS.md: the machine, the tests, each benchmark's table."""
    env = json.loads((out / "environment.json").read_text()) if (out / "environment.json").exists() else {}
    where = (f"{env.get('gpu')} ({env.get('multiprocessors')} SMs, {env.get('memory_gib')} GiB, compute "
             f"capability {env.get('capability')})" if env.get("gpu") else
             "no GPU: a dry run under Triton's interpreter at tiny shapes (not a measurement)")
    lines = ["### GPU kernels (bench/gpu_check.sh)", "",
             f"{where}; torch {env.get('torch')}, Triton {env.get('triton')}, CUDA {env.get('cuda')}, "
             f"Python {env.get('python')}.", "",
             f"Kernel tests: {test_summary(out / 'gpu-tests.xml')}.", ""]
    for name in BENCHES:
        path = out / name
        if not path.exists():
            lines += [f"`{name}`: not produced (see the run's log).", ""]
            continue
        result = json.loads(path.read_text())
        lines += [result.get("markdown", "").rstrip(), ""]
    lines.append("Command: `bash bench/gpu_check.sh OUT` on the GPU machine, then "
                 "`.venv/bin/python bench/gpu_report.py OUT --write`.")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--environment", action="store_true", help="record the machine only")
    parser.add_argument("--write", action="store_true", help="put the section into bench/RESULTS.md")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.environment:
        facts = environment()
        (args.out / "environment.json").write_text(json.dumps(facts, indent=1))
        print(json.dumps(facts))
        return 0
    body = section(args.out)
    (args.out / "gpu_section.md").write_text(body + "\n")
    print(body)
    if args.write:
        env = json.loads((args.out / "environment.json").read_text())
        if not env.get("gpu"):
            print("error: this OUT is a dry run (no GPU): not written to RESULTS.md", file=sys.stderr)
            return 1
        sys.path.insert(0, str(HERE))
        from results import write_section

        write_section(SECTION, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
