"""GPU kernels (Triton) for edgert's custom ops, and later their TensorRT plugins.

`kernels.py` says which kernel implements which op (edgert/op_spec.py) and registers them as
the CUDA implementation of the torch ops; `headwise_decode.py`, `vision_attention.py` and
`clipped_softmax.py` hold the kernels; `torch_decode.py` decodes a whole model in torch with
them; `triton_support.py` and `compile_check.py` build them ahead of time for sm_90 / sm_89.
Importing this package imports nothing heavy: torch and triton load with the modules that
need them, and the runtime (`edgert`) never imports this package.
"""
