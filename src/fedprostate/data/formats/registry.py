"""Choosing a format reader: detection from the files that mark each layout, listing, loading.

This is the only module that knows every format; the format modules never import it. Detection
asks each reader in ``READERS`` order (the first that recognises ``src`` wins), so a layout that
contains another's marker files (a PI-CAI tree with a findings CSV) is listed before it.
"""

from __future__ import annotations

from pathlib import Path

from fedprostate.data.formats import generic, nnunet, picai, prostate158, prostatex
from fedprostate.data.formats.base import DataFormatError, StudyRef, validate_study
from fedprostate.data.study import Study, StudyError

READERS = {mod.NAME: mod for mod in (picai, nnunet, prostatex, generic, prostate158)}
FORMATS = tuple(READERS)


def reader(fmt: str):
    if fmt not in READERS:
        raise DataFormatError(f"unknown format {fmt!r}; choose one of {FORMATS} or 'auto'")
    return READERS[fmt]


def detect_format(src: str | Path) -> str:
    """Guess the layout of ``src`` from the files that mark each format."""
    src = Path(src)
    for name, mod in READERS.items():
        if mod.detect(src):
            return name
    raise DataFormatError(
        f"{src}: cannot detect the data format (no marksheet, nnU-Net dataset.json, findings CSV "
        "or t2.nii.gz)"
    )


def list_studies(
    src: str | Path, fmt: str = "auto", **opts
) -> tuple[str, list[StudyRef], list[StudyError]]:
    """Return (format, refs, listing errors). Listing errors are studies already known to be bad."""
    fmt = detect_format(src) if fmt == "auto" else fmt
    refs, errors = reader(fmt).list_refs(Path(src), **opts)
    return fmt, refs, errors


def load_study(ref: StudyRef, seed: int = 0, **opts) -> Study:
    """Read one study's images and labels; raise StudyError naming the file and patient."""
    study = reader(ref.fmt).load(ref, seed=seed, **opts)
    validate_study(study)
    return study
