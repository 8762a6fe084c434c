"""llm-worker-rbee's settings, the engine's included: each declared once here; its flags and RBEE_*
variables derive from them (``__main__`` hands the engine's part to ``EngineConfig``)."""

from __future__ import annotations

import socket
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from rbee import models
from rbee.flags import Flag
from rbee.server_settings import OptionalKey, ServerSettings


def _host_and_port(data: dict[str, Any]) -> str:
    return f"{socket.gethostname().split('.')[0]}-{data.get('port')}"


def _layers_for_backend(data: dict[str, Any]) -> int:
    return 0 if data.get("backend", "cpu") == "cpu" else 999


class WorkerSettings(ServerSettings):
    model_ref: Annotated[str, Flag("--model", metavar="PATH_OR_REF")] = Field(
        models.DEFAULT_MODEL_REF, description="GGUF path or file:// ref, reported to the hive and queen as given.")
    port: int | None = Field(None, ge=0, le=65535, description="Port to listen on (required to serve).")
    worker_id: Annotated[str, Flag(metavar="ID")] = Field(
        default_factory=_host_and_port, description="Id this worker registers under (default: <hostname>-<port>).")
    backend: str = Field("cpu", description="Compute backend: cpu, or a GPU backend of this llama.cpp build "
                         "(cuda, metal, vulkan…; see --list-devices).")
    device: int = Field(0, ge=0, description="Device index for the backend.")
    list_devices: bool = Field(False, description="Print the devices this llama.cpp build can use, as JSON, "
                               "and exit.")
    slots: int = Field(1, ge=1, le=64, description="Concurrent sequences decoded together.")
    ctx_size: int = Field(2048, ge=1, description="Context length per slot, in tokens.")
    threads: int = Field(0, ge=0, description="CPU threads (0 = one per core).")
    batch_size: int = Field(512, ge=1, le=8192, description="Most tokens one decode step takes: a long prompt is "
                            "decoded in chunks this big, so running streams get a token between chunks and "
                            "the prompt's progress is told on its stream (llama-server's -b is 2048).")
    n_gpu_layers: int = Field(default_factory=_layers_for_backend, description="Layers to offload to the GPU "
                              "(default: all with a GPU --backend, none with cpu).")
    poll: int = Field(50, ge=-1, le=100, description="How hard llama.cpp's threads spin-wait for work, 0-100 "
                      "(llama-server's --poll); -1 = no threadpool.")
    batch_invariant: bool = Field(True, description="Compute the steps of reproducible requests (temperature 0, a "
                                  "seed, logprobs) on ggml's reference CPU kernels, whose result for a token does "
                                  "not depend on the rest of its batch: such an answer from the cache then equals "
                                  "the uncached one token for token; other requests run on the fast kernels "
                                  "(--no-batch-invariant: all on the fast ones; GPU kernels are never "
                                  "batch-invariant).")
    cache_ram_mb: int = Field(0, ge=0, le=1024 * 1024, description="Host RAM (MiB) for the KV of slots a new "
                              "prompt took over, restored when a later prompt matches it better (0 = none).")
    embeddings: bool = Field(False, description="Load the model for embeddings: serve POST /v1/embeddings (pooled, "
                             "L2-normalised vectors) and refuse generation (start another worker for that).")
    pooling: Literal["mean", "cls", "last"] | None = Field(
        None, description="How --embeddings pools token vectors (default: the GGUF's own, mean when it names none).")
    callback_url: Annotated[str | None, Flag(metavar="URL")] = Field(
        None, description="Hive endpoint told when the model is loaded.")
    cluster_key: OptionalKey = Field(None, description="Shared key: sent with the ready callback; required on "
                                    "inference, cancel and shutdown.")
    drain_timeout: float = Field(30.0, ge=0, description="Seconds running requests get to finish on shutdown.")

    @model_validator(mode="after")
    def _a_token_per_slot(self) -> WorkerSettings:
        if self.batch_size < self.slots:
            raise ValueError(f"--batch-size {self.batch_size} is less than --slots {self.slots}: every slot needs "
                             "room for its token in each step. Raise --batch-size or lower --slots.")
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"
