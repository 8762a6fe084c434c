"""Chat messages → one prompt, rendered with the model's own template (the GGUF's ``tokenizer.chat_template``).

Templates are Jinja, written for Hugging Face's ``apply_chat_template``; they run here in Jinja's
immutable sandbox with the same helpers (``raise_exception``, ``strftime_now``, a ``tojson`` that
keeps non-ASCII text). A model without a template gets plain ChatML. Nothing here imports aiohttp.
"""

from __future__ import annotations

import datetime
import functools
import json
from collections.abc import Mapping, Sequence
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from rbee.errors import ErrorCode, RbeeError

# What llama.cpp and most chat models fall back to when a GGUF carries no template.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class _TemplateRefused(Exception):
    """A template called ``raise_exception`` (e.g. "roles must alternate user/assistant")."""


def _raise_exception(message: str) -> None:
    raise _TemplateRefused(message)


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


def _tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False, sort_keys: bool = False) -> str:
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, sort_keys=sort_keys)


@functools.lru_cache(maxsize=8)
def _compile(source: str) -> Any:
    # trim_blocks/lstrip_blocks as transformers does, so templates render byte-for-byte as their authors meant.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(source)


def render(
    messages: Sequence[Mapping[str, Any]],
    template: str | None,
    *,
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
) -> str:
    """The prompt text for ``messages`` (``[{"role", "content"}, ...]``), ending where the assistant speaks.

    A template that refuses the conversation, or fails, is the client's 400, never a 500.
    """
    source = template if template and template.strip() else CHATML_TEMPLATE
    try:
        compiled = _compile(source)
    except TemplateError as exc:
        raise RbeeError(
            ErrorCode.INTERNAL,
            f"The model's chat template does not compile ({exc}). Send a plain 'prompt' instead.",
        ) from None
    try:
        return compiled.render(
            messages=[dict(m) for m in messages],
            add_generation_prompt=add_generation_prompt,
            bos_token=bos_token,
            eos_token=eos_token,
        )
    except _TemplateRefused as exc:
        raise RbeeError(
            ErrorCode.INVALID_REQUEST,
            f"The model's chat template refused these messages: {exc}. Fix the conversation and retry.",
            {"field": "messages"},
        ) from None
    except (TemplateError, TypeError, ValueError, KeyError, AttributeError) as exc:
        raise RbeeError(
            ErrorCode.INVALID_REQUEST,
            f"The model's chat template could not render these messages ({exc.__class__.__name__}: {exc}). "
            "Check each message has a role and text content.",
            {"field": "messages"},
        ) from None
