"""What a GGUF file says about itself, read from its header only: architecture, quantization, name
(:func:`read_gguf_info`), and every scalar key with the tensor table (:func:`read_gguf_header`, for
memory estimates).

A small parser of the key/value section and the tensor infos (the tensor data is never touched),
because ``gguf.GGUFReader`` maps every tensor and takes seconds on a real model. The file-type
names and the quantization block sizes come from the ``gguf`` package so they track llama.cpp's.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

GGUF_MAGIC = b"GGUF"
_WANTED = ("general.architecture", "general.file_type", "general.name")
# Scalar value types of the GGUF spec: type id -> struct format (little endian).
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_MAX_STRING = 64 * 1024 * 1024  # a tokenizer blob is large but never this large; beyond it the file is broken


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    ggml_type: int

    @property
    def n_bytes(self) -> int:
        """Its size in the file: elements over the type's block size, times the block's bytes."""
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

        block, size = GGML_QUANT_SIZES[GGMLQuantizationType(self.ggml_type)]
        elements = 1
        for n in self.shape:
            elements *= n
        return elements // block * size


@dataclass(frozen=True)
class GGUFHeader:
    """Every scalar and string key, the length of every array key, and the tensor table."""

    values: dict[str, Any]
    array_lengths: dict[str, int]
    tensors: tuple[TensorInfo, ...]


class GGUFError(ValueError):
    """The file is not a GGUF file, or its header is truncated or malformed."""


@dataclass(frozen=True)
class GGUFInfo:
    architecture: str | None
    quantization: str | None
    name: str | None
    file_type: int | None
    version: int
    tensor_count: int


def quantization_name(file_type: int | None) -> str | None:
    """llama.cpp's name for a ``general.file_type`` value: 3 -> "Q4_1", 0 -> "F32"."""
    if file_type is None:
        return None
    try:
        from gguf import LlamaFileType

        name = LlamaFileType(file_type).name
    except (ImportError, ValueError):
        return f"FILE_TYPE_{file_type}"
    return name.removeprefix("MOSTLY_").removeprefix("ALL_")


def read_gguf_info(path: Path | str) -> GGUFInfo:
    """Parse the header of ``path``; raises :class:`GGUFError` when it is not a readable GGUF file."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            return _parse(f)
    except struct.error:
        raise GGUFError(f"{path}: the GGUF header is truncated") from None
    except UnicodeDecodeError:
        raise GGUFError(f"{path}: the GGUF header holds a key that is not UTF-8") from None
    except GGUFError as exc:
        raise GGUFError(f"{path}: {exc}") from None


def read_gguf_header(path: Path | str) -> GGUFHeader:
    """All keys (arrays by length only) and the tensor infos of ``path``; raises :class:`GGUFError`."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            _, count_fmt, tensor_count, kv_count = _preamble(f)
            values: dict[str, Any] = {}
            lengths: dict[str, int] = {}
            for _ in range(kv_count):
                key = _read_string(f, count_fmt)
                (vtype,) = _unpack(f, "<I")
                if vtype == _ARRAY:
                    lengths[key] = _skip_array(f, count_fmt)
                else:
                    values[key] = _read_value(f, vtype, count_fmt)
            tensors = tuple(_read_tensor_info(f, count_fmt) for _ in range(tensor_count))
    except struct.error:
        raise GGUFError(f"{path}: the GGUF header is truncated") from None
    except (UnicodeDecodeError, KeyError, ValueError) as exc:
        raise GGUFError(f"{path}: malformed GGUF header ({exc.__class__.__name__})") from None
    return GGUFHeader(values, lengths, tensors)


def _read_tensor_info(f: BinaryIO, count_fmt: str) -> TensorInfo:
    name = _read_string(f, count_fmt)
    (n_dims,) = _unpack(f, "<I")
    if n_dims > 8:
        raise GGUFError(f"tensor {name} has {n_dims} dimensions")
    shape = tuple(_unpack(f, count_fmt)[0] for _ in range(n_dims))
    (ggml_type,) = _unpack(f, "<I")
    _unpack(f, "<Q")  # its offset in the data section
    return TensorInfo(name, shape, ggml_type)


def _preamble(f: BinaryIO) -> tuple[int, str, int, int]:
    if f.read(4) != GGUF_MAGIC:
        raise GGUFError("not a GGUF file (bad magic)")
    (version,) = _unpack(f, "<I")
    if version not in (1, 2, 3):
        raise GGUFError(f"unsupported GGUF version {version}")
    count_fmt = "<I" if version == 1 else "<Q"  # version 1 used 32-bit counts
    (tensor_count,) = _unpack(f, count_fmt)
    (kv_count,) = _unpack(f, count_fmt)
    return version, count_fmt, tensor_count, kv_count


def _parse(f: BinaryIO) -> GGUFInfo:
    version, count_fmt, tensor_count, kv_count = _preamble(f)
    found: dict[str, Any] = {}
    for _ in range(kv_count):
        key = _read_string(f, count_fmt)
        (vtype,) = _unpack(f, "<I")
        if key in _WANTED:
            found[key] = _read_value(f, vtype, count_fmt)
            if len(found) == len(_WANTED):
                break  # everything we want is known; skip the (large) tokenizer arrays
        else:
            _skip_value(f, vtype, count_fmt)
    file_type = found.get("general.file_type")
    file_type = file_type if isinstance(file_type, int) and not isinstance(file_type, bool) else None
    arch, name = found.get("general.architecture"), found.get("general.name")
    return GGUFInfo(
        architecture=arch if isinstance(arch, str) else None,
        quantization=quantization_name(file_type),
        name=name if isinstance(name, str) else None,
        file_type=file_type,
        version=version,
        tensor_count=tensor_count,
    )


def _unpack(f: BinaryIO, fmt: str) -> tuple[Any, ...]:
    return struct.unpack(fmt, f.read(struct.calcsize(fmt)))


def _read_string(f: BinaryIO, count_fmt: str) -> str:
    (length,) = _unpack(f, count_fmt)
    if length > _MAX_STRING:
        raise GGUFError(f"string of {length} bytes in the header")
    raw = f.read(length)
    if len(raw) != length:
        raise struct.error("short read")
    return raw.decode("utf-8")


def _read_value(f: BinaryIO, vtype: int, count_fmt: str) -> Any:
    if vtype in _SCALARS:
        return _unpack(f, _SCALARS[vtype])[0]
    if vtype == _STRING:
        return _read_string(f, count_fmt)
    _skip_value(f, vtype, count_fmt)  # arrays are never among the keys we want
    return None


def _skip_value(f: BinaryIO, vtype: int, count_fmt: str) -> None:
    if vtype in _SCALARS:
        f.seek(struct.calcsize(_SCALARS[vtype]), 1)
    elif vtype == _STRING:
        (length,) = _unpack(f, count_fmt)
        f.seek(length, 1)
    elif vtype == _ARRAY:
        _skip_array(f, count_fmt)
    else:
        raise GGUFError(f"unknown value type {vtype} in the header")


def _skip_array(f: BinaryIO, count_fmt: str) -> int:
    """Past an array value; returns how many items it held."""
    (item_type,) = _unpack(f, "<I")
    (count,) = _unpack(f, count_fmt)
    if item_type in _SCALARS:
        f.seek(count * struct.calcsize(_SCALARS[item_type]), 1)
    else:
        for _ in range(count):
            _skip_value(f, item_type, count_fmt)
    return count
