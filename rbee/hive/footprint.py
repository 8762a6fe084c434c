"""How much memory a worker will take, estimated before it is spawned, from the GGUF's own header.

Four parts, each placed on the device llama.cpp puts it on (host RAM for CPU layers, the GPU's memory
for offloaded ones, as llama.cpp offloads the last ``n_gpu_layers`` blocks and, with all of them, the
output head):

- weights: the tensor table's sizes, block by block (the file is mapped: what is used is resident);
- KV cache: ``layers × cells × (K + V head sizes × KV heads) × bytes per element of the cache type``,
  with ``ctx_size × slots`` cells, padded as llama.cpp pads them;
- compute: the activations of one full micro-batch (``n_ubatch`` tokens through the widest layer),
  the attention mask, and the logits of one output row per slot;
- the tokenizer (llama.cpp's vocabulary and merge tables) and the worker program itself (Python,
  aiohttp, llama.cpp's libraries), both on the host.

llama.cpp *reserves* a compute buffer sized for logits of a whole micro-batch, but rbee asks for one
output row per sequence, so most of it is never touched and never resident; the estimate counts what
becomes resident. The two fitted constants (:data:`TOKENIZER_BYTES_PER_ENTRY`, :data:`RUNTIME_BYTES`)
were measured with a real worker on this codebase (tests/test_footprint.py holds the estimate against
RSS growth).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

from rbee.hive.gguf_info import GGUFError, GGUFHeader, read_gguf_header

MIB = 1024 * 1024
# llama.cpp's vocabulary: token strings, their scores and types, the merge ranks (maps of strings).
TOKENIZER_BYTES_PER_ENTRY = 240
# A worker process before it loads a model: the interpreter, aiohttp, rbee and llama.cpp's libraries.
RUNTIME_BYTES = 70 * MIB
KV_CELL_PAD = 256  # llama.cpp rounds the KV cache's cells up to this
# Bytes per element of each KV cache type (quantized types: block bytes / block elements).
CACHE_TYPE_BYTES = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q5_1": 24 / 32, "q5_0": 22 / 32,
                    "q4_1": 20 / 32, "q4_0": 18 / 32}
_BLOCK = re.compile(r"^blk\.(\d+)\.")
_OUTPUT_HEAD = ("output.weight", "output_norm.weight", "output_norm.bias")


@dataclass(frozen=True)
class ModelShape:
    """What of a GGUF decides its memory: sizes of the blocks and the rest, and the attention shape."""

    architecture: str
    layers: int
    embedding: int
    feed_forward: int
    heads_kv: int
    head_k: int
    head_v: int
    vocab: int
    merges: int
    block_bytes: tuple[int, ...]  # weights of each block, in order
    head_bytes: int  # the output head (output norm, output matrix when not tied)
    embedding_bytes: int  # token embedding and anything else outside the blocks: stays on the host

    @property
    def weight_bytes(self) -> int:
        return sum(self.block_bytes) + self.head_bytes + self.embedding_bytes


@dataclass(frozen=True)
class LoadSettings:
    """How the worker will load it (its flags)."""

    ctx_size: int = 2048  # per slot
    slots: int = 1
    n_gpu_layers: int = 0
    cache_type: str = "f16"
    n_ubatch: int = 512
    include_runtime: bool = True  # the worker program itself counts against the host


@dataclass(frozen=True)
class Footprint:
    """Bytes by part and by device; ``host`` is RAM, ``device`` the offload target's memory."""

    weights_host: int
    weights_device: int
    kv_host: int
    kv_device: int
    compute_host: int
    compute_device: int
    tokenizer_host: int
    runtime_host: int

    @property
    def host_bytes(self) -> int:
        return self.weights_host + self.kv_host + self.compute_host + self.tokenizer_host + self.runtime_host

    @property
    def device_bytes(self) -> int:
        return self.weights_device + self.kv_device + self.compute_device

    @property
    def model_host_bytes(self) -> int:
        """What loading the model adds to a worker's resident memory (all but the program itself)."""
        return self.host_bytes - self.runtime_host

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "host_bytes": self.host_bytes, "device_bytes": self.device_bytes}


def read_shape(path: Path | str) -> ModelShape:
    """The shape of the model in ``path``; :class:`GGUFError` when its header lacks what is needed."""
    return shape_of(read_gguf_header(path))


