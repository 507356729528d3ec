"""INT8 quantization: calibration readers (`calib`), activation outlier statistics
(`outliers`), attention fusion for ONNX Runtime CPU (`fuse`), quantization with an accuracy
guard (`quantize`) and its FP32 comparison (`evaluate`). Built on onnxruntime.quantization and
onnxscript's rewriter; no torch."""
