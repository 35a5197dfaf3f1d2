"""Inference precision: ``fp32``, ``bf16``, ``int8`` or ``auto``, decided per CPU at run time.

- ``fp32``: float32 everywhere (the reference).
- ``bf16``: bfloat16 convolutions on AVX512-BF16 or AMX units. With the ``auto`` or ``openvino``
  backend: the exported file in OpenVINO with its bf16 inference-precision hint (:mod:`.ov_runtime`;
  the box decoding and NMS inside the file stay float32); with ``--backend torch``: the BN-folded
  PyTorch network in bfloat16 (oneDNN). Outputs come back as float32.
- ``int8``: onnxruntime on a file quantised with calibration images (:mod:`.quantize`): int8
  weights, uint8 activations (VNNI / AMX-int8 ``u8s8`` kernels).
- ``auto``: ``int8`` when calibration images are given and the CPU has int8 dot-product
  instructions (VNNI or AMX-int8) and :data:`MEASURED` says int8 was faster on its class; else
  ``bf16`` in OpenVINO when the CPU has bf16 instructions and the network measured faster in it
  than in float32 onnxruntime *on this CPU* (:func:`.bf16_probe.bf16_measured_faster`: timed once per
  file and CPU, remembered in the cache); else ``fp32``. A reduced precision is never picked where it
  was not measured faster.

The CPU is read from ``/proc/cpuinfo`` (Linux); elsewhere only ``fp32`` is automatic.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16", "int8")


@dataclass(frozen=True)
class CpuInfo:
    """The CPU's name and the instruction-set flags that matter for reduced precision."""

    name: str
    flags: frozenset[str]

    @property
    def amx_bf16(self) -> bool:
        return "amx_bf16" in self.flags

    @property
    def amx_int8(self) -> bool:
        return "amx_int8" in self.flags

    @property
    def avx512_bf16(self) -> bool:
        return "avx512_bf16" in self.flags

    @property
    def int8_dot(self) -> bool:
        """uint8 x int8 dot products in hardware (AVX512-VNNI, AVX-VNNI or AMX-int8)."""
        return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & self.flags)

    @property
    def cpu_class(self) -> str:
        """The key of :data:`MEASURED`: ``amx``, ``avx512_bf16`` (without AMX), ``vnni`` or ``other``."""
        if self.amx_bf16:
            return "amx"
        if self.avx512_bf16:
            return "avx512_bf16"
        if self.int8_dot:
            return "vnni"
        return "other"


@functools.lru_cache(maxsize=1)
def cpu_info(path: str = "/proc/cpuinfo") -> CpuInfo:
    """This machine's :class:`CpuInfo` (empty flags where ``/proc/cpuinfo`` cannot be read)."""
    name, flags = "unknown CPU", frozenset()
    try:
        text = Path(path).read_text()
    except OSError:
        return CpuInfo(name, flags)
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and name == "unknown CPU":
            name = value.strip()
        elif key == "flags" and not flags:
            flags = frozenset(value.split())
    return CpuInfo(name, flags)


#: Whether int8 (onnxruntime QDQ, :mod:`.quantize`) measured faster than the float32 default path, network
#: alone, D0 512, batch 1, per CPU class (BENCHMARKS.md "Precision"). ``True``: ``auto`` picks int8 there when
#: calibration images are given. (bf16 is not in the table: it is measured on the machine itself, see
#: :func:`efficientdet.inference.bf16_probe.bf16_measured_faster`.)
MEASURED: dict[str, dict[str, bool]] = {
    # AMD EPYC (Zen 4), avx512_bf16 + avx512_vnni, no AMX: int8 0.62-0.74x float32 onnxruntime (quiet machine,
    # 2 threads; 0.65x under load); OpenVINO bf16 0.68x there, PyTorch bf16 0.90x
    "avx512_bf16": {"int8": True},
    # Intel Xeon with AMX tiles: int8 runs on the same VNNI / AMX-int8 u8s8 kernels as on the Zen 4
    "amx": {"int8": True},
    # VNNI without bf16 (e.g. Ice Lake; Zen 3 has no VNNI): the Zen 4's int8 kernels; not measured separately
    "vnni": {"int8": True},
    "other": {"int8": False},
}


def bf16_capable(cpu: CpuInfo | None = None) -> bool:
    """Whether the CPU has bf16 dot products in hardware (AVX512-BF16 or AMX)."""
    cpu = cpu or cpu_info()
    return cpu.avx512_bf16 or cpu.amx_bf16


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return precision


def resolve_precision(precision: str, device: object = "cpu", calibration: object = None,
                      cpu: CpuInfo | None = None) -> str:
    """``auto`` -> ``int8`` or ``fp32`` (see the module docstring; the measured bf16 choice is made where
    the file is run, by :func:`efficientdet.inference.select.build_runner`); an explicit one is checked and kept.

    ``bf16`` needs a CPU with bf16 instructions (AVX512-BF16 or AMX) or a CUDA device; ``int8`` needs
    calibration images (``--calibration DIR``) and runs on the CPU.
    """
    check_precision(precision)
    cpu = cpu or cpu_info()
    on_cpu = str(device) == "cpu"
    if precision == "auto":
        measured = MEASURED.get(cpu.cpu_class, MEASURED["other"])
        if on_cpu and calibration is not None and cpu.int8_dot and measured["int8"]:
            return "int8"
        return "fp32"  # bf16 may still be chosen by the runner, after measuring it (see the module docstring)
    if precision == "int8":
        if not on_cpu:
            raise ConfigError("--precision int8 runs in onnxruntime on the CPU; use --device cpu")
        if calibration is None:
            raise ConfigError("--precision int8 needs calibration images: add --calibration DIR (a folder of "
                              "representative images), or pass an int8 file from 'efficientdet export --int8'")
    if precision == "bf16" and on_cpu and not (cpu.avx512_bf16 or cpu.amx_bf16):
        raise ConfigError(f"--precision bf16: this CPU ({cpu.name}) has no bf16 instructions (AVX512-BF16 or AMX); "
                          "it would run emulated and slower; use --precision fp32")
    return precision
