"""Reading image files without silent damage: what the readers print, truncation, true reasons.

* :func:`native_messages` collects what ITK reports through its logger (SimpleITK's
  ``LoggerBase``: e.g. ``ImageSeriesReader: Non uniform sampling or missing slices detected``)
  and what the C/C++ libraries underneath write straight to file descriptor 2 (MetaIO's
  ``data not read completely``), so a warning becomes a per-study error instead of a line lost in
  the terminal.
* :func:`nifti_problem` finds truncated NIfTI files *before* ITK reads them: ITK reads a
  truncated ``.nii`` / ``.nii.gz`` without error and fills the missing voxels with zeros (a
  truncated lesion mask read as empty). The size the header declares (``vox_offset`` +
  voxels × ``bitpix``) is compared with the gzip trailer (ISIZE, the uncompressed size modulo
  2³²; O(1)), and only when they differ is the stream decompressed to tell a truncated file from a
  multi-member gzip.
* :func:`read_failure_reason` says why ITK could not read a file that exists: ITK's MetaImage
  reader reports a truncated ``.mha`` as "No such file or directory" (a stale ``errno``).
"""

from __future__ import annotations

import contextlib
import gzip
import os
import re
import struct
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk  # noqa: N813

_ERRNO_NOISE = ("No such file or directory", "Success")


class _Collector(sitk.LoggerBase):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def DisplayText(self, text: str) -> None:  # noqa: N802 (SimpleITK's method names)
        self.messages.append(text)

    def DisplayErrorText(self, text: str) -> None:  # noqa: N802
        self.messages.append(text)

    def DisplayWarningText(self, text: str) -> None:  # noqa: N802
        self.messages.append(text)

    def DisplayGenericOutputText(self, text: str) -> None:  # noqa: N802
        self.messages.append(text)

    def DisplayDebugText(self, text: str) -> None:  # noqa: N802
        pass


def clean_message(text: str) -> str:
    """One line: no ``WARNING: In file, line N`` header, no object addresses, no errno noise."""
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    lines = [ln for ln in lines if not re.match(r"(WARNING|ERROR): In .*, line \d+$", ln)]
    out = " ".join(lines)
    out = re.sub(r"\s*\(0x[0-9a-fA-F]+\)", "", out)
    out = re.sub(r"^(Exception thrown in SimpleITK \S+: )?\S+:\d+:\s*", "", out)
    out = re.sub(r"\s+", " ", out).strip()
    for noise in _ERRNO_NOISE:
        out = out.replace(f"Reason: {noise}", "").replace(noise, "").strip()
    return out[:200]


@contextlib.contextmanager
def native_messages():
    """Yield a list that, after the block, holds every message ITK and its libraries printed."""
    collected: list[str] = []
    collector = _Collector()
    previous = collector.SetAsGlobalITKLogger()
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable descriptor 2: the ITK logger still collects
        saved = None
    tmp = tempfile.TemporaryFile() if saved is not None else None
    if tmp is not None:
        os.dup2(tmp.fileno(), 2)
    try:
        yield collected
    finally:
        if tmp is not None:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            raw = tmp.read().decode("utf-8", "replace")
            tmp.close()
        else:
            raw = ""
        previous.SetAsGlobalITKLogger()
        for text in [*collector.messages, raw]:
            if text.strip() and (message := clean_message(text)):
                collected.append(message)


# ---------------------------------------------------------------- NIfTI truncation


def _nifti_declared_bytes(head: bytes) -> int | None:
    """Bytes a NIfTI-1/2 file must hold (``vox_offset`` + voxel data), from its header."""
    for endian in "<>":
        if len(head) >= 348 and struct.unpack(endian + "i", head[:4])[0] == 348:
            dims = struct.unpack(endian + "8h", head[40:56])
            bitpix = struct.unpack(endian + "h", head[72:74])[0]
            offset = struct.unpack(endian + "f", head[108:112])[0]
        elif len(head) >= 540 and struct.unpack(endian + "i", head[:4])[0] == 540:
            bitpix = struct.unpack(endian + "h", head[14:16])[0]
            dims = struct.unpack(endian + "8q", head[16:80])
            offset = struct.unpack(endian + "q", head[168:176])[0]
        else:
            continue
        n = int(dims[0])
        if not 1 <= n <= 7 or any(d < 1 for d in dims[1 : n + 1]) or bitpix <= 0:
            return None
        return int(offset) + int(np.prod(dims[1 : n + 1], dtype=np.int64)) * int(bitpix) // 8
    return None


def nifti_problem(path: str | Path) -> str | None:
    """What is wrong with a ``.nii`` / ``.nii.gz`` file's size; None when it is complete."""
    path = Path(path)
    name = path.name.lower()
    try:
        if name.endswith(".nii"):
            with path.open("rb") as fh:
                declared = _nifti_declared_bytes(fh.read(540))
            size = path.stat().st_size
            if declared is not None and size < declared:
                return f"file holds {size} of the {declared} bytes its header declares"
            return None
        if not name.endswith(".nii.gz"):
            return None
        with gzip.open(path, "rb") as fh:
            declared = _nifti_declared_bytes(fh.read(540))
        with path.open("rb") as fh:
            fh.seek(-4, os.SEEK_END)
            isize = struct.unpack("<I", fh.read(4))[0]
        if declared is not None and isize == declared % 2**32:
            return None
        total = 0
        with gzip.open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                total += len(chunk)
    except (EOFError, OSError, zlib.error, struct.error) as exc:
        return f"gzip data ends early or is corrupt: {clean_message(str(exc)) or 'unreadable'}"
    if declared is not None and total < declared:
        return f"decompresses to {total} of the {declared} bytes its header declares"
    return None


# ---------------------------------------------------------------- why a read failed

_BYTES = {
    sitk.sitkUInt8: 1, sitk.sitkInt8: 1, sitk.sitkUInt16: 2, sitk.sitkInt16: 2,
    sitk.sitkUInt32: 4, sitk.sitkInt32: 4, sitk.sitkFloat32: 4, sitk.sitkFloat64: 8,
    sitk.sitkUInt64: 8, sitk.sitkInt64: 8,
}  # fmt: skip


def read_failure_reason(path: str | Path, exc: Exception, messages: list[str]) -> str:
    """Why ITK could not read ``path`` (which exists), in words that name the real cause."""
    info = sitk.ImageFileReader()
    info.SetFileName(str(path))
    extra = "; ".join(m for m in messages if m)
    try:
        with native_messages():  # what ITK prints about the header is in the exception too
            info.ReadImageInformation()
    except RuntimeError as header_exc:
        detail = clean_message(str(header_exc)) or "unknown format"
        return f"header unreadable: {detail}"
    size = info.GetSize()
    per_voxel = _BYTES.get(info.GetPixelID(), 0) * info.GetNumberOfComponents()
    declared = int(np.prod(size, dtype=np.int64)) * per_voxel
    shape = "×".join(str(s) for s in size)
    reason = (
        f"pixel data truncated or corrupt: the header declares {shape} voxels of "
        f"{sitk.GetPixelIDValueAsString(info.GetPixelID())}"
    )
    if per_voxel:
        reason += f" ({declared} bytes), the file holds {Path(path).stat().st_size} bytes"
    detail = extra or clean_message(str(exc))
    return f"{reason}; reader: {detail}" if detail else reason
