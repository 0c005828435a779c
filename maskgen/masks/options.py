"""The shared options whose vocabulary belongs to the masks stage: the landmark backend and
the mask type. Every command that has them uses these fields (see :mod:`maskgen.options`);
their choices are read from :mod:`maskgen.masks` when needed, so adding a backend or a design
there changes every command at once."""

from __future__ import annotations

from maskgen.options import Field


def backend_choices() -> tuple[str, ...]:
    """Every backend of :data:`maskgen.masks.landmarks.BACKENDS` (``auto`` first: the aligned
    fit for square crops of at most 128 px, else ``cnn``)."""
    from maskgen.masks.landmarks import BACKENDS

    return tuple(dict.fromkeys(("auto", *BACKENDS)))


def mask_type_choices() -> tuple[str, ...]:
    """Every built-in design and ``random``; ``pack:<name>`` is accepted besides these."""
    from maskgen.masks.designs import MASK_TYPES

    return (*MASK_TYPES, "random")


def _check_mask_type(value: str | list[str]) -> str | None:
    """One mask type, or (a command that restricts a mix) a list of them."""
    choices = mask_type_choices()
    for v in value if isinstance(value, list) else [value]:
        if not (v in choices or (v.startswith("pack:") and len(v) > len("pack:"))):
            return f"must be one of {', '.join(choices)} or pack:<name>; got {v!r}"
    return None


BACKEND = Field("backend", str, "auto",
                "Landmark backend: auto (aligned for square crops <= 128 px, else cnn), cnn (MTCNN detector "
                "+ dlib 68-point fit), dlib (HOG detector), aligned, aligned-full, fan.", choices=backend_choices)
MASK_TYPE = Field("mask_type", str, "random",
                  "Mask design: a built-in type, pack:<name> (a template of --pack) or random.",
                  validator=_check_mask_type, metavar="TYPE")
SELECT = Field("select", str, "all", "Which faces of an image: all, the largest, or the one nearest the centre.",
               choices=("all", "largest", "center"))


def mix_type_choices() -> tuple[str, ...]:
    """The designs a mix can be restricted to (``random`` and packs are not designs of a mix)."""
    from maskgen.masks.designs import MASK_TYPES

    return MASK_TYPES


# the list form of the mask type, for commands that restrict a mix (build): same name and flag
MASK_TYPES = Field("mask_type", list[str] | None, None, "Restrict the mix's mask types.",
                   choices=mix_type_choices, metavar="TYPE")
