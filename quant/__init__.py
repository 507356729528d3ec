"""INT8 quantization: calibration readers (`calib`), activation outlier statistics
(`outliers`), quantization with an accuracy guard (`quantize`) and its FP32 comparison
(`evaluate`). Built on onnxruntime.quantization; no torch."""
