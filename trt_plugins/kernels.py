"""Which Triton kernel implements which edgert op (edgert/op_spec.py), and their registration
as the CUDA implementation of the op's torch.library entry.

Each launcher takes the arguments of the op's torch reference (models/ops.py) and returns the
same result; it runs on CUDA tensors, or on CPU tensors under Triton's interpreter.
"""

from __future__ import annotations

from collections.abc import Callable

from edgert.op_spec import (CASCADED_GROUP_ATTENTION, CLIPPED_SOFTMAX, HEADWISE_DECODE_ATTENTION,
                            SINGLE_HEAD_ATTENTION, OpSpec)


def launchers() -> dict[str, Callable]:
    """op name -> its Triton launcher, taking the torch op's arguments positionally (imports
    triton; ops without a kernel are absent)."""
    from edgert.trt_plugins.clipped_softmax import clipped_softmax
    from edgert.trt_plugins.vision_attention import cascaded_group_attention, single_head_attention

    return {CLIPPED_SOFTMAX.name: clipped_softmax,
            CASCADED_GROUP_ATTENTION.name: cascaded_group_attention,
            SINGLE_HEAD_ATTENTION.name: single_head_attention,
            HEADWISE_DECODE_ATTENTION.name: _headwise_decode_attention}


def _headwise_decode_attention(q, k_new, v_new, retrieval_key, retrieval_value, past_mask, lengths, streaming_key,
                               streaming_value, window_positions, position, sink, recent, scale):
    """The launcher with the torch op's positional signature (the launcher's own is keyword-only
    after the new token's tensors)."""
    from edgert.trt_plugins.headwise_decode import headwise_decode_attention

    return headwise_decode_attention(q, k_new, v_new, retrieval_key=retrieval_key, retrieval_value=retrieval_value,
                                     past_mask=past_mask, lengths=lengths, streaming_key=streaming_key,
                                     streaming_value=streaming_value, window_positions=window_positions,
                                     position=position, sink=sink, recent=recent, scale=scale)


_registered: set[str] = set()


def registered_ops() -> set[str]:
    """The ops whose CUDA implementation register_cuda_kernels has set in this process."""
    return set(_registered)


def register_cuda_kernels() -> list[OpSpec]:
    """Make each kernel the CUDA implementation of its torch op, so `torch.ops.edgert.*` (and
    every edgert torch module that calls them) runs the kernel on CUDA tensors; CPU tensors keep
    the torch reference. Idempotent; returns the ops registered by this call."""
    import torch

    import edgert.models.ops  # noqa: F401  (defines the torch ops first)
    from edgert.op_spec import OPS

    done = []
    for name, launcher in launchers().items():
        spec = OPS[name]
        if name in _registered:
            continue
        torch.library.register_kernel(spec.torch_qualname, "cuda", launcher)
        _registered.add(name)
        done.append(spec)
    return done
