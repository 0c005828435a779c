"""Progress lines for a terminal and for ``<out>/build.log`` alike: one plain line per event,
no carriage-return tricks, so a log file reads the same as the screen."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from maskgen.outputs import write_error


def _hms(seconds: float) -> str:
    s = int(max(seconds, 0))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Progress:
    def __init__(self, log_path: str | Path | None, echo: bool = True, every: float = 5.0):
        self.log = None
        if log_path:  # O_NOFOLLOW: a log name turned into a link never appends to its target
            try:
                fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            except OSError as exc:
                raise write_error(log_path, exc, "") from exc
            self.log = os.fdopen(fd, "a", buffering=1)
        self.echo = echo
        self.every = every
        self._last = 0.0
        self._start = time.perf_counter()
        self._stage = ""
        self._total = 0
        self._printed = None

    def line(self, msg: str) -> None:
        text = f"{time.strftime('%H:%M:%S')} {msg}"
        if self.echo:
            print(text, file=sys.stderr, flush=True)
        if self.log:
            self.log.write(text + "\n")

    def stage(self, name: str, total: int) -> None:
        self._stage, self._total = name, total
        self._start = time.perf_counter()
        self._last = 0.0
        self._printed = None

    def update(
        self,
        done: int,
        ok: int,
        failed: int,
        shards: tuple[int, int] | None = None,
        masked: int | None = None,
        force: bool = False,
    ) -> None:
        now = time.perf_counter()
        if (not force and now - self._last < self.every and done < self._total) or (done, ok, failed) == self._printed:
            return
        self._last = now
        self._printed = (done, ok, failed)
        el = now - self._start
        rate = done / el if el > 0 else 0.0
        eta = (self._total - done) / rate if rate > 0 else 0.0
        parts = []
        if shards:
            parts.append(f"shards {shards[0]}/{shards[1]}")
        parts.append(f"images {done:,}/{self._total:,}")
        parts.append(f"ok {ok:,} failed {failed:,}")
        parts.append(f"{rate:,.1f} img/s")
        if masked is not None and ok:
            parts.append(f"masked {masked / ok:.2%}")
        parts.append(f"elapsed {_hms(el)} ETA {_hms(eta)}")
        self.line(f"[{self._stage}] " + " | ".join(parts))

    def close(self) -> None:
        if self.log:
            self.log.close()
            self.log = None
