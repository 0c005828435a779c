"""The `maskgen` command: a click group whose subcommands load lazily.

Each stage owns its command in its own module; importing the group stays cheap (no torch or
Ray import just to print ``--help``).

Every command ends in one of two ways: its own output and exit 0, or ONE line on stderr,
``Error: <message>``, and a non-zero exit. A user error (a :class:`maskgen.errors.MaskgenError`,
an ``OSError`` of a read or a write, a bad option, Ctrl-C, memory exhausted) never shows a
traceback; ``maskgen --debug <command>`` (or ``MASKGEN_DEBUG=1``) shows it above that line.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import os
import sys
import traceback
from typing import Any

import click

from maskgen.errors import MaskgenError

# name -> "module:attribute" of a click.Command
COMMANDS: dict[str, str] = {
    "mask": "maskgen.masks.cli:mask",
    "landmarks": "maskgen.masks.cli:landmarks",
    "contact-sheet": "maskgen.masks.cli:contact_sheet",
    "landmarks-model": "maskgen.masks.cli:landmarks_model",
    "build": "maskgen.pipelines.cli:build",
    "audit": "maskgen.audit.cli:audit",
    "card": "maskgen.audit.cli:card",
    "train": "maskgen.training.cli:train",
    "export": "maskgen.training.cli:export",
    "eval": "maskgen.eval.cli:eval_cmd",
    "make-bin": "maskgen.eval.cli:make_bin",
}

EXIT_INTERRUPTED = 130  # the shell's convention for a process ended by SIGINT
DEBUG_HINT = "rerun with --debug for the traceback"

# errno values that can only come from writing (the rest name the file neutrally)
_WRITE_ERRNOS = {errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.ETXTBSY}
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


def one_line(text: object) -> str:
    """``text`` made safe for one terminal line: control characters (a newline in a file name)
    shown as escapes, undecodable bytes of a file name (surrogate escapes) as ``\\xNN``."""
    out = []
    for ch in str(text):
        o = ord(ch)
        if 0xDC80 <= o <= 0xDCFF:  # os.fsdecode's surrogateescape of a non-UTF-8 byte
            out.append(f"\\x{o - 0xDC00:02x}")
        elif 0xD800 <= o <= 0xDFFF:
            out.append(f"\\u{o:04x}")
        elif ch == "\n" or ch == "\r" or ch == "\t" or o < 0x20 or o == 0x7F:
            out.append(ch.encode("unicode_escape").decode("ascii"))
        else:
            out.append(ch)
    return "".join(out).strip()


def describe_os_error(exc: OSError) -> str:
    """``cannot write OUT/x: Read-only file system``: the file and the system's reason."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    name = exc.filename
    if name is None:
        msg = reason
    else:
        verb = "write" if exc.errno in _WRITE_ERRNOS else "open"
        name = os.fsdecode(name) if isinstance(name, bytes) else str(name)
        if exc.filename2 is not None:
            msg = f"cannot move {name} to {os.fsdecode(exc.filename2)}: {reason}"
        else:
            msg = f"cannot {verb} {name}: {reason}"
    if exc.errno in _FULL_ERRNOS:
        msg += " (free some space and rerun)"
    return msg


def _unwrap(exc: BaseException) -> BaseException:
    """The original exception of one raised in a Ray worker (``RayTaskError`` keeps it as
    ``cause``; its own text holds the remote traceback, which must not reach the user)."""
    for _ in range(8):
        cause = getattr(exc, "cause", None)
        if type(exc).__module__.startswith("ray.") and isinstance(cause, BaseException):
            exc = cause
        else:
            break
    return exc


def describe(exc: BaseException, command: str | None = None) -> tuple[str, int]:
    """(message, exit code) of an exception that ends a command."""
    exc = _unwrap(exc)
    if isinstance(exc, click.exceptions.UsageError) or getattr(exc, "usage", False):
        msg = exc.format_message()
        hint = f"maskgen {command} -h" if command else "maskgen -h"
        return f"{msg} (see '{hint}')", exc.exit_code
    if isinstance(exc, click.ClickException):
        return exc.format_message(), exc.exit_code
    if isinstance(exc, MaskgenError):
        return str(exc) or type(exc).__name__, int(getattr(exc, "exit_code", 1))
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", EXIT_INTERRUPTED
    if isinstance(exc, click.Abort):
        return "aborted", 1
    if isinstance(exc, MemoryError):
        return "out of memory (use fewer workers or smaller batches)", 1
    if isinstance(exc, OSError):
        return describe_os_error(exc), 1
    detail = str(exc).strip()
    name = type(exc).__name__
    return f"internal error: {name}{': ' + detail if detail else ''} ({DEBUG_HINT})", 1


def report(exc: BaseException, debug: bool, command: str | None = None) -> int:
    """Print the one ``Error:`` line (and the traceback with ``debug``); return the exit code."""
    if debug:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    msg, code = describe(exc, command)
    try:
        sys.stdout.flush()
    except Exception:  # noqa: BLE001 - a closed stdout must not hide the error line
        pass
    click.echo(f"Error: {one_line(msg)}", err=True)
    return code


def _debug_env() -> bool:
    return os.environ.get("MASKGEN_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


class LazyGroup(click.Group):
    """Loads a subcommand's module only when that subcommand runs."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(COMMANDS) | set(self.commands))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.commands:
            return self.commands[name]
        target = COMMANDS.get(name)
        if target is None:
            return None
        from maskgen.extras import missing_extra_command

        stub = missing_extra_command(name)  # its extra is not installed: a one-line error
        if stub is not None:
            return stub
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:  # that stage's module is absent from this install
                return None
            raise click.ClickException(f"command {name!r} needs a missing package: {exc}") from exc
        return getattr(module, attr)


class MaskgenGroup(LazyGroup):
    """The group that turns every way a command can fail into one ``Error:`` line."""

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        # Errors in the group's own options (``maskgen --bogus``) arise here, before invoke.
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.ClickException as exc:
            raise click.exceptions.Exit(report(exc, _debug_env())) from exc

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.NoArgsIsHelpError, SystemExit, GeneratorExit):
            raise
        except BrokenPipeError:
            # the reader of our stdout went away (``maskgen landmarks DIR | head``): nothing to
            # tell it; point stdout at /dev/null so the interpreter's final flush stays quiet
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise click.exceptions.Exit(1) from None
        except BaseException as exc:  # noqa: BLE001 - the one place every failure is reported
            code = report(exc, bool(ctx.params.get("debug")) or _debug_env(), ctx.invoked_subcommand)
            raise click.exceptions.Exit(code) from None


@click.group(cls=MaskgenGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, envvar="MASKGEN_DEBUG",
              help="Show the traceback of an error (also MASKGEN_DEBUG=1).")
@click.version_option(package_name="maskgen")
def main(debug: bool) -> None:
    """Masked-face recognition data and models: mask, build, audit, train, eval."""


if __name__ == "__main__":
    main()
