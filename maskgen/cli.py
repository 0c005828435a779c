"""The `maskgen` command: a click group whose subcommands load lazily.

Each stage owns its command in its own module; importing the group stays cheap (no torch or
Ray import just to print ``--help``).
"""

from __future__ import annotations

import importlib

import click

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


class LazyGroup(click.Group):
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


@click.group(cls=LazyGroup)
@click.version_option(package_name="maskgen")
def main() -> None:
    """Masked-face recognition data and models: mask, build, audit, train, eval."""


if __name__ == "__main__":
    main()
