"""GPU kernels (Triton) and TensorRT plugin registration for edgert's custom ops.

Nothing here yet: the custom ops arrive with the head-aware attention and vision issues.
torch, triton and tensorrt are optional and will be imported lazily.
"""
