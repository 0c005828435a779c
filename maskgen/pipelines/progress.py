"""The build's reporter: the stages of one build on :mod:`maskgen.progress`, every line also in
``<out>/build.log`` (quiet or not), so the log file reads the same as the screen."""

from __future__ import annotations

from pathlib import Path

from maskgen.progress import EVERY_S, Lines
from maskgen.progress import Progress as _Job


class BuildProgress:
    """Stage lines of a build: ``line(msg)`` for events, ``stage(name, total)`` then
    ``update(...)`` for a stage's progress (done/total images, rate, ETA, ok/failed, shards,
    masked share). ``echo``: also on stderr."""

    def __init__(self, log_path: str | Path | None, echo: bool = True, every: float = EVERY_S):
        self.lines = Lines(quiet=not echo, log=log_path or None)
        self.every = every
        self._job: _Job | None = None

    def line(self, msg: str) -> None:
        self.lines.emit(msg)

    def stage(self, name: str, total: int) -> None:
        self._job = _Job(name, total, every=self.every, lines=self.lines)

    def update(
        self,
        done: int,
        ok: int,
        failed: int,
        shards: tuple[int, int] | None = None,
        masked: int | None = None,
        force: bool = False,
    ) -> None:
        if self._job is None:
            raise RuntimeError("update() before stage()")
        counts: dict = {"ok": ok, "failed": failed}
        if shards:
            counts["shards"] = f"{shards[0]}/{shards[1]}"
        if masked is not None and ok:
            counts["masked"] = f"{masked / ok:.2%}"
        self._job.update(done, force=force, **counts)

    def close(self) -> None:
        self.lines.close()
