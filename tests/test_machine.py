"""The processor description that training cards and benchmarks record."""
import os

from model.machine import cpu_model, usable_cores

ZEN3 = """processor	: 0
vendor_id	: AuthenticAMD
cpu family	: 25
model		: 1
model name	: AMD EPYC
flags		: fpu vme sse sse2 avx avx2 fma

processor	: 1
vendor_id	: AuthenticAMD
cpu family	: 25
model		: 1
model name	: AMD EPYC
flags		: fpu vme sse sse2 avx avx2 fma
"""


def test_one_name_is_told_apart_by_family_model_and_vector_width():
    zen4 = ZEN3.replace("model\t\t: 1", "model\t\t: 17").replace("avx2 fma", "avx2 fma avx512f avx512bw")
    assert cpu_model(ZEN3) == "AMD EPYC (family 25, model 1; AVX2)"
    assert cpu_model(zen4) == "AMD EPYC (family 25, model 17; AVX-512)"


def test_the_widest_extension_is_named_and_missing_fields_are_left_out():
    xeon = "model name\t: Intel(R) Xeon(R) Processor @ 2.80GHz\nflags\t\t: avx2 avx512f amx_tile\n"
    assert cpu_model(xeon) == "Intel(R) Xeon(R) Processor @ 2.80GHz (AMX)"
    assert cpu_model("model name\t: Some CPU\n") == "Some CPU"


def test_without_cpuinfo_only_the_platform_name_is_left():
    assert cpu_model("") and "(" not in cpu_model("")


def test_usable_cores_are_the_affinity_not_the_machine(monkeypatch):
    """Under `taskset -c 0` on 2 cores the 384-image training command gave another bundle than on both (50 of 249
    weight arrays differ): the card must record the one core, which os.cpu_count() does not see."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)  # set where the platform lacks it
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert usable_cores() == 1


def test_without_affinity_the_machine_count_is_used(monkeypatch):
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    assert usable_cores() == 3
