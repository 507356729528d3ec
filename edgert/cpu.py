"""The CPU's instruction sets that decide how ONNX Runtime runs INT8 matrix products.

ONNX Runtime's x86 U8S8 kernels use VPMADDUBSW on CPUs without VNNI, whose int16 sums of
two uint8 x int8 products saturate; with AVX512-VNNI, AVX-VNNI or AMX they accumulate in
int32 and do not. Arm's dot-product instructions (ASIMDDP: SDOT/UDOT) have no such limit.
Detection reads numpy's own CPUID probe (numpy only, so the runtime stays light), plus
Linux's /proc/cpuinfo for the two flags numpy does not report (AVX-VNNI, AMX-INT8).
`EDGERT_CPU_ISA=avx2` (or a list such as `avx2,avx512f`) replaces what is detected.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from edgert.errors import IsaError

ISA_ENV = "EDGERT_CPU_ISA"
AUTO = "auto"

# edgert's name (the Linux /proc/cpuinfo flag) -> numpy's __cpu_features__ key, or None when
# numpy does not report it.
X86_ISA = {"avx2": "AVX2", "avx512f": "AVX512F", "avx512bw": "AVX512BW",
           "avx512_vnni": "AVX512VNNI", "avx_vnni": None, "amx_int8": None}
ARM_ISA = {"asimd": "ASIMD", "asimddp": "ASIMDDP"}
KNOWN_ISA = {**X86_ISA, **ARM_ISA}
X86_VNNI = ("avx512_vnni", "avx_vnni", "amx_int8")

# INT8 classes: which kernels ONNX Runtime's MLAS picks for uint8 x int8 products.
VNNI, NO_VNNI, ARM_DOTPROD, ARM_NO_DOTPROD, UNKNOWN = "vnni", "no-vnni", "arm-dotprod", "arm", "unknown"



@dataclass(frozen=True)
class CpuIsa:
    """The instruction sets INT8 choices are made for.

    names: those in use (detected, or the override); detected: what this CPU reports;
    source: None when detected, else where the override came from (EDGERT_CPU_ISA or config).
    """

    names: tuple[str, ...]
    detected: tuple[str, ...]
    source: str | None = None

    @property
    def overridden(self) -> bool:
        return self.source is not None

    @property
    def int8_class(self) -> str:
        return int8_class(self.names)

    def to_dict(self) -> dict:
        return {"names": list(self.names), "detected": list(self.detected),
                "overridden": self.overridden, "source": self.source, "class": self.int8_class}


def detect_isa() -> list[str]:
    """Names of the INT8-relevant instruction sets this CPU has, in KNOWN_ISA order."""
    features = _numpy_cpu_features()
    found = {name for name, key in KNOWN_ISA.items() if key and features.get(key)}
    flags = _cpuinfo_flags()
    # /proc/cpuinfo describes the host even under an emulator (qemu -cpu Haswell) or a masking
    # hypervisor; its extra flags are trusted only when it agrees with numpy's CPUID probe.
    shared = [name for name, key in X86_ISA.items() if key]
    if flags and all((name in flags) == (name in found) for name in shared):
        found |= {name for name, key in X86_ISA.items() if key is None and name in flags}
    return [name for name in KNOWN_ISA if name in found]


def int8_class(names) -> str:
    """`vnni` / `no-vnni` on x86, `arm-dotprod` / `arm` on Arm, `unknown` otherwise."""
    names = set(names)
    if names & set(X86_ISA):
        return VNNI if names & set(X86_VNNI) else NO_VNNI
    if names & set(ARM_ISA):
        return ARM_DOTPROD if "asimddp" in names else ARM_NO_DOTPROD
    return UNKNOWN


def parse_isa(text: str) -> tuple[str, ...] | None:
    """A comma list of instruction-set names (None for `auto`); an unknown name is an IsaError."""
    items = [item.strip().lower() for item in text.split(",") if item.strip()]
    if items == [AUTO]:
        return None
    accepted = f"accepted: {AUTO}, or a comma list of {', '.join(KNOWN_ISA)}"
    unknown = [item for item in items if item not in KNOWN_ISA]
    if not items:
        raise IsaError(f"no instruction set named in {text!r}; {accepted}")
    if unknown:
        raise IsaError(f"unknown instruction set {unknown[0]!r}; {accepted}")
    if set(items) & set(X86_ISA) and set(items) & set(ARM_ISA):
        raise IsaError(f"{text!r} mixes x86 and Arm instruction sets; {accepted}")
    return tuple(name for name in KNOWN_ISA if name in items)


def cpu_isa(override: str | None = None) -> CpuIsa:
    """The instruction sets to choose INT8 kernels for: `override` (e.g. QuantConfig.isa),
    else $EDGERT_CPU_ISA, else what this CPU reports. None or `auto` defers to the next."""
    detected = tuple(detect_isa())
    for source, text in (("config", override), (ISA_ENV, os.environ.get(ISA_ENV))):
        if text is not None and text.strip():
            try:
                names = parse_isa(text)
            except IsaError as exc:
                raise IsaError(f"{source} {text!r}: {exc}") from None
            if names is not None:
                return CpuIsa(names, detected, source)
    return CpuIsa(detected, detected)


def _numpy_cpu_features() -> dict[str, bool]:
    # numpy moved its private CPUID table between 1.x and 2.x; neither location is public API.
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:
        try:  # numpy 1.x
            from numpy.core._multiarray_umath import __cpu_features__
        except ImportError:
            return {}
    return dict(__cpu_features__)


def _cpuinfo_flags() -> set[str]:
    """The x86 `flags` (or Arm `Features`) of the first CPU in /proc/cpuinfo; empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()
