"""Stopping a run cleanly: a signal (or a sweep that says so) ends the step in progress, the
loop checkpoints and stops, and the signal is handed on (submitit requeues, the shell sees
128 + N)."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol


class StopSource(Protocol):
    """Who else may stop a run (a sweep, for its worker processes): polled about once a second,
    and told of a signal this process received, which is then not handed on."""

    def stop_reason(self) -> str | None: ...

    def signalled(self, name: str) -> None: ...


class StopSignal:
    """SIGTERM, SIGUSR2 (SLURM pre-emption or time limit), SIGHUP, Ctrl-C, or a stop source that
    says so, end the step in progress; the loop then checkpoints and stops. `forward` hands a signal
    to the handler that was there before: submitit's requeues the job, the default exits with
    128 + signal, Python's raises KeyboardInterrupt (exit 130); with a stop source it is told
    instead. A second Ctrl-C while the checkpoint is being saved waits for the save; at any other
    time it interrupts at once, and the run says where its last checkpoint is. Other repeated
    signals change nothing."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT, signal.SIGHUP)
    POLL_S = 1.0  # how often the stop source is asked: a stat or two, off the step's critical path

    def __init__(self, source: StopSource | None = None) -> None:
        self.source = source
        self.received: int | None = None  # the signal this process received
        self.reason: str | None = None  # why the run stops: a signal's name or the source's reason
        self.previous: dict[int, Any] = {}
        self.saving = False
        self.next_poll = 0.0

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():  # handlers only install there
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc_info) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)

    def _handle(self, number: int, frame) -> None:
        if self.received is None:
            self.received, self.reason = number, signal.Signals(number).name
            if self.source is not None:
                self.source.signalled(self.reason)
        elif number == signal.SIGINT and not self.saving:  # a second Ctrl-C cuts the wait short, never a save
            raise KeyboardInterrupt
        # other repeats (SLURM sends USR2 and TERM together, scancel signals every step) change nothing

    @property
    def stopping(self) -> bool:
        if self.reason is None and self.source is not None and time.monotonic() >= self.next_poll:
            self.next_poll = time.monotonic() + self.POLL_S
            self.reason = self.source.stop_reason()
        return self.reason is not None

    @contextmanager
    def saving_checkpoint(self) -> Iterator[None]:
        self.saving = True
        try:
            yield
        finally:
            self.saving = False

    def forward(self) -> None:
        if self.received is None or self.source is not None:
            return
        handler = self.previous.get(self.received, signal.SIG_DFL)
        if callable(handler):
            handler(self.received, None)
        elif handler != signal.SIG_IGN:
            raise SystemExit(128 + self.received)
