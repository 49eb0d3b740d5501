"""Ctrl-C and SIGTERM during training: noted, so the run checkpoints the step it is on and stops there."""

from __future__ import annotations

import signal
import threading

from kinema.train.logging import print0


class StopSignals:
    """While a run trains (main thread): the first Ctrl-C or SIGTERM is noted, so the run checkpoints at the end
    of the step and stops; a second Ctrl-C interrupts at once. ``restore`` puts the previous handlers back."""

    def __init__(self):
        self.received: int | None = None
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._note)

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else ""

    def _note(self, signum, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum
        print0(f"\n{signal.Signals(signum).name}: stopping after this step, with a checkpoint (Ctrl-C again to "
               f"stop at once, losing the steps since the last checkpoint)")

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}
