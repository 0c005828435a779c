"""Progress of a long command, the same way everywhere: plain lines that read as well in a log
file as on a terminal (no carriage returns, no bars), at most one every few seconds::

    14:02:05 [mask] 120/1,000 images (12%) | 35.2 images/s | ETA 0:00:25 | ok 118, failed 2
    14:02:30 [mask] done: 1,000 images in 0:00:28 (35.7 images/s) | ok 990, failed 10

The rate is over the whole run so far (steady, not the last few items); the ETA is the rest
at that rate. ``quiet`` silences the terminal, never the log file. Used by folder ``mask``,
``audit``, ``eval``, ``landmarks-model``, ``train`` and ``build`` (whose ``build.log`` gets
every line, quiet or not). Several jobs of one command (the stages of a build) share one
:class:`Lines`, the terminal-and-log sink.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import IO, Any

EVERY_S = 5.0  # seconds between two progress lines of one job


def hms(seconds: float) -> str:
    """``H:MM:SS`` of a duration."""
    s = int(max(seconds, 0) + 0.5)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _count(n: Any) -> str:
    if isinstance(n, str):
        return n
    return f"{n:,}" if isinstance(n, int) else f"{n:.4g}"


def _rate(r: float) -> str:
    return f"{r:,.1f}" if r < 100 else f"{r:,.0f}"


class Lines:
    """Where the lines of a command go: the terminal (stderr, unless ``quiet``) and a log file
    (every line, quiet or not). Each line is time-stamped; nothing is ever rewritten in place.

    ``log``: a path (appended; a name that is a symbolic link is refused, so a log name turned
    into a link never appends to its target) or an open text file. A log that stops taking
    lines (a full disk) is dropped with one line on stderr; the command goes on."""

    def __init__(self, *, quiet: bool = False, stream: IO[str] | None = None,
                 log: str | os.PathLike | IO[str] | None = None) -> None:
        self.quiet = quiet
        self.stream = stream
        self._own_log = isinstance(log, (str, os.PathLike))
        self._log: IO[str] | None = _open_log(log) if self._own_log else log  # type: ignore[arg-type]

    def emit(self, text: str) -> None:
        stamped = f"{time.strftime('%H:%M:%S')} {text}"
        if not self.quiet:
            print(stamped, file=self.stream or sys.stderr, flush=True)
        if self._log is not None:
            try:
                self._log.write(stamped + "\n")
            except OSError as exc:  # e.g. the disk is full: keep going, say it once
                self._log = None
                print(f"{time.strftime('%H:%M:%S')} [log] cannot append to the log: {exc.strerror or exc}",
                      file=self.stream or sys.stderr, flush=True)

    def close(self) -> None:
        if self._own_log and self._log is not None:
            try:
                self._log.close()
            except OSError:
                pass
        self._log = None


def _open_log(path: str | os.PathLike) -> IO[str]:
    from maskgen.outputs import write_error

    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as exc:
        raise write_error(path, exc, "") from exc
    return os.fdopen(fd, "a", buffering=1, encoding="utf-8")


class Progress:
    """Progress lines of one job of ``total`` items (None: not known in advance).

    ``update(done, ok=..., failed=...)`` sets the state, ``advance(n, ok=1)`` adds to it;
    either prints when ``every`` seconds have passed since the last line, or when forced, or
    when the job reaches its total. Named counts may be numbers or short texts
    (``shards="3/10"``). ``note(text)`` prints a plain line; ``finish()`` prints the summary.
    ``initial``: items already done before this run (a resumed job): the rate counts only
    this run's. Output goes to ``lines`` when given (shared by the jobs of one command), else
    to a sink of its own made from ``quiet``, ``stream`` and ``log`` (see :class:`Lines`).
    ``clock`` is replaceable for tests."""

    def __init__(self, label: str, total: int | None = None, *, unit: str = "images", quiet: bool = False,
                 every: float = EVERY_S, stream: IO[str] | None = None, log: str | os.PathLike | IO[str] | None = None,
                 lines: Lines | None = None, initial: int = 0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.every = every
        self.clock = clock
        self.done = self._initial = int(initial)
        self.counts: dict[str, Any] = {}
        self._own_lines = lines is None
        self.lines = lines if lines is not None else Lines(quiet=quiet, stream=stream, log=log)
        self._start = clock()
        self._last_print: float | None = None
        self._last_state: tuple | None = None
        self._finished = False

    @property
    def quiet(self) -> bool:
        return self.lines.quiet

    # ---- state

    def update(self, done: int | None = None, *, force: bool = False, **counts: Any) -> None:
        """Set the number of items done (and named counts) and print if it is time."""
        if done is not None:
            self.done = int(done)
        self.counts.update(counts)
        self._maybe_print(force)

    def advance(self, n: int = 1, *, force: bool = False, **counts: int) -> None:
        """Add ``n`` items done (and add to named counts) and print if it is time."""
        self.done += int(n)
        for k, v in counts.items():
            self.counts[k] = self.counts.get(k, 0) + v
        self._maybe_print(force)

    @property
    def elapsed(self) -> float:
        return self.clock() - self._start

    @property
    def rate(self) -> float:
        """Items per second of this run since its start."""
        el = self.elapsed
        return (self.done - self._initial) / el if el > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds left at the rate so far (None: unknown total or no rate yet)."""
        if self.total is None or self.rate <= 0:
            return None
        return max(self.total - self.done, 0) / self.rate

    # ---- lines

    def line(self) -> str:
        """The progress line of the current state (without the time stamp)."""
        parts = []
        if self.total is not None:
            pct = f" ({self.done / self.total:.0%})" if self.total else ""
            parts.append(f"{self.done:,}/{self.total:,} {self.unit}{pct}")
        else:
            parts.append(f"{self.done:,} {self.unit}")
        parts.append(f"{_rate(self.rate)} {self.unit}/s")
        eta = self.eta
        parts.append(f"ETA {hms(eta)}" if eta is not None else f"elapsed {hms(self.elapsed)}")
        text = f"[{self.label}] " + " | ".join(parts)
        return text + self._counts_text()

    def _counts_text(self) -> str:
        if not self.counts:
            return ""
        return " | " + ", ".join(f"{k.replace('_', ' ')} {_count(v)}" for k, v in self.counts.items())

    def note(self, text: str) -> None:
        """A plain line of this job (a stage, a warning, a decision)."""
        self.lines.emit(f"[{self.label}] {text}")

    def finish(self, **counts: Any) -> str:
        """Print (once) and return the summary line: items, time, average rate, counts."""
        self.counts.update(counts)
        el = self.elapsed
        rate = (self.done - self._initial) / el if el > 0 else 0.0
        text = (f"[{self.label}] done: {self.done:,} {self.unit} in {hms(el)} "
                f"({_rate(rate)} {self.unit}/s)" + self._counts_text())
        if not self._finished:
            self._finished = True
            self.lines.emit(text)
        return text

    def close(self) -> None:
        """Close the log file of a sink this job made itself (a shared one stays open)."""
        if self._own_lines:
            self.lines.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:  # noqa: ANN001
        try:
            if exc_type is None:
                self.finish()
        finally:
            self.close()

    # ---- output

    def _maybe_print(self, force: bool) -> None:
        now = self.clock()
        state = (self.done, tuple(self.counts.items()))
        if state == self._last_state:
            return
        at_end = self.total is not None and self.done >= self.total
        due = self._last_print is None or now - self._last_print >= self.every
        if not (force or due or at_end):
            return
        self._last_print = now
        self._last_state = state
        self.lines.emit(self.line())
