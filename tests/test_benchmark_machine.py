"""benchmarks/machine.py: the CPU description and float32 peak every benchmark JSON carries."""

import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import machine  # noqa: E402

ZEN4_FLAGS = "fpu sse2 avx fma avx2 avx512f avx512_bf16 avx512vl"


@pytest.mark.parametrize("vendor, family, flags, flop_per_cycle", [
    ("AuthenticAMD", 25, ZEN4_FLAGS, 32),  # Zen 4 splits 512-bit FMAs in two
    ("AuthenticAMD", 26, ZEN4_FLAGS, 64),  # Zen 5: full 512-bit pipes
    ("GenuineIntel", 6, "avx fma avx2 avx512f", 64),
    ("AuthenticAMD", 23, "avx fma avx2", 32),
    ("GenuineIntel", 6, "sse2", 16),
])
def test_peak_is_cores_times_flop_per_cycle_times_clock(monkeypatch, vendor, family, flags,
                                                        flop_per_cycle):
  monkeypatch.setattr(machine, "_cpuinfo", lambda: {
      "vendor_id": vendor, "cpu family": str(family), "model name": "Some CPU @ 2.60GHz",
      "cpu MHz": "3500.0", "flags": flags})
  monkeypatch.setattr(machine.os, "sched_getaffinity", lambda pid: {0, 1})
  info = machine.cpu_info()
  assert info["cpu_mhz"] == 2600  # the nominal clock of the model name, not the current one
  assert info["cpu_cores"] == 2
  assert info["cpu_peak_flops_per_s"] == pytest.approx(2 * flop_per_cycle * 2.6e9)
  assert set(info["cpu_simd_flags"]) <= set(flags.split())


def test_this_machine_is_described():
  info = machine.cpu_info()
  assert info["cpu_cores"] >= 1 and info["cpu_peak_flops_per_s"] >= 0
