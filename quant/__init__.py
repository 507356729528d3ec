"""INT8 quantization, built on onnxruntime.quantization and onnxscript's rewriter; no torch.

quantize      the orchestration: QuantConfig, quantize_model, QuantResult, the manifest record
kinds         which kind of model a session holds (the registry of ModelKind objects)
model_kind    what a kind provides (ModelKind), and the protocols of accuracy, speed, evaluation
encoder_kind, image_kind, decoder_kind
              the kinds: data, metrics and default guard, op types, float-node ranking, record
evaluate      accuracy and speed of encoders and image classifiers against FP32
decoder_eval  next-token accuracy and per-token speed of decoders against FP32
guard         the accuracy guard (cosine>=V, sqnr>=V, top1>=V, kl<=V)
kernels       the INT8 kernel configurations per CPU class, and how one is chosen
targets       where the INT8 model runs (--target cpu, tensorrt)
calib         calibration and held-out data readers (text, .npz, images, prompts)
outliers      activation outlier statistics
fuse          attention fusion for ONNX Runtime CPU
inline        inlining edgert custom ops whose bodies hold MatMul/Gemm/Conv
"""
