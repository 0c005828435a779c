"""maskgen.progress: one plain progress line format for every long command."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

from maskgen.progress import Progress, hms

STAMP = r"\d\d:\d\d:\d\d "


class Clock:
    """A clock the test moves by hand (the lines' time stamps stay real)."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _lines(buf: io.StringIO) -> list[str]:
    return [re.sub("^" + STAMP, "", x) for x in buf.getvalue().splitlines()]


def test_hms() -> None:
    assert hms(0) == "0:00:00" and hms(59.6) == "0:01:00" and hms(3725) == "1:02:05" and hms(-3) == "0:00:00"


def test_lines_are_throttled_and_complete() -> None:
    clock, buf = Clock(), io.StringIO()
    p = Progress("mask", 1000, stream=buf, clock=clock, every=5)
    clock.t += 1
    p.advance(10, ok=10)  # the first update prints
    clock.t += 1
    p.advance(10, ok=9, failed=1)  # 2 s after the last line: quiet
    clock.t += 8
    p.advance(80, ok=80)
    assert _lines(buf) == [
        "[mask] 10/1,000 images (1%) | 10.0 images/s | ETA 0:01:39 | ok 10",
        "[mask] 100/1,000 images (10%) | 10.0 images/s | ETA 0:01:30 | ok 99, failed 1",
    ]
    clock.t += 1
    p.update(1000, ok=990, failed=10)  # the end always prints
    clock.t += 1
    assert p.finish() == "[mask] done: 1,000 images in 0:00:12 (83.3 images/s) | ok 990, failed 10"
    assert p.finish() == p.finish()  # printed once
    lines = _lines(buf)
    assert lines[2].startswith("[mask] 1,000/1,000 images (100%)") and lines[3].startswith("[mask] done:")
    assert len(lines) == 4
    assert all(re.match(STAMP, x) for x in buf.getvalue().splitlines())


def test_unknown_total_shows_elapsed() -> None:
    clock, buf = Clock(), io.StringIO()
    p = Progress("eval", None, unit="pairs", stream=buf, clock=clock)
    clock.t += 4
    p.update(2000)
    assert _lines(buf) == ["[eval] 2,000 pairs | 500 pairs/s | elapsed 0:00:04"]
    assert p.eta is None


def test_force_and_unchanged_state() -> None:
    clock, buf = Clock(), io.StringIO()
    p = Progress("train", 10, unit="steps", stream=buf, clock=clock)
    clock.t += 1
    p.update(1, loss=2.25)
    p.update(1, loss=2.25, force=True)  # nothing changed: no duplicate line
    p.update(2, loss=2.0, force=True)
    assert _lines(buf) == ["[train] 1/10 steps (10%) | 1.0 steps/s | ETA 0:00:09 | loss 2.25",
                           "[train] 2/10 steps (20%) | 2.0 steps/s | ETA 0:00:04 | loss 2"]


def test_quiet_keeps_the_log(tmp_path: Path) -> None:
    clock, buf = Clock(), io.StringIO()
    log = tmp_path / "audit.log"
    with Progress("audit", 3, quiet=True, stream=buf, log=log, clock=clock) as p:
        p.note("scanning 3 images")
        clock.t += 3
        p.advance(3, ok=3)
    assert buf.getvalue() == ""
    text = [re.sub("^" + STAMP, "", x) for x in log.read_text().splitlines()]
    assert text == ["[audit] scanning 3 images",
                    "[audit] 3/3 images (100%) | 1.0 images/s | ETA 0:00:00 | ok 3",
                    "[audit] done: 3 images in 0:00:03 (1.0 images/s) | ok 3"]


def test_a_failed_job_prints_no_summary() -> None:
    buf = io.StringIO()
    try:
        with Progress("mask", 5, stream=buf) as p:
            p.advance(1)
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert "done:" not in buf.getvalue()


def test_zero_total() -> None:
    buf = io.StringIO()
    p = Progress("mask", 0, stream=buf)
    p.update(0, force=True)
    assert "0/0 images |" in buf.getvalue()


def test_jobs_share_one_sink_and_a_resumed_job_counts_its_own_rate(tmp_path: Path) -> None:
    from maskgen.progress import Lines

    clock, buf = Clock(), io.StringIO()
    lines = Lines(stream=buf, log=tmp_path / "run.log")
    a = Progress("landmarks", 4, lines=lines, clock=clock)
    clock.t += 2
    a.update(4, ok=4)
    b = Progress("train", 10, unit="steps", lines=lines, initial=6, clock=clock)  # resumed at step 6
    clock.t += 2
    b.update(8, force=True, shards="1/2")
    b.close()  # a shared sink stays open for the next job
    lines.emit("[done] both")
    lines.close()
    want = ["[landmarks] 4/4 images (100%) | 2.0 images/s | ETA 0:00:00 | ok 4",
            "[train] 8/10 steps (80%) | 1.0 steps/s | ETA 0:00:02 | shards 1/2",
            "[done] both"]
    assert _lines(buf) == want
    assert [re.sub("^" + STAMP, "", x) for x in (tmp_path / "run.log").read_text().splitlines()] == want


def test_a_log_name_that_is_a_link_is_refused(tmp_path: Path) -> None:
    from maskgen.errors import OutputError
    from maskgen.progress import Lines

    target = tmp_path / "precious.txt"
    target.write_text("mine\n")
    (tmp_path / "build.log").symlink_to(target)
    with pytest.raises(OutputError, match="cannot write"):
        Lines(log=tmp_path / "build.log")
    assert target.read_text() == "mine\n"


def test_a_log_that_stops_taking_lines_is_dropped_with_one_line() -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    from maskgen.progress import Lines

    buf = io.StringIO()
    full = open("/dev/full", "w", buffering=1, encoding="utf-8")  # every write: "No space left on device"
    try:
        lines = Lines(stream=buf, log=full)
        lines.emit("[x] one")
        lines.emit("[x] two")
    finally:
        with contextlib.suppress(OSError):  # the unwritten buffer fails again on close
            full.close()
    got = _lines(buf)
    assert got[0] == "[x] one" and got[1].startswith("[log] cannot append to the log: ") and got[2] == "[x] two"
    assert len(got) == 3
