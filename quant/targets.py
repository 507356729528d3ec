"""Where an INT8 model is meant to run (`edgert quantize --target`), as data: the modes it
takes, the kernel configurations worth measuring for it, whether the graph is fused for
ONNX Runtime CPU first, and the op domains it cannot parse."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from edgert import cpu
from edgert.errors import QuantizeError
from edgert.quant.kernels import TENSORRT, Int8Kernel, cpu_kernels

ORT_ONLY_DOMAIN = "com.microsoft"  # ONNX Runtime's contrib ops, such as those --fuse makes


@dataclass(frozen=True)
class Int8Target:
    """One `--target`. kernels(mode, isa): the kernel configurations to measure; fuses: fuse
    attention for ONNX Runtime CPU (com.microsoft ops) before quantizing; refused_domains:
    op domains whose nodes it cannot parse; kernel_words / why: the one kernel form it always
    takes and why (empty: the fastest accurate one is chosen by measurement)."""

    name: str
    label: str
    modes: tuple[str, ...]
    kernels: Callable[[str, cpu.CpuIsa], tuple[Int8Kernel, ...]]
    fuses: bool
    refused_domains: tuple[str, ...] = ()
    kernel_words: str = ""
    why: str = ""

    def check_mode(self, mode: str) -> None:
        if mode not in self.modes:
            raise QuantizeError(f"{self.label} takes {' or '.join(self.modes)} INT8 only; "
                                f"use --mode {self.modes[0]}")

    def check_ops(self, model: object, ops: set[tuple[str, str]]) -> None:
        """Refuse a graph with nodes (domain, op type) of a domain this target cannot parse."""
        for domain in self.refused_domains:
            refused = sorted({op for d, op in ops if d == domain})
            if refused:
                raise QuantizeError(f"{model} has ONNX Runtime-only {domain} ops ({', '.join(refused)}), "
                                    f"which {self.label} cannot parse; export it with --no-optimize "
                                    f"for --target {self.name}")

    def choice(self, measured: str) -> str:
        """Why the kernel was chosen: the target's fixed form, else `measured` (choose_kernel's reason)."""
        return f"{self.kernel_words}, {self.why}" if self.kernel_words else measured


TARGETS = {target.name: target for target in (
    Int8Target("cpu", "ONNX Runtime CPU", ("static", "dynamic"), cpu_kernels, fuses=True),
    Int8Target("tensorrt", "TensorRT", ("static",), lambda mode, isa: (TENSORRT,), fuses=False,
               refused_domains=(ORT_ONLY_DOMAIN,), kernel_words="symmetric S8S8 QDQ",
               why="the form TensorRT's explicit quantization takes"),
)}
