"""Peak FLOP/s of the device a benchmark runs on, for MFU = achieved model FLOP/s / peak.

GPU peaks are the vendors' *dense* tensor-core numbers (no 2:4 sparsity) for the dtype the step
computes in: bf16 for `--dtype bf16`, fp32 (TF32 off, as VFM-VAE trains; docs/design.md, "Precision policy") for
`--dtype fp32`. Names are matched as substrings of `torch.cuda.get_device_name()`, most specific
first. A CPU peak is an *estimate* (cores x clock x SIMD FLOPs per cycle) and is flagged as such:
CPU MFU figures only show relative efficiency on the same machine.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass

import torch

# (name substring, bf16 dense TFLOP/s, fp32 non-tensor TFLOP/s); SXM parts unless named.
GPU_PEAK_TFLOPS: list[tuple[str, float, float]] = [
    ("H200", 989.4, 66.9),
    ("H100 PCIe", 756.0, 51.2),
    ("H100 NVL", 835.0, 60.0),
    ("H100", 989.4, 66.9),
    ("H800", 989.4, 66.9),
    ("H20", 148.0, 44.0),
    ("GH200", 989.4, 66.9),
    ("B200", 2250.0, 80.0),
    ("A100", 312.0, 19.5),
    ("A800", 312.0, 19.5),
    ("L40S", 362.1, 91.6),
    ("L40", 181.0, 90.5),
    ("A10G", 70.0, 31.2),
    ("A10", 125.0, 31.2),
    ("L4", 121.0, 30.3),
    ("RTX 4090", 165.2, 82.6),
    ("V100", 125.0, 15.7),  # no bf16 tensor cores: fp16 figure
]


@dataclass
class DevicePeak:
    """`peak_flops` in FLOP/s for `dtype` (None when unknown); `estimated` for CPU guesses."""

    device: str
    name: str
    dtype: str
    peak_flops: float | None
    estimated: bool
    note: str

    def to_dict(self) -> dict:
        return asdict(self)


def gpu_peak(name: str, dtype: str) -> float | None:
    """Peak FLOP/s of a GPU by name for `dtype` in {"bf16", "fp32"}; None for an unlisted GPU."""
    for key, bf16, fp32 in GPU_PEAK_TFLOPS:
        if key.lower() in name.lower():
            return (bf16 if dtype == "bf16" else fp32) * 1e12
    return None


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _cpu_clock_hz() -> float | None:
    """Nominal clock: cpufreq max, else /proc/cpuinfo 'cpu MHz', else bogomips / 2."""
    try:
        with open("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq") as f:
            return float(f.read()) * 1e3
    except (OSError, ValueError):
        pass
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return None
    for pattern, scale in ((r"cpu MHz\s*:\s*([\d.]+)", 1e6), (r"bogomips\s*:\s*([\d.]+)", 0.5e6)):
        m = re.search(pattern, text, re.IGNORECASE)
        if m:
            return float(m.group(1)) * scale
    return None


def cpu_peak(dtype: str = "fp32") -> DevicePeak:
    """Estimated CPU peak: threads x clock x FLOPs/cycle (2 FMA pipes x SIMD lanes x 2)."""
    flags = _cpu_flags()
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    flops_per_cycle = 2 * lanes * 2 if "fma" in flags else lanes * 2
    threads = torch.get_num_threads()
    clock = _cpu_clock_hz()
    name = f"CPU x{threads} threads ({'avx512' if lanes == 16 else 'avx2' if lanes == 8 else 'sse'})"
    peak = threads * clock * flops_per_cycle if clock else None
    note = (
        f"estimate: {threads} threads x {clock / 1e9:.2f} GHz x {flops_per_cycle} fp32 FLOP/cycle"
        if clock
        else "estimate unavailable (no clock found)"
    )
    if dtype != "fp32":
        note += "; bf16 on CPU is emulated unless AMX/avx512_bf16: peak taken as fp32"
    return DevicePeak("cpu", name, dtype, peak, True, note)


def device_peak(device: torch.device | str, dtype: str) -> DevicePeak:
    """Peak FLOP/s for the benchmark device and compute dtype ("bf16" or "fp32")."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = gpu_peak(name, dtype)
        note = "vendor dense peak" if peak else f"GPU {name!r} not in GPU_PEAK_TFLOPS: MFU not reported"
        return DevicePeak("cuda", name, dtype, peak, False, note)
    if device.type == "cpu":
        return cpu_peak(dtype)
    return DevicePeak(device.type, device.type, dtype, None, False, "no peak known for this device type")


def environment() -> dict:
    """Versions and device description recorded in every JSON report."""
    info = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "num_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    try:
        info["load_average"] = os.getloadavg()
    except OSError:
        pass
    return info
