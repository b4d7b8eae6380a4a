"""Zip uploads opened only after their member names, links, sizes and compression ratios
are checked, and read with zipfile's errors turned into an InvalidModelError."""

from __future__ import annotations

import stat
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from optimizers.errors import InvalidModelError
from optimizers.external_data import (
    unsafe_path_reason,
)
from optimizers.formats.archive_safety import (
    UnsafeArchiveError,
    printable,
    read_text_member,
)

#: Most members a zip upload may hold.
MAX_ZIP_MEMBERS = 10_000
#: Largest uncompressed-to-compressed ratio for one member (zip bombs are far above this).
MAX_COMPRESSION_RATIO = 100
#: Members smaller than this are not held to the ratio: they cannot do harm.
RATIO_CHECK_MIN_BYTES = 1 << 20
#: What zipfile raises while reading a corrupt member: a bad CRC or a member longer than its
#: header says (BadZipFile), a broken deflate stream, a cut-off file, an unknown method.
ZIP_READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError)


@contextmanager
def reading_zip() -> Iterator[None]:
    """Turn zipfile's errors for a corrupt member into an InvalidModelError."""
    try:
        yield
    except ZIP_READ_ERRORS as exc:
        raise InvalidModelError(
            f"the zip is corrupt: {type(exc).__name__}: {exc}; is the file complete?"
        ) from exc


def open_checked_zip(path: Path, *, max_total_bytes: int) -> zipfile.ZipFile:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise InvalidModelError(f"the file looks like a zip but cannot be read: {exc}") from exc
    try:
        check_zip(archive, max_total_bytes=max_total_bytes)
    except BaseException:
        archive.close()
        raise
    return archive


def check_zip(archive: zipfile.ZipFile, *, max_total_bytes: int) -> None:
    """Refuse zips that could escape a folder, hide links or special files, or expand far
    beyond their size. Checks the central directory only; reading is bounded separately."""
    infos = archive.infolist()
    if len(infos) > MAX_ZIP_MEMBERS:
        raise UnsafeArchiveError(
            f"the zip holds {len(infos)} entries; at most {MAX_ZIP_MEMBERS} are allowed"
        )
    total = 0
    seen: set[str] = set()
    for info in infos:
        # zipfile cuts names at a NUL byte; the original name still has it.
        for name in {info.orig_filename, info.filename}:
            reason = unsafe_path_reason(name)
            if reason:
                raise UnsafeArchiveError(
                    f"the zip entry '{printable(name)}' is not allowed: {reason}"
                )
        mode = (info.external_attr >> 16) & 0xFFFF
        kind = stat.S_IFMT(mode)
        if kind == stat.S_IFLNK:
            raise UnsafeArchiveError(
                f"the zip entry '{info.filename}' is a symbolic link; links are not allowed"
            )
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise UnsafeArchiveError(
                f"the zip entry '{info.filename}' is not a regular file or folder"
            )
        if info.flag_bits & 0x1:
            raise UnsafeArchiveError(f"the zip entry '{info.filename}' is encrypted")
        key = info.filename.rstrip("/")
        if key in seen:
            raise UnsafeArchiveError(f"the zip holds '{info.filename}' more than once")
        seen.add(key)
        total += info.file_size
        if total > max_total_bytes:
            raise UnsafeArchiveError(
                f"the zip expands to more than {max_total_bytes} bytes, the limit for "
                "uncompressed uploads (4x MODELPRESS_MAX_UPLOAD_BYTES)"
            )
        if info.file_size >= RATIO_CHECK_MIN_BYTES and info.file_size > MAX_COMPRESSION_RATIO * max(
            info.compress_size, 1
        ):
            raise UnsafeArchiveError(
                f"the zip entry '{info.filename}' expands {info.file_size} bytes from "
                f"{info.compress_size} (more than {MAX_COMPRESSION_RATIO}x); refused as a "
                "possible zip bomb"
            )


def member_sizes(archive: zipfile.ZipFile) -> dict[str, int]:
    return {i.filename: i.file_size for i in archive.infolist() if not i.is_dir()}


def read_small(archive: zipfile.ZipFile, name: str) -> bytes:
    return read_text_member(archive, name)
