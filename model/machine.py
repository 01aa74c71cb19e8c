"""Which processor a time was measured on, for training cards and benchmarks alike.

A CPU's marketing name does not fix its speed: two 2-core virtual machines both named "AMD EPYC" ran this project's
forward pass about three times apart, one with AVX-512 and one without. So the description adds the family and model
numbers and the widest vector extension the kernel reports.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path

VECTOR_EXTENSIONS = (("amx_tile", "AMX"), ("avx512f", "AVX-512"), ("avx2", "AVX2"))  # widest first


def cpu_model(cpuinfo: str | None = None) -> str:
    """The processor as /proc/cpuinfo describes its first core, e.g. "AMD EPYC (family 25, model 1; AVX2)";
    the platform's processor name where there is no /proc/cpuinfo. `cpuinfo` is that file's text, for tests."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    fields = {}
    for line in cpuinfo.split("\n\n", 1)[0].splitlines():  # the first processor's block
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name") or platform.processor() or platform.machine() or "unknown"
    details = []
    if fields.get("cpu family") and fields.get("model"):
        details.append(f"family {fields['cpu family']}, model {fields['model']}")
    flags = set(fields.get("flags", "").split())
    widest = next((label for flag, label in VECTOR_EXTENSIONS if flag in flags), None)
    if widest:
        details.append(widest)
    return f"{name} ({'; '.join(details)})" if details else name


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. under `taskset` or a container's cpuset), which is
    what TensorFlow sizes its thread pools by; `os.cpu_count()` counts the machine's. Training's model card records
    it: one command on one kind of CPU gives another bundle on another number of cores."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity on this platform
        return os.cpu_count() or 1
