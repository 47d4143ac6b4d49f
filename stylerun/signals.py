"""SIGINT and SIGTERM as a polite request to stop, for front ends that run the engine."""

from __future__ import annotations

import signal
import socket
import threading


class StopSignals:
    """SIGINT and SIGTERM as a polite request to stop, for the length of a `with` block.

    The first signal sets `signum` (so ``engine.run(job, stop=signals.requested)`` ends
    within the current evaluation and returns the best image); a second one while `hurry` is True
    raises KeyboardInterrupt at once. Set `hurry` False around work that must not be cut
    short, such as writing the result. Outside the main thread this does nothing, and a
    signal this process was started ignoring (SIGINT in a shell's background job) stays
    ignored.

    Python runs a signal handler only once the main thread is back in Python code, and
    the main thread spends an evaluation inside onnxruntime (a minute and more at print
    sizes). So the signal is also read from a wakeup socket on a thread of its own, which
    sets `signum` at once; the evaluation's own watcher then cuts it short
    (`runtime.LossModel`), and the handler runs moments later.
    """

    SIGNALS = ("SIGINT", "SIGTERM")

    def __init__(self) -> None:
        self.signum: int | None = None
        self.hurry = True
        self._previous: dict[int, object] = {}
        self._handled = 0  # signals seen by the handler: the second one while `hurry` interrupts
        self._wakeup: tuple[socket.socket, socket.socket, int] | None = None

    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def _handle(self, signum, frame) -> None:
        self._handled += 1
        if self.signum is None:
            self.signum = signum
        elif self._handled > 1 and self.hurry:
            raise KeyboardInterrupt

    def _listen(self, reader: socket.socket) -> None:
        """The wakeup socket's bytes are signal numbers: the first of ours is the request."""
        while True:
            try:
                data = reader.recv(64)
            except OSError:  # closed by __exit__
                return
            if not data:
                return
            ours = [n for n in data if n in self._previous]
            if ours and self.signum is None:
                self.signum = ours[0]

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                sig = getattr(signal, name, None)
                if sig is not None and signal.getsignal(sig) is not signal.SIG_IGN:  # ignored stays ignored
                    self._previous[sig] = signal.signal(sig, self._handle)
            if self._previous:
                reader, writer = socket.socketpair()
                writer.setblocking(False)
                previous_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
                self._wakeup = (reader, writer, previous_fd)
                threading.Thread(target=self._listen, args=(reader,), daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
        if self._wakeup is not None:
            reader, writer, previous_fd = self._wakeup
            signal.set_wakeup_fd(previous_fd)
            reader.shutdown(socket.SHUT_RDWR)
            reader.close()
            writer.close()
            self._wakeup = None
