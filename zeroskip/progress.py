"""Progress of the long steps (training, compile, Verilator builds, co-simulation, Yosys,
nextpnr) on a terminal: a tqdm bar or an elapsed-time line while the step runs, then one
summary line.

Nothing is written when the stream (``sys.stderr`` by default) is not a terminal (a pipe, a
file, a CI log) or when :func:`set_quiet` turned progress off (the CLI's ``--quiet``); the
caller's own output then says what happened. Usage::

    with progress.step("Verilator build of top"):        # elapsed time only
        ...
    with progress.step("QAT", total=10, unit="epoch") as bar:
        for epoch in range(10):
            ...
            bar.advance()
"""

from __future__ import annotations

import os
import sys
import threading
import time

__all__ = ["Step", "is_quiet", "set_quiet", "step"]

_state = {"quiet": False}

#: Seconds between redraws of a step without a count (its elapsed time).
REFRESH_SECONDS = 0.5


def set_quiet(quiet=True):
    """Turn progress off (or on again) for every step of the process."""
    _state["quiet"] = bool(quiet)


def is_quiet():
    return _state["quiet"]


def _size(stream):
    """``{"ncols": columns, "nrows": lines}`` of the terminal, 80 x 24 where it reports none:
    a pseudo-terminal nobody sized says 0 x 0, and tqdm then draws nothing."""
    try:
        size = os.get_terminal_size(stream.fileno())
        columns, lines = size.columns, size.lines
    except (AttributeError, OSError, ValueError):  # no descriptor, or not a terminal
        columns = lines = 0
    return {"ncols": columns or 80, "nrows": lines or 24}


def _is_terminal(stream):
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class Step:
    """One long step; see :func:`step`. ``advance(n)`` counts ``n`` more units done."""

    def __init__(self, label, total=None, unit="", stream=None):
        self.label, self.total, self.unit = label, total, unit
        self.done = 0
        self._stream = stream
        self._bar = None
        self._ticker = None
        self._stop = threading.Event()
        self._started = time.monotonic()

    @property
    def stream(self):
        return sys.stderr if self._stream is None else self._stream

    @property
    def shown(self):
        """Whether this step draws anything (a terminal, progress not turned off)."""
        return not is_quiet() and _is_terminal(self.stream)

    def __enter__(self):
        self._started = time.monotonic()
        if not self.shown:
            return self
        from tqdm import tqdm

        if self.total is None:
            self._bar = tqdm(desc=self.label, file=self.stream, leave=False,
                             bar_format="{desc}: {elapsed}", **_size(self.stream))
            self._ticker = threading.Thread(target=self._tick, daemon=True)
            self._ticker.start()
        else:
            self._bar = tqdm(desc=self.label, total=self.total, unit=f" {self.unit}",
                             file=self.stream, leave=False,
                             bar_format="{desc}: {bar} {n_fmt}/{total_fmt}{unit} {elapsed}",
                             **_size(self.stream))
        return self

    def _tick(self):
        while not self._stop.wait(REFRESH_SECONDS):
            self._bar.refresh()

    def advance(self, count=1):
        self.done += count
        if self._bar is not None:
            self._bar.update(count)

    def __exit__(self, kind, error, traceback):
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        if self._bar is None:
            return
        self._bar.close()
        seconds = time.monotonic() - self._started
        what = "failed after" if kind is not None else "done in"
        count = f"{self.done}/{self.total} {self.unit}, " if self.total is not None else ""
        self.stream.write(f"{self.label}: {count}{what} {seconds:.1f} s\n")
        self.stream.flush()


def step(label, total=None, unit="", stream=None):
    """A context manager showing ``label`` with its elapsed time (and, given ``total``, a bar
    of ``unit`` counted by ``advance``) on a terminal, then one summary line:
    ``label: [n/total unit, ]done in S s`` (or ``failed after``)."""
    return Step(label, total, unit, stream)
