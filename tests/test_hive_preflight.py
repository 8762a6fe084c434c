"""Preflight before a spawn: backend, device and memory, each refused with what is available."""

from __future__ import annotations

from pathlib import Path

import pytest

from rbee.errors import ErrorCode, RbeeError
from rbee.hive import preflight
from rbee.hive.preflight import Need

MIB = 1024 * 1024


def meminfo(tmp_path: Path, available_kb: int | None) -> Path:
    lines = ["MemTotal:       16000000 kB", "MemFree:         1000000 kB"]
    if available_kb is not None:
        lines.append(f"MemAvailable:   {available_kb} kB")
    path = tmp_path / "meminfo"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_available_ram_reads_mem_available_in_bytes(tmp_path: Path) -> None:
    assert preflight.available_ram(meminfo(tmp_path, 2048)) == 2048 * 1024


def test_available_ram_is_unknown_without_the_line_or_the_file(tmp_path: Path) -> None:
    assert preflight.available_ram(meminfo(tmp_path, None)) is None
    assert preflight.available_ram(tmp_path / "missing") is None


def test_a_model_that_fits_passes(tmp_path: Path) -> None:
    preflight.check(Need("m", 100 * MIB, "cpu", 0), meminfo=meminfo(tmp_path, 8 * 1024 * 1024))


def test_too_little_memory_says_how_much_is_needed_and_available(tmp_path: Path) -> None:
    with pytest.raises(RbeeError) as caught:
        preflight.check(Need("big", 4096 * MIB, "cpu", 0), meminfo=meminfo(tmp_path, 1024 * 1024))
    err = caught.value
    assert err.code == ErrorCode.INSUFFICIENT_RAM and err.status == 507
    assert "1024 MiB available" in err.message
    assert err.details["needed_bytes"] == preflight.ram_needed(4096 * MIB)


def test_unknown_memory_skips_the_ram_check(tmp_path: Path) -> None:
    preflight.check(Need("big", 10**15, "cpu", 0), meminfo=meminfo(tmp_path, None))


def test_an_unknown_backend_lists_the_available_ones() -> None:
    with pytest.raises(RbeeError) as caught:
        preflight.check_backend("cuda", 0, {"cpu": (0,), "metal": (0,)})
    assert caught.value.code == ErrorCode.INVALID_BACKEND and caught.value.status == 400
    assert "Available: cpu, metal" in caught.value.message


def test_a_missing_device_lists_the_backends_devices() -> None:
    with pytest.raises(RbeeError) as caught:
        preflight.check_backend("cpu", 2)
    assert caught.value.code == ErrorCode.DEVICE_NOT_FOUND
    assert caught.value.details["available"] == [0]


def test_the_worker_programs_devices_become_backends_with_the_cpu_always_there() -> None:
    import asyncio
    import json
    import sys

    listing = {"devices": [{"backend": "cuda", "index": 1, "name": "CUDA1"},
                           {"backend": "cuda", "index": 0, "name": "CUDA0"}]}
    code = f"import sys; assert sys.argv[1] == '--list-devices'; print({json.dumps(json.dumps(listing))})"
    fake_worker = [sys.executable, "-c", code]
    devices = asyncio.run(preflight.detect_devices(fake_worker))
    assert preflight.backends_of(devices) == {"cpu": (0,), "cuda": (0, 1)}
    preflight.check_backend("cuda", 1, preflight.backends_of(devices))  # offered now
    # A worker program that can't say (crashes, prints nonsense, is missing) leaves the CPU alone.
    for broken in ([sys.executable, "-c", "print('not json')"], [sys.executable, "-c", "raise SystemExit(3)"],
                   ["/nonexistent/llm-worker-rbee"]):
        assert preflight.backends_of(asyncio.run(preflight.detect_devices(broken))) == {"cpu": (0,)}


def test_the_real_worker_program_lists_at_least_the_cpu() -> None:
    import asyncio
    import sys

    devices = asyncio.run(preflight.detect_devices([sys.executable, "-m", "rbee.worker"]))
    # Not the fallback: llama.cpp itself says how much memory the CPU device has.
    assert any(d["backend"] == "cpu" and d["memory_total"] > 0 for d in devices), devices