def shape_of(header: GGUFHeader) -> ModelShape:
    v = header.values
    arch = v.get("general.architecture")
    if not isinstance(arch, str):
        raise GGUFError("the header names no general.architecture")

    def number(key: str, default: int | None = None) -> int:
        value = v.get(f"{arch}.{key}", default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise GGUFError(f"the header has no {arch}.{key}")
        return value

    layers, embedding = number("block_count"), number("embedding_length")
    heads = number("attention.head_count")
    heads_kv = number("attention.head_count_kv", heads)
    head = embedding // max(heads, 1)
    blocks = [0] * layers
    head_bytes = embedding_bytes = 0
    for t in header.tensors:
        match = _BLOCK.match(t.name)
        if match and int(match.group(1)) < layers:
            blocks[int(match.group(1))] += t.n_bytes
        elif t.name in _OUTPUT_HEAD:
            head_bytes += t.n_bytes
        else:
            embedding_bytes += t.n_bytes
    vocab = v.get(f"{arch}.vocab_size") or header.array_lengths.get("tokenizer.ggml.tokens", 0)
    return ModelShape(
        architecture=arch, layers=layers, embedding=embedding, feed_forward=number("feed_forward_length", 0),
        heads_kv=heads_kv, head_k=number("attention.key_length", head), head_v=number("attention.value_length", head),
        vocab=int(vocab), merges=header.array_lengths.get("tokenizer.ggml.merges", 0),
        block_bytes=tuple(blocks), head_bytes=head_bytes, embedding_bytes=embedding_bytes,
    )


def estimate(shape: ModelShape, load: LoadSettings) -> Footprint:
    """The footprint of ``shape`` loaded with ``load``; see the module docstring for the parts."""
    if load.cache_type not in CACHE_TYPE_BYTES:
        raise ValueError(f"unknown KV cache type {load.cache_type!r}; known: {', '.join(CACHE_TYPE_BYTES)}")
    offloaded = max(0, min(load.n_gpu_layers, shape.layers + 1))  # one more than the blocks: the output head
    on_device = min(offloaded, shape.layers)
    device_blocks = shape.block_bytes[shape.layers - on_device:] if on_device else ()
    head_on_device = offloaded > shape.layers
    weights_device = sum(device_blocks) + (shape.head_bytes if head_on_device else 0)
    cells = _pad(load.ctx_size * load.slots, KV_CELL_PAD)
    per_layer_kv = cells * shape.heads_kv * (shape.head_k + shape.head_v) * CACHE_TYPE_BYTES[load.cache_type]
    kv_device = int(per_layer_kv * on_device)
    kv_host = int(per_layer_kv * (shape.layers - on_device))
    compute = _compute_bytes(shape, load, cells)
    return Footprint(
        weights_host=shape.weight_bytes - weights_device, weights_device=weights_device,
        kv_host=kv_host, kv_device=kv_device,
        # Offloaded work computes on the device; the host keeps a buffer for the embedding lookups.
        compute_host=compute if on_device == 0 else _host_staging_bytes(shape, load),
        compute_device=compute if on_device else 0,
        tokenizer_host=(shape.vocab + shape.merges) * TOKENIZER_BYTES_PER_ENTRY,
        runtime_host=RUNTIME_BYTES if load.include_runtime else 0,
    )


def estimate_file(path: Path | str, load: LoadSettings) -> Footprint:
    return estimate(read_shape(path), load)


def _compute_bytes(shape: ModelShape, load: LoadSettings, cells: int) -> int:
    """One micro-batch through the widest layer (the residual, norm, Q/K/V/out and three FFN rows, in
    F32), the F16 attention mask over the cells of one sequence, and one F32 logits row per slot."""
    tokens = min(load.n_ubatch, cells)
    activations = tokens * 4 * (4 * shape.embedding + 3 * shape.feed_forward)
    mask = tokens * _pad(load.ctx_size, KV_CELL_PAD) * 2
    logits = load.slots * shape.vocab * 4
    return activations + mask + logits


def _host_staging_bytes(shape: ModelShape, load: LoadSettings) -> int:
    return min(load.n_ubatch, load.ctx_size * load.slots) * shape.embedding * 4


def _pad(n: int, to: int) -> int:
    return (n + to - 1) // to * to
