"""SIGINT and SIGTERM as a polite request to stop, for front ends that run the engine."""

from __future__ import annotations

import signal
import threading


class StopSignals:
    """SIGINT and SIGTERM as a polite request to stop, for the length of a `with` block.

    The first signal sets `signum` (so ``engine.run(job, stop=signals.requested)`` ends at
    the next evaluation and returns the best image); a second one while `hurry` is True
    raises KeyboardInterrupt at once. Set `hurry` False around work that must not be cut
    short, such as writing the result. Outside the main thread this does nothing, and a
    signal this process was started ignoring (SIGINT in a shell's background job) stays
    ignored.
    """

    SIGNALS = ("SIGINT", "SIGTERM")

    def __init__(self) -> None:
        self.signum: int | None = None
        self.hurry = True
        self._previous: dict[int, object] = {}

    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def _handle(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum
        elif self.hurry:
            raise KeyboardInterrupt

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                sig = getattr(signal, name, None)
                if sig is not None and signal.getsignal(sig) is not signal.SIG_IGN:  # ignored stays ignored
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
