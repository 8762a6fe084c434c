"""What the OpenAI scenarios share: a call whose refusal is the answer being checked."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import openai


def capture_refusal(context: Any, call: Callable[[], Any]) -> None:
    """Make the call; a refusal the official client raised lands in ``context.oa_error`` (None if none)."""
    context.oa_error = None
    try:
        call()
    except openai.APIStatusError as exc:
        context.oa_error = exc
