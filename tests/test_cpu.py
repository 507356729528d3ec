"""edgert.cpu: instruction-set detection, the INT8 class it implies, and the override."""

import platform

import pytest

from edgert import cpu
from edgert.cpu import IsaError, cpu_isa, detect_isa, int8_class, parse_isa


def test_detection_is_consistent_with_numpys_probe():
    names = detect_isa()
    assert names == [n for n in cpu.KNOWN_ISA if n in names]  # known names, canonical order, once each
    features = cpu._numpy_cpu_features()
    for name, key in cpu.KNOWN_ISA.items():
        if key is not None:
            assert (name in names) == bool(features.get(key)), name
    if "avx512_vnni" in names or "avx512bw" in names:
        assert "avx512f" in names
    if set(names) & set(cpu.X86_ISA):
        assert "avx2" in names or not set(names) & {"avx512f", "avx_vnni", "amx_int8"}
    machine = platform.machine().lower()
    expected = ({cpu.VNNI, cpu.NO_VNNI} if machine in ("x86_64", "amd64")
                else {cpu.ARM_DOTPROD, cpu.ARM_NO_DOTPROD} if machine in ("aarch64", "arm64")
                else {cpu.UNKNOWN})
    assert int8_class(names) in expected


@pytest.mark.parametrize("names, expected", [
    (["avx2"], cpu.NO_VNNI),
    (["avx2", "avx512f", "avx512bw"], cpu.NO_VNNI),  # Skylake-X: AVX-512 without VNNI
    (["avx2", "avx512f", "avx512bw", "avx512_vnni"], cpu.VNNI),
    (["avx2", "avx_vnni"], cpu.VNNI),  # Alder Lake: VNNI without AVX-512
    (["amx_int8"], cpu.VNNI),
    (["asimd"], cpu.ARM_NO_DOTPROD),
    (["asimd", "asimddp"], cpu.ARM_DOTPROD),
    ([], cpu.UNKNOWN),
])
def test_int8_class(names, expected):
    assert int8_class(names) == expected


def test_parse_isa():
    assert parse_isa(" AVX512_VNNI, avx2 ") == ("avx2", "avx512_vnni")
    assert parse_isa("auto") is None
    with pytest.raises(IsaError, match=r"unknown instruction set 'sse9'; accepted: auto, or a comma list of avx2"):
        parse_isa("avx2,sse9")
    with pytest.raises(IsaError, match="mixes x86 and Arm"):
        parse_isa("avx2,asimddp")
    with pytest.raises(IsaError, match="no instruction set named"):
        parse_isa(" , ")


def test_override_by_environment_and_by_config(monkeypatch):
    detected = tuple(detect_isa())
    monkeypatch.delenv(cpu.ISA_ENV, raising=False)
    assert cpu_isa() == cpu.CpuIsa(detected, detected, None)
    assert not cpu_isa().overridden and cpu_isa("auto").names == detected

    monkeypatch.setenv(cpu.ISA_ENV, "avx2")
    isa = cpu_isa()
    assert isa.names == ("avx2",) and isa.detected == detected and isa.source == cpu.ISA_ENV
    assert isa.int8_class == cpu.NO_VNNI and isa.to_dict()["overridden"] is True
    assert cpu_isa("auto").source == cpu.ISA_ENV  # auto in the config defers to the environment
    forced = cpu_isa("avx2,avx512f,avx512_vnni")  # the config beats the environment
    assert forced.source == "config" and forced.int8_class == cpu.VNNI

    monkeypatch.setenv(cpu.ISA_ENV, "auto")
    assert cpu_isa().names == detected and not cpu_isa().overridden
    monkeypatch.setenv(cpu.ISA_ENV, "avx3")
    with pytest.raises(IsaError, match="^EDGERT_CPU_ISA 'avx3': unknown instruction set 'avx3'"):
        cpu_isa()


def test_cpuinfo_extras_are_trusted_only_when_it_agrees_with_numpy(monkeypatch):
    haswell = {"AVX2": True}
    # qemu -cpu Haswell on an AVX-512 host: /proc/cpuinfo still describes the host
    monkeypatch.setattr(cpu, "_numpy_cpu_features", lambda: haswell)
    monkeypatch.setattr(cpu, "_cpuinfo_flags", lambda: {"avx2", "avx512f", "avx512bw", "avx512_vnni",
                                                        "avx_vnni", "amx_int8"})
    assert detect_isa() == ["avx2"]
    # Alder Lake: AVX-VNNI, which numpy does not report, and no AVX-512
    monkeypatch.setattr(cpu, "_cpuinfo_flags", lambda: {"avx2", "avx_vnni"})
    assert detect_isa() == ["avx2", "avx_vnni"] and int8_class(detect_isa()) == cpu.VNNI
    monkeypatch.setattr(cpu, "_cpuinfo_flags", set)  # no /proc/cpuinfo (macOS, Windows)
    assert detect_isa() == ["avx2"]
