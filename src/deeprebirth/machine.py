"""What a measurement ran on: recorded beside every benchmark number."""

from __future__ import annotations

import datetime as dt
import os
import platform
from importlib import metadata

import onnxruntime
import torch


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


#: Instruction-set extensions that decide which kernels the runtimes pick (int8 above all:
#: without VNNI, int8 convs may be no faster than float ones).
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")


def cpu_isa() -> list[str]:
    """The :data:`ISA_FLAGS` this CPU has (``/proc/cpuinfo``; empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [flag for flag in ISA_FLAGS if flag in have]
    except OSError:
        pass
    return []


def executorch_version() -> str | None:
    try:
        return metadata.version("executorch")
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict:
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "isa": cpu_isa(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "executorch": executorch_version(),
    }


def cpu_label(info: dict) -> str:
    """A recorded machine's CPU as a table caption gives it: ``AMD EPYC (avx2, fma)``."""
    isa = info.get("isa")
    return f"{info['cpu']} ({', '.join(isa) or 'no AVX2'})" if isa is not None else info["cpu"]
