"""Progress as plain lines that read well in a log: done/total, rate, ETA (no torch import)."""

from __future__ import annotations

import math


def format_eta(seconds: float) -> str:
    """``H:MM:SS``, or ``?`` when the rate is not known yet."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def progress_line(what: str, done: int, total: int, seconds: float, unit: str) -> str:
    """``embedded 320/1614 images (12.3 images/s, ETA 0:01:45)``."""
    rate = done / max(seconds, 1e-9)
    eta = format_eta((total - done) / rate) if rate > 0 else "?"
    return f"{what} {done}/{total} {unit} ({rate:.1f} {unit}/s, ETA {eta})"
