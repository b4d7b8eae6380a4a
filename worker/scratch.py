"""The pool process's side of a job's scratch folder. The confined job process can write
anything there (links included), so every path is walked one folder at a time without
following links, files are copied (never linked or moved: the job could still change a
linked file), and the folder is emptied without following links."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from worker.protocol import ProtocolError, check_relative

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class ScratchFolder:
    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o700)
        self.root = root

    def empty(self) -> None:
        if not self.root.is_dir():  # its host stopped and took the folder along
            return
        for entry in os.scandir(self.root):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)

    @contextlib.contextmanager
    def _folder(self, parts: tuple[str, ...], *, create: bool) -> Iterator[int]:
        fd = os.open(self.root, _DIR_FLAGS)
        try:
            for part in parts:
                if create:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o700, dir_fd=fd)
                try:
                    inner = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    raise ProtocolError(f"{part!r} is not a folder in the scratch folder") from exc
                os.close(fd)
                fd = inner
            yield fd
        finally:
            os.close(fd)

    def copy_in(self, relative: str, source: Path) -> None:
        """A new file at `relative` with the content of `source` (outside the folder)."""
        with self._new_file(relative) as dest, source.open("rb") as src:
            shutil.copyfileobj(src, dest, 1 << 20)

    def write_bytes(self, relative: str, data: bytes) -> None:
        with self._new_file(relative) as dest:
            dest.write(data)

    @contextlib.contextmanager
    def _new_file(self, relative: str) -> Iterator[BinaryIO]:
        """A file created at `relative`, never through a link and never over an existing one."""
        parts = PurePosixPath(check_relative(relative)).parts
        with self._folder(parts[:-1], create=True) as folder:
            fd = os.open(
                parts[-1],
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=folder,
            )
            with open(fd, "wb") as dest:
                yield dest

    def list_files(self, relative: str) -> list[str]:
        """Names of the regular files directly in the folder `relative` (none when it is not
        a folder); links and anything else are left out."""
        parts = PurePosixPath(check_relative(relative)).parts
        try:
            with self._folder(parts, create=False) as fd, os.scandir(fd) as entries:
                return sorted(e.name for e in entries if e.is_file(follow_symlinks=False))
        except ProtocolError:
            return []

    def copy_out(self, relative: str, dest: Path, *, max_bytes: int | None = None) -> str:
        """Copy the regular file at `relative` to `dest` (outside the folder); its sha256.
        A file over `max_bytes` is refused (ProtocolError) before more is copied."""
        parts = PurePosixPath(check_relative(relative)).parts
        with self._folder(parts[:-1], create=False) as folder:
            try:
                fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=folder)
            except OSError as exc:
                raise ProtocolError(f"the job's file {relative!r} cannot be read: {exc}") from exc
            with open(fd, "rb") as src:
                if not stat.S_ISREG(os.fstat(src.fileno()).st_mode):
                    raise ProtocolError(f"the job's file {relative!r} is not a regular file")
                dest.parent.mkdir(parents=True, exist_ok=True)
                digest = hashlib.sha256()
                copied = 0
                with dest.open("wb") as out:
                    for block in iter(lambda: src.read(1 << 20), b""):
                        copied += len(block)
                        if max_bytes is not None and copied > max_bytes:
                            raise ProtocolError(
                                f"the job's file {relative!r} is larger than {max_bytes} bytes"
                            )
                        digest.update(block)
                        out.write(block)
        return digest.hexdigest()

    def read_tail(self, relative: str, limit: int = 4000) -> str:
        parts = PurePosixPath(check_relative(relative)).parts
        try:
            with self._folder(parts[:-1], create=False) as folder:
                fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=folder)
                with open(fd, "rb") as src:
                    if not stat.S_ISREG(os.fstat(src.fileno()).st_mode):
                        return ""
                    size = os.fstat(src.fileno()).st_size
                    src.seek(max(0, size - limit))
                    return src.read(limit).decode(errors="replace")
        except (OSError, ProtocolError):
            return ""
