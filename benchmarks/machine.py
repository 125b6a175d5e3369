"""The CPU a benchmark ran on, and its physical float32 peak: every benchmark JSON carries it.

Standard library only, so torch_baseline.py (run in a venv without ebgan_jax) imports it too.
Speed is judged as a ratio measured in one run; these fields say which machine a figure
came from and how far it is from what the machine can do.
"""

import os
import re

# The vector flags that set a CPU's float32 multiply-add rate (and bfloat16's).
_SIMD_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def _cpuinfo() -> dict[str, str]:
  """The first processor's fields of /proc/cpuinfo ({} where there is none)."""
  try:
    with open("/proc/cpuinfo") as f:
      text = f.read().split("\n\n")[0]
  except OSError:
    return {}
  return {key.strip(): value.strip() for key, _, value in
          (line.partition(":") for line in text.splitlines()) if key.strip()}


def _flop_per_cycle(vendor: str, family: int, flags: set[str]) -> tuple[int, str]:
  """float32 FLOP per cycle per core (two FMA pipes, 2 FLOP per lane), and why."""
  if "avx512f" in flags:
    if vendor == "AuthenticAMD" and family < 26:
      # Zen 4 runs a 512-bit FMA as two 256-bit halves.
      return 32, "Zen 4: two 256-bit FMA pipes (a 512-bit FMA takes both)"
    return 64, "two 512-bit FMA pipes"
  if "fma" in flags:
    return 32, "two 256-bit FMA pipes"
  return 16, "SSE: two 128-bit multiply-add pipes"


def cpu_info() -> dict:
  """CPU model, clock, SIMD flags, cores and the physical float32 peak at that clock.

  The peak is cores x FLOP per cycle x the clock /proc/cpuinfo reports (the
  nominal one on these VMs); boost clocks can exceed it, so a large matmul may
  reach a little more than 1.0 of it.
  """
  info = _cpuinfo()
  flags = set(info.get("flags", "").split())
  vendor, family = info.get("vendor_id", ""), int(info.get("cpu family", "0") or 0)
  nominal = re.search(r"@ *([\d.]+) *GHz", info.get("model name", ""))
  mhz = float(nominal.group(1)) * 1000 if nominal else float(info.get("cpu MHz", "0") or 0)
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  flop_per_cycle, basis = _flop_per_cycle(vendor, family, flags)
  return {"cpu_model": info.get("model name", "unknown"), "cpu_family": family,
          "cpu_mhz": round(mhz), "cpu_simd_flags": sorted(flags & set(_SIMD_FLAGS)),
          "cpu_cores": cores, "cpu_peak_flops_per_s": cores * flop_per_cycle * mhz * 1e6,
          "cpu_peak_basis": f"{cores} cores x {flop_per_cycle} FLOP/cycle ({basis}) x "
                            f"{mhz:.0f} MHz"}
