"""Runs inside bench/.venv-optimum: Optimum's ORTQuantizer with its avx512_vnni static config
on an Optimum ONNX export directory, calibrated on a text file.

usage: python optimum_quantize.py ONNX_DIR CALIB_TXT OUT_DIR CALIB_SIZE
"""

import json
import sys
import time
from types import SimpleNamespace

import numpy as np
import onnx
from optimum.onnxruntime import ORTQuantizer
from optimum.onnxruntime.configuration import AutoCalibrationConfig, AutoQuantizationConfig
from transformers import AutoTokenizer


class ListDataset:
    """The parts of datasets.Dataset that ORTQuantizer.fit reads (avoids installing datasets)."""

    def __init__(self, columns):
        self.columns = columns
        self.num_rows = len(next(iter(columns.values())))
        self.info, self.split = SimpleNamespace(builder_name="in_memory", config_name=None), "train"

    def __iter__(self):
        for i in range(self.num_rows):
            yield {k: np.asarray(v[i], dtype=np.int64) for k, v in self.columns.items()}


def main() -> None:
    onnx_dir, calib_txt, out_dir, size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    lines = [line.strip() for line in open(calib_txt, encoding="utf-8") if line.strip()][:size]
    tokenizer = AutoTokenizer.from_pretrained(onnx_dir)
    quantizer = ORTQuantizer.from_pretrained(onnx_dir, file_name="model.onnx")
    names = [i.name for i in onnx.load(f"{onnx_dir}/model.onnx", load_external_data=False).graph.input]
    encoded = tokenizer(lines, padding="max_length", max_length=128, truncation=True)
    dataset = ListDataset({k: encoded[k] for k in names})
    start = time.perf_counter()
    config = AutoQuantizationConfig.avx512_vnni(is_static=True, per_channel=True)
    ranges = quantizer.fit(dataset=dataset, calibration_config=AutoCalibrationConfig.minmax(dataset),
                           operators_to_quantize=config.operators_to_quantize, batch_size=1,
                           onnx_augmented_model_name=f"{out_dir}_augmented.onnx")
    quantizer.quantize(quantization_config=config, save_dir=out_dir, calibration_tensors_range=ranges)
    print(json.dumps({"seconds": time.perf_counter() - start, "path": f"{out_dir}/model_quantized.onnx"}))


if __name__ == "__main__":
    main()
