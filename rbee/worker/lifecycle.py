"""The worker's states: loading the model (with progress), serving, draining.

States: ``loading`` → ``idle`` ⇄ ``busy`` → ``draining`` → gone (or ``offline`` when the model
cannot be loaded). ``busy`` is not stored: it is ``idle`` with every slot taken.
"""

from __future__ import annotations

import asyncio
import logging

from rbee.protocol import WorkerState
from rbee.worker.engine import Engine
from rbee.worker.slots import SlotPool

log = logging.getLogger(__name__)


class Lifecycle:
    """State and loading progress, watched by /v1/ready and the progress stream."""

    def __init__(self) -> None:
        self.state = WorkerState.LOADING
        self.progress = 0.0
        self.model_loaded = False
        self.error: str | None = None
        self.exiting = False  # the graceful exit (SIGTERM to ourselves) has been asked for
        self._changed = asyncio.Event()
        self._drain: asyncio.Task[None] | None = None

    def update(self, *, state: WorkerState | None = None, progress: float | None = None) -> None:
        """Change state or progress (on the loop) and wake everyone watching."""
        if state is not None:
            self.state = state
        if progress is not None:
            self.progress = max(self.progress, min(1.0, progress))  # llama.cpp's own reports never go back
        self._changed.set()
        self._changed = asyncio.Event()

    def next_change(self) -> asyncio.Event:
        """An event set at the next :meth:`update`; take it before looking, then wait on it."""
        return self._changed

    # ------------------------------------------------------------ loading

    async def load(self, engine: Engine) -> bool:
        """Load the model off the loop, reporting progress; start the decode loop. False on failure."""
        loop = asyncio.get_running_loop()

        def on_progress(fraction: float) -> None:  # llama.cpp's loader thread
            loop.call_soon_threadsafe(lambda: self.update(progress=fraction))

        try:
            await loop.run_in_executor(None, engine.load, on_progress)
        except Exception as exc:  # noqa: BLE001 - any failure to load is reported the same way
            self.error = f"Could not load the model: {exc}. Check the --model path and that the file is a GGUF."
            log.error(self.error)
            self.update(state=WorkerState.OFFLINE)
            return False
        engine.start()
        self.model_loaded = True
        self.update(state=WorkerState.IDLE, progress=1.0)
        return True

    # ------------------------------------------------------------ draining

    def start_drain(self, pool: SlotPool, timeout: float) -> asyncio.Task[None]:
        """Refuse new work from now on; give running requests ``timeout`` seconds, then cancel them.

        Idempotent: every caller (the admin route, SIGTERM) gets the same drain.
        """
        if self._drain is None:
            pool.draining = True
            if self.state != WorkerState.OFFLINE:
                self.update(state=WorkerState.DRAINING)
            self._drain = asyncio.get_running_loop().create_task(self._run_drain(pool, timeout))
        return self._drain

    async def drain(self, pool: SlotPool, timeout: float) -> None:
        await asyncio.shield(self.start_drain(pool, timeout))

    @staticmethod
    async def _run_drain(pool: SlotPool, timeout: float) -> None:
        if not await pool.wait_idle(timeout):
            log.warning("drain timeout after %.1fs: cancelling %d running request(s)", timeout, pool.running)
            await pool.cancel_all()
