"""Train edgert's tiny LM (models/tiny_lm.py) and save it as a Hugging Face Llama directory.

    .venv/bin/python scripts/train_tiny_lm.py models/weights/tiny-lm   # the committed weights: ~8 min, 2 cores

Seeded: the same torch build and thread count give the same weights (a second run here
gave a bit-identical model.safetensors).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch

from edgert.models.tiny_lm import TinyLMConfig, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("--steps", type=int, default=TinyLMConfig.steps)
    parser.add_argument("--seed", type=int, default=TinyLMConfig.seed)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    record = train(args.output, replace(TinyLMConfig(), steps=args.steps, seed=args.seed))
    print(f"{record['parameters']:,} parameters, {record['train_seconds']} s -> {args.output}")


if __name__ == "__main__":
    main()
