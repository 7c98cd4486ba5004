"""SIGTERM (Cloud TPU preemption, `kill`) becomes a flag the loop polls: save cleanly, then exit."""

from __future__ import annotations

import signal
import threading

from absl import logging


class StopRequested:
    def __init__(self, signals=(signal.SIGTERM,)):
        self._event = threading.Event()
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in signals:
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        del frame
        logging.warning("received signal %d: will save a checkpoint and stop after this step",
                        signum)
        self._event.set()

    def __bool__(self) -> bool:
        return self._event.is_set()

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
