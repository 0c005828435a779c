"""Helper processes: plain Python processes (``python -m maskgen.helper``) that run maskgen's
functions for this one.

``multiprocessing``'s spawned children import the caller's main module again: a user's script
without a main guard would run its top-level code (a whole build, say) once more in every
child. A helper never imports the main module. It starts as ``python -m maskgen.helper`` with
the caller's ``sys.path``, imports the modules it is told to preload (so that, e.g., matplotlib
is imported while the caller still works), then serves calls: a call travels pickled over the
helper's stdin and its result over its stdout, one length-prefixed message each (a process this
one started, running functions named by module and qualified name, as pickle names them).
Whatever the function prints, from Python or from C, goes to the helper's stderr (discarded),
never into the result pipe.

One helper serves one call at a time; callers that want several run several helpers (see
:func:`maskgen.audit.workers.map_in_workers`).
"""

from __future__ import annotations

import pickle
import subprocess
import sys
from typing import Any, Callable, Sequence

PROTOCOL = pickle.HIGHEST_PROTOCOL


class HelperError(RuntimeError):
    """The helper could not start, died, or could not send its result back."""


class HelperCallError(Exception):
    """The function raised in the helper (its type and message, as text)."""


class Helper:
    """One helper process. ``preload``: modules it imports before serving calls.

    :meth:`call` returns the function's result; it raises :class:`HelperCallError` when the
    function raised there and :class:`HelperError` when the process is gone (after which every
    call raises it). A helper that could not start is not :attr:`alive`."""

    def __init__(self, preload: Sequence[str] = ()) -> None:
        self.proc: subprocess.Popen | None = None
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "maskgen.helper", *preload],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.DEVNULL)
            _send(self.proc.stdin, pickle.dumps(list(sys.path), protocol=PROTOCOL))
        except OSError:
            self.close()

    @property
    def alive(self) -> bool:
        return self.proc is not None

    def call(self, fn: Callable, *args: Any) -> Any:
        proc = self.proc
        if proc is None:
            raise HelperError("the helper process is not running")
        msg = pickle.dumps((fn, args), protocol=PROTOCOL)  # a call that cannot be pickled raises here
        try:
            _send(proc.stdin, msg)
            ok, value = pickle.loads(_receive(proc.stdout))
        except (OSError, EOFError, pickle.PickleError) as exc:
            self.close()
            raise HelperError(f"the helper process failed ({type(exc).__name__})") from None
        if not ok:
            raise HelperCallError(value)
        return value

    def close(self) -> None:
        """End the helper: it exits when its stdin closes (killed if it has not within 30 s)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout=30)
        except Exception:
            proc.kill()
            proc.wait()

    def __enter__(self) -> Helper:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _send(stream, data: bytes) -> None:
    """One message: its length (8 bytes, little-endian), then its bytes."""
    stream.write(len(data).to_bytes(8, "little") + data)
    stream.flush()


def _receive(stream) -> bytes:
    head = stream.read(8)
    if len(head) < 8:
        raise EOFError
    n = int.from_bytes(head, "little")
    data = stream.read(n)
    if len(data) < n:
        raise EOFError
    return data


def _serve(preload: Sequence[str]) -> None:
    """The helper's loop: the caller's ``sys.path``, then pickled ``(function, args)`` messages
    on stdin, each answered on stdout with ``(True, result)`` or ``(False, "Type: message")``
    (a call that cannot be unpickled here is answered as an error)."""
    import importlib
    import os

    inp = sys.stdin.buffer
    # nothing but results goes to the caller's pipe: it keeps a private descriptor, and file
    # descriptor 1 (where C libraries print too) and sys.stdout point at stderr
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        sys.path[:] = pickle.loads(_receive(inp))
    except EOFError:
        return
    for name in preload:
        try:
            importlib.import_module(name)
        except Exception:  # the call that needs it reports the error
            pass
    while True:
        try:
            msg = _receive(inp)
        except EOFError:
            return
        try:
            fn, args = pickle.loads(msg)
            result = (True, fn(*args))
        except Exception as exc:
            result = (False, f"{type(exc).__name__}: {exc}")
        try:
            data = pickle.dumps(result, protocol=PROTOCOL)
        except Exception as exc:
            data = pickle.dumps((False, f"result not picklable: {type(exc).__name__}: {exc}"), protocol=PROTOCOL)
        _send(out, data)


if __name__ == "__main__":
    _serve(sys.argv[1:])
