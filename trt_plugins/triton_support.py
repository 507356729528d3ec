"""What every Triton kernel of edgert shares: where it runs, and how it is compiled ahead of
time for a GPU this machine may not have.

Where a kernel runs: on CUDA tensors when a GPU is present, and on CPU tensors under Triton's
interpreter (`TRITON_INTERPRET=1`, which must be set before the kernel modules are imported:
Triton picks the interpreter when `@triton.jit` runs). CI has no GPU, so every kernel is
checked there under the interpreter at small shapes.

Ahead-of-time compilation: `triton.compile` builds PTX for a given architecture without a
GPU. TensorRT's AOT plugin launcher (the TensorRT issue) takes a kernel's PTX and launch
parameters and has no way to hand it Triton's global scratch buffer, so every kernel must
compile with `global_scratch_size == 0`. Each kernel module lists the configurations it is
built in (`aot_builds()`); `python -m edgert.trt_plugins.compile_check` compiles them all in a
process of its own (the interpreter replaces `@triton.jit` functions, so a process running
kernels on CPU cannot also compile them).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

INTERPRET_ENV = "TRITON_INTERPRET"
# sm_90 (Hopper: the H100/H200 GPU machine) and sm_89 (Ada: RTX 40 / L4), the targets the
# compile check builds for.
DEFAULT_ARCHS = (90, 89)


def cuda_device_present() -> bool:
    """Whether this machine has an NVIDIA GPU, without importing torch (the device nodes the
    driver creates)."""
    return Path("/dev/nvidiactl").exists() or any(Path("/dev").glob("nvidia[0-9]*"))


def interpreting() -> bool:
    """Whether Triton kernels imported now run in Triton's interpreter (on CPU tensors)."""
    return os.environ.get(INTERPRET_ENV, "0").lower() in ("1", "true", "yes", "on")


def check_runs_here(name: str, tensor, interpreted: bool) -> None:
    """RuntimeError unless a kernel jitted with `interpreted` (whether the interpreter was on when
    its module was imported) can run on `tensor`: CUDA tensors, or CPU tensors under the interpreter."""
    if not tensor.is_cuda and not interpreted:
        raise RuntimeError(f"{name} runs on CUDA tensors, or on CPU tensors only with {INTERPRET_ENV}=1 set before "
                           f"edgert.trt_plugins is imported; got a tensor on {tensor.device}")


def triton_available() -> bool:
    """Whether `import triton` works here."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class AotBuild:
    """One configuration of one kernel to compile ahead of time: the kernel (a
    `@triton.jit` function), its argument types in Triton's signature notation ("*fp16",
    "i32", "constexpr"), the constexpr values, and a name for reports."""

    name: str
    kernel: object
    signature: dict[str, str]
    constexprs: dict[str, object] = field(default_factory=dict)
    num_warps: int = 4


@dataclass(frozen=True)
class AotResult:
    """What compiling one AotBuild produced."""

    name: str
    arch: int
    kernel_name: str
    ptx_bytes: int
    cubin_bytes: int
    global_scratch_size: int
    shared_bytes: int
    num_warps: int


def compile_build(build: AotBuild, arch: int) -> AotResult:
    """Compile `build` for CUDA compute capability `arch` (e.g. 90) without a GPU."""
    import triton
    from triton.backends.compiler import GPUTarget

    source = triton.compiler.ASTSource(fn=build.kernel, signature=build.signature, constexprs=build.constexprs)
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": build.num_warps})
    meta = compiled.metadata
    return AotResult(build.name, arch, meta.name, len(compiled.asm["ptx"]), len(compiled.asm.get("cubin", b"")),
                     int(meta.global_scratch_size), int(meta.shared), int(meta.num_warps))
