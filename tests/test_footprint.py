"""The footprint estimate: its parts from a GGUF header, the GPU split, and, against real workers, the
resident memory they really grow by (within ±20 %)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import requests

from rbee.hive.footprint import MIB, LoadSettings, ModelShape, estimate, estimate_file, read_shape
from rbee.models import default_model_path
from rbee.procfs import status_bytes
from rbee.testing.cluster import Cluster
from rbee.testing.tiny_gguf import make_tiny_gguf, make_tiny_llama

# The same modules a worker imports before it loads its model, and llama.cpp's backend started.
_BARE_WORKER = ("import os, rbee.worker.__main__, rbee.worker.engine as e, rbee.procfs as p; e._init_backend(); "
                "print(p.status_bytes(os.getpid(), 'VmRSS'))")
_FILL_A_MICRO_BATCH = "hello world " * 300  # about 600 tokens: the compute buffer is used as far as it goes


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama.gguf")


def test_default_model_shape_is_read_from_its_header() -> None:
    shape = read_shape(default_model_path())
    assert (shape.architecture, shape.layers, shape.embedding, shape.heads_kv, shape.head_k) == ("llama", 30, 576, 3, 64)
    assert shape.vocab == 49152 and shape.merges == 48900
    assert shape.weight_bytes == pytest.approx(92.10 * MIB, rel=0.001)  # llama.cpp logs "92.10 MiB" for it


def test_kv_cache_grows_with_context_and_slots_as_llama_cpp_sizes_it() -> None:
    shape = read_shape(default_model_path())
    # llama.cpp's own log for this model: 11.25 MiB at ctx 512, 45 MiB at 2048, 90 MiB for 4 slots of 1024.
    assert estimate(shape, LoadSettings(ctx_size=512)).kv_host == 11.25 * MIB
    assert estimate(shape, LoadSettings(ctx_size=2048)).kv_host == 45 * MIB
    assert estimate(shape, LoadSettings(ctx_size=1024, slots=4)).kv_host == 90 * MIB
    assert estimate(shape, LoadSettings(ctx_size=2048, cache_type="q8_0")).kv_host < 24 * MIB


def test_a_header_without_the_model_shape_is_a_clear_error(tmp_path: Path) -> None:
    from rbee.hive.gguf_info import GGUFError

    with pytest.raises(GGUFError, match="embedding_length"):
        read_shape(make_tiny_gguf(tmp_path / "t.gguf"))


def _shape(layers: int = 4) -> ModelShape:
    return ModelShape(architecture="llama", layers=layers, embedding=1024, feed_forward=4096, heads_kv=8,
                      head_k=128, head_v=128, vocab=32000, merges=0, block_bytes=(100 * MIB,) * layers,
                      head_bytes=50 * MIB, embedding_bytes=60 * MIB)


def test_offloaded_layers_move_their_weights_and_kv_to_the_device() -> None:
    cpu = estimate(_shape(), LoadSettings(ctx_size=4096))
    half = estimate(_shape(), LoadSettings(ctx_size=4096, n_gpu_layers=2))
    full = estimate(_shape(), LoadSettings(ctx_size=4096, n_gpu_layers=999))
    assert cpu.device_bytes == 0 and cpu.weights_host == 510 * MIB
    assert half.weights_device == 200 * MIB and half.weights_host == 310 * MIB
    assert half.kv_device == half.kv_host == cpu.kv_host // 2
    assert full.weights_device == 450 * MIB and full.weights_host == 60 * MIB  # the embedding stays on the host
    assert full.kv_host == 0 and full.compute_device > 0 and full.compute_host < cpu.compute_host


def _bare_worker_rss() -> int:
    out = subprocess.run([sys.executable, "-c", _BARE_WORKER], capture_output=True, text=True, timeout=120, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def test_estimate_matches_the_resident_memory_of_real_workers(tmp_path: Path, tiny_llama: Path) -> None:
    """RSS growth of a real worker (its peak after a prompt that fills a micro-batch, less a bare worker's
    RSS) against the estimate's model part, for two models at two context sizes each."""
    bare = _bare_worker_rss()
    rows = []
    cluster = Cluster(tmp_path / "logs")
    try:
        for name, path in (("default (SmolLM2-135M Q4_1)", default_model_path()), ("tiny llama (F16)", tiny_llama)):
            for ctx in (1024, 4096):
                worker = cluster.start_worker(model=str(path), ctx_size=ctx, extra=("--no-batch-invariant",))
                r = requests.post(f"{worker.url}/v1/inference", timeout=300, json={
                    "prompt": _FILL_A_MICRO_BATCH, "max_tokens": 4, "temperature": 0, "stream": False,
                    "ignore_eos": True})
                assert r.status_code == 200, r.text
                peak = status_bytes(worker.process.proc.pid, "VmHWM")
                assert peak is not None
                worker.process.stop()
                guess = estimate_file(path, LoadSettings(ctx_size=ctx)).model_host_bytes
                rows.append((name, ctx, guess, peak - bare, (guess - (peak - bare)) / (peak - bare)))
    finally:
        cluster.stop_all()
    print(f"\nbare worker RSS {bare / MIB:.1f} MiB\n{'model':30} {'ctx':>5} {'estimate':>10} {'measured':>10} error")
    for name, ctx, guess, measured, error in rows:
        print(f"{name:30} {ctx:5d} {guess / MIB:8.1f}Mi {measured / MIB:8.1f}Mi {error:+6.1%}")
    for name, ctx, _, _, error in rows:
        assert abs(error) <= 0.20, f"{name} at ctx {ctx}: estimate off by {error:+.1%}"
