"""Runs inside bench/.venv-optimum (Optimum pins transformers < 5): export a model directory
with Optimum's ONNX exporter and print the versions used as JSON.

usage: python optimum_export.py MODEL_DIR OUT_DIR {transformers,sentence_transformers}
"""

import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from optimum.exporters.onnx import main_export  # noqa: E402


def main() -> None:
    model_dir, out_dir, library = sys.argv[1:4]
    start = time.perf_counter()
    main_export(model_dir, output=out_dir, task="feature-extraction", library_name=library,
                device="cpu")
    import importlib.metadata as md

    print(json.dumps({
        "seconds": time.perf_counter() - start,
        "versions": {p: md.version(p) for p in ("optimum", "optimum-onnx", "transformers", "torch", "onnx")},
    }))


if __name__ == "__main__":
    main()
