"""The one way maskgen starts Ray: a local instance of its own, or a cluster named explicitly.

- **Local means local.** ``ray.init()`` without an address attaches to whatever Ray instance
  it finds on the machine (``RAY_ADDRESS``, or the last ``ray start`` cluster), someone else's
  included; maskgen passes ``address="local"`` so a local run always starts its own instance
  with the CPUs it asked for. A cluster is joined only when the caller names it
  (``--ray-address``), and is left running for its owner.
- **Quiet means quiet.** With ``quiet`` Ray's own notices are silenced too: its loggers are
  set to errors only (so the "Token authentication is enabled" notice of a new local instance
  is not printed; authentication itself stays as Ray sets it) and worker output is not
  forwarded, and Ray Data's progress bars are off when the caller uses Ray Data. The loggers
  (and the bars) get their settings back when the instance is stopped
  (:func:`stop_ray`), so a quiet run does not silence Ray for the rest of the process.
- Workers import maskgen from the same installation (no runtime environment is packaged).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator

OBJECT_STORE_BYTES = 200 * 1024 * 1024  # task payloads are small: plan rows, stats, embeddings
_RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "ray.serve")
_saved_levels: dict[str, int] = {}  # the Ray loggers' levels before a quiet start, for stop_ray
_saved_bars: dict[str, bool] = {}  # Ray Data's progress-bar setting before a quiet start


def _import_ray():
    try:
        import ray
    except ImportError:
        from maskgen.extras import MissingExtraError

        raise MissingExtraError("parallel work needs Ray: pip install 'maskgen[build]'") from None
    return ray


def start_ray(workers: int | None = None, address: str | None = None, *, quiet: bool = False,
              object_store_bytes: int = OBJECT_STORE_BYTES) -> tuple[bool, str]:
    """Start a local Ray instance with ``workers`` CPUs (default: every CPU), or join the
    cluster at ``address`` (``auto`` or ``HOST:PORT``), unless Ray is already initialised in
    this process. Returns (this call started or joined it, a line saying what it did); the
    caller that started it stops it with :func:`stop_ray`."""
    ray = _import_ray()
    if ray.is_initialized():
        return False, f"using the Ray instance already initialised in this process ({cluster_cpus()} CPUs)"
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    if quiet:
        _silence_loggers()
    try:
        return _init(ray, workers, address, quiet, object_store_bytes)
    except BaseException:
        _restore_loggers()
        raise


def _init(ray, workers: int | None, address: str | None, quiet: bool, object_store_bytes: int) -> tuple[bool, str]:
    if address:
        ray.init(address=address, log_to_driver=not quiet, configure_logging=False)
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        return True, f"joined the Ray cluster at {address} ({cluster_cpus()} CPUs on {len(nodes)} node(s))"
    saved = os.environ.pop("RAY_ADDRESS", None)  # "local" must not be overridden by the environment
    try:
        ray.init(
            address="local",
            num_cpus=workers or os.cpu_count() or 1,
            include_dashboard=False,
            object_store_memory=object_store_bytes,
            log_to_driver=not quiet,
            configure_logging=False,
        )
    finally:
        if saved is not None:
            os.environ["RAY_ADDRESS"] = saved
    return True, f"started a local Ray with {workers or os.cpu_count() or 1} CPUs (not attached to any running cluster)"


def stop_ray() -> None:
    """Stop (or leave) the Ray instance of this process; the processes it started end, and
    Ray's loggers get back the levels a quiet start changed."""
    ray = _import_ray()
    try:
        if ray.is_initialized():
            ray.shutdown()
    finally:
        _restore_loggers()


def _silence_loggers() -> None:
    for name in _RAY_LOGGERS:
        lg = logging.getLogger(name)
        _saved_levels.setdefault(name, lg.level)
        lg.setLevel(logging.ERROR)
    ctx = _data_context()
    if ctx is not None:  # Ray Data's progress bars (maskgen does not use Ray Data; a caller may)
        _saved_bars.setdefault("bars", ctx.enable_progress_bars)
        ctx.enable_progress_bars = False


def _restore_loggers() -> None:
    for name, level in _saved_levels.items():
        logging.getLogger(name).setLevel(level)
    _saved_levels.clear()
    ctx = _data_context()
    if ctx is not None and "bars" in _saved_bars:
        ctx.enable_progress_bars = _saved_bars["bars"]
    _saved_bars.clear()


def _data_context():
    """Ray Data's context when the caller has imported Ray Data (it is never imported here:
    it is slow to import and maskgen does not use it)."""
    if "ray.data" not in sys.modules:
        return None
    return sys.modules["ray.data"].DataContext.get_current()


def cluster_cpus() -> int:
    """CPUs of the Ray instance this process is connected to."""
    ray = _import_ray()
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


@contextlib.contextmanager
def ray_session(workers: int | None = None, address: str | None = None, *,
                quiet: bool = False) -> Iterator[bool]:
    """Ray for the duration of a block: started (and stopped after) unless already running.
    Yields whether this block started it."""
    started, _ = start_ray(workers, address, quiet=quiet)
    try:
        yield started
    finally:
        if started:
            stop_ray()
