"""Small file helpers: gzip-transparent reading, all-or-nothing writing, and storage errors as one line.

Every writing command goes through `check_output_path` (before any work) and `atomic_output` / `writing` (while it
writes): a full disk, a quota, a file-size limit, a read-only or forbidden folder becomes one `UserError` naming the
path and what to free or fix, and no temporary file is left behind. Files and folders made here honour the umask
(`mkstemp`/`mkdtemp` create 0600/0700; a run or a model others read must come out as `open()` would make it).
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import io
import os
import re
import resource
import tempfile
import threading
from pathlib import Path
from typing import IO, Iterator

from pyserini_ssm.errors import UserError

# errno -> (what happened, what to do about it). {folder} is the folder being written.
_STORAGE_ERRORS = {
    errno.ENOSPC: ("no space left on the device", "free space on the disk holding {folder} (df -h {folder}) or "
                   "write elsewhere"),
    errno.EDQUOT: ("disk quota exceeded", "free space within your quota on {folder} (quota -s) or write elsewhere"),
    errno.EFBIG: ("file too large for the file-size limit", "raise the limit (ulimit -f unlimited) or write elsewhere"),
    errno.EROFS: ("read-only file system", "write to a writable folder (or remount {folder} read-write)"),
    errno.EACCES: ("permission denied", "give yourself access to {folder} (chmod/chown) or use another folder"),
    errno.EPERM: ("operation not permitted", "give yourself access to {folder} (chattr -i, chmod) or use another "
                  "folder"),
}
STORAGE_ERRNOS = frozenset(_STORAGE_ERRORS)
# What a write (not an open) can fail with: space and size.
SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_umask_lock = threading.Lock()


def storage_error_message(error: OSError, path: str | os.PathLike | None = None, *, verb: str = "write") -> str | None:
    """One line for an OSError of full/read-only/forbidden storage naming the path and the fix; None for others."""
    if error.errno not in _STORAGE_ERRORS:
        return None
    what, fix = _STORAGE_ERRORS[error.errno]
    target = Path(path) if path is not None else Path(error.filename) if error.filename else None
    if target is None:
        return f"cannot {verb}: {what}; {fix.format(folder='the output folder')}"
    folder = target if target.is_dir() else target.parent
    return f"cannot {verb} {target}: {what}; {fix.format(folder=folder or '.')}"


@contextlib.contextmanager
def writing(path: str | os.PathLike | None = None, errnos: frozenset[int] = STORAGE_ERRNOS) -> Iterator[None]:
    """Turn a storage OSError (disk full, quota, file-size limit, read-only, permission; those of `errnos`) raised
    inside the block into a one-line `UserError` naming `path`; other errors pass through unchanged."""
    try:
        yield
    except Exception as error:  # noqa: BLE001  (libraries wrap OSError: see `storage_errno`)
        code = storage_errno(error, path)
        if code not in errnos:
            raise
        raise UserError(storage_error_message(OSError(code, os.strerror(code)), path)) from None


_OS_ERROR_IN_TEXT = re.compile(r"os error (\d+)")


def storage_errno(error: BaseException, path: str | os.PathLike | None = None) -> int | None:
    """The errno of a storage failure, also where a library hides it: safetensors raises SafetensorError('... I/O
    error: File too large (os error 27)'); torch.save a RuntimeError('... unexpected pos N vs M') for any short
    write, whose cause is then read from the disk's free space and the file-size limit."""
    if isinstance(error, OSError):
        return error.errno
    text = str(error)
    match = _OS_ERROR_IN_TEXT.search(text)
    if match:
        return int(match.group(1))
    if "unexpected pos" in text and path is not None:
        folder = Path(path) if Path(path).is_dir() else Path(path).parent
        with contextlib.suppress(OSError):
            stats = os.statvfs(folder or ".")
            if stats.f_bavail * stats.f_frsize < (1 << 20):
                return errno.ENOSPC
        if resource.getrlimit(resource.RLIMIT_FSIZE)[0] != resource.RLIM_INFINITY:
            return errno.EFBIG
        return errno.ENOSPC
    return None


def current_umask() -> int:
    """The process umask (read by setting and restoring it, under a lock: there is no getter)."""
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def honour_umask(path: str | os.PathLike) -> None:
    """Give a file made by mkstemp (0600) or a folder made by mkdtemp (0700) the mode `open`/`mkdir` would give."""
    base = 0o777 if os.path.isdir(path) else 0o666
    os.chmod(path, base & ~current_umask())


def make_temporary_folder(parent: str | os.PathLike, prefix: str) -> Path:
    """A fresh folder inside `parent` (to rename into place when complete), with the umask's mode."""
    with writing(parent):
        folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        honour_umask(folder)
    return folder


def open_text(path: str | os.PathLike) -> IO[str]:
    """Open a text file for reading, gunzipping when the name ends in .gz. Missing files are a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"file not found: {path}")
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def check_output_folder(folder: str | os.PathLike, flag: str = "--output") -> Path:
    """Fail early when files cannot be created in `folder` (missing, read-only, not writable for this user)."""
    folder = Path(folder) if str(folder) else Path(".")
    if not folder.is_dir():
        raise UserError(f"output folder does not exist: {folder} (create it first, or choose another {flag})")
    if not os.access(folder, os.W_OK | os.X_OK):  # EROFS even for root; permission bits for others
        cause = "read-only file system" if _is_read_only_mount(folder) else "permission denied"
        raise UserError(f"cannot write in {folder}: {cause}; choose another {flag} or make {folder} writable")
    return folder


def _is_read_only_mount(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def check_output_path(path: str | os.PathLike) -> Path:
    """Fail early, before any work, when an output file cannot be created where the user asked."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"output path is a folder: {path} (give a file name)")
    check_output_folder(path.parent if str(path.parent) else Path("."))
    return path


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Write to a temporary file beside `path` and rename it into place only if the block completes.

    A crash or an error midway leaves no half-written file behind (and an older complete file untouched); a full
    disk or a read-only folder is a one-line `UserError` (see `writing`). The file gets the umask's mode.
    """
    path = check_output_path(path)
    temporary = None
    try:
        with writing(path):
            descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp",
                                                     dir=path.parent or ".")
        # Inside the block only space errors are ours to name: a permission error there may be about another file.
        with writing(path, SPACE_ERRNOS):
            with os.fdopen(descriptor, mode, encoding=None if "b" in mode else "utf-8") as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
        with writing(path):
            honour_umask(temporary)
            os.replace(temporary, path)
    except BaseException:
        if temporary is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
        raise
