"""Inference precision: ``fp32``, ``bf16``, ``int8`` or ``auto``, decided per CPU at run time.

- ``fp32``: float32 everywhere (the reference).
- ``bf16``: the PyTorch runner with the BN-folded network in bfloat16 (oneDNN's bf16 convolutions:
  AVX512-BF16 dot products, or the AMX tiles where the CPU has them); the input is cast once, the
  outputs are cast back to float32 for the post-processing.
- ``int8``: onnxruntime on a file quantised with calibration images (:mod:`.quantize`): int8
  weights, uint8 activations (VNNI / AMX-int8 ``u8s8`` kernels).
- ``auto``: ``int8`` when calibration images are given and the CPU has int8 dot-product
  instructions (VNNI or AMX-int8), else ``bf16`` where :data:`MEASURED` says bf16 was faster than
  the float32 default on that class of CPU, else ``fp32``. A reduced precision is never picked
  on a CPU class it was not measured faster on.

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


#: Which reduced precision measured faster than the float32 default path, network alone, D0 512, batch 1,
#: 2 threads, per CPU class (BENCHMARKS.md "Precision"). ``True``: picked by ``auto``.
MEASURED: dict[str, dict[str, bool]] = {
    # AMD EPYC (Zen 4), avx512_bf16 + avx512_vnni, no AMX (bench/precision.py, 1 thread, busy machine,
    # interleaved): bf16 in PyTorch 0.56x PyTorch float32 but 1.11x the float32 onnxruntime path that
    # ``auto`` runs otherwise, so not picked; int8 (onnxruntime QDQ, :mod:`.quantize`) 0.65x float32
    # onnxruntime (0.81-0.89x before the squeeze-excite pooling rewrite), picked.
    "avx512_bf16": {"bf16": False, "int8": True},
    # Intel Xeon with AMX tiles: not measured by bench/precision.py yet, so bf16 is not picked there either;
    # int8 runs on the same VNNI / AMX-int8 u8s8 kernels as on the Zen 4.
    "amx": {"bf16": False, "int8": True},
    # VNNI without bf16 (e.g. Ice Lake, Zen 3 has no VNNI): the Zen 4's int8 kernels; not measured separately
    "vnni": {"bf16": False, "int8": True},
    "other": {"bf16": False, "int8": False},
}


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return precision


def resolve_precision(precision: str, device: object = "cpu", calibration: object = None,
                      cpu: CpuInfo | None = None) -> str:
    """``auto`` -> the precision to run (see the module docstring); an explicit one is checked and kept.

    ``bf16`` needs a CPU with bf16 instructions (AVX512-BF16 or AMX) or a CUDA device; ``int8`` needs
    calibration images (``--calibration DIR``) and runs on the CPU.
    """
    check_precision(precision)
    cpu = cpu or cpu_info()
    on_cpu = str(device) == "cpu"
    if precision == "auto":
        if not on_cpu:
            return "fp32"
        measured = MEASURED.get(cpu.cpu_class, MEASURED["other"])
        if calibration is not None and cpu.int8_dot and measured["int8"]:
            return "int8"
        if measured["bf16"] and (cpu.avx512_bf16 or cpu.amx_bf16):
            return "bf16"
        return "fp32"
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
