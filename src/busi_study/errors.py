"""Errors a user can act on: each carries a one-line message that says what to do.

The command lines (``run_all.py``, ``python -m busi_study …``) catch :class:`StudyError` and
print ``error: <message>`` on one line with exit code 2 (:data:`EXIT_USER_ERROR`); any other exception is a bug and keeps
its traceback. :func:`from_os_error` turns the operating system's foreseeable write failures
(no space, read-only file system, no permission, missing folder) into a ``StudyError`` at the
places where the study writes files.
"""

from __future__ import annotations

import errno
from pathlib import Path

#: Exit codes of every command line: 0 done, 1 a notebook or a step failed (its output is kept),
#: 2 a foreseeable problem reported as one ``error: …`` line.
EXIT_OK, EXIT_FAILED, EXIT_USER_ERROR = 0, 1, 2


def first_line(exc: BaseException | str, limit: int = 160) -> str:
    """The first non-empty line of an exception's message (or of a text), stripped and cut to
    ``limit`` characters with "…"; the exception's type name when it has no message."""
    text = str(exc).strip()
    line = text.splitlines()[0].strip() if text else ""
    if not line:
        line = type(exc).__name__ if isinstance(exc, BaseException) else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


class StudyError(RuntimeError):
    """An expected problem (missing data, offline, bad file, bad parameter).

    The runner prints ``str(error)`` as one line instead of a traceback.
    """

    def __str__(self) -> str:  # always one line, whatever the message was built from
        text = super().__str__()
        return " ".join(text.split()) if "\n" in text else text


class DataSourceError(StudyError):
    """The data could not be found, downloaded or unpacked."""


class ParameterError(StudyError):
    """A profile or command-line parameter is unknown or invalid."""


class ModelFileError(StudyError):
    """An exported model file is missing, corrupt or not one of the study's models."""


class ProvenanceError(StudyError):
    """A notebook or a carried-over result would read data or splits of another run."""


class StorageError(StudyError):
    """A file could not be written: no space, read-only file system, no permission."""


# errno → (what is wrong, what to do)
_OS_REASONS = {
    errno.ENOSPC: ("no space left on the device", "free some space or write elsewhere (--reports-dir / --data-dir / --out)"),
    errno.EDQUOT: ("disk quota exceeded", "free some space or write elsewhere (--reports-dir / --data-dir / --out)"),
    errno.EROFS: ("the file system is read-only", "write to a writable folder (--reports-dir / --data-dir / --out)"),
    errno.EACCES: ("permission denied", "make the folder writable or write elsewhere (--reports-dir / --data-dir / --out)"),
    errno.EPERM: ("operation not permitted", "make the folder writable or write elsewhere (--reports-dir / --data-dir / --out)"),
    errno.ENOENT: ("the folder does not exist", "create it first or choose an existing folder"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "choose another path"),
}

FORESEEABLE_ERRNOS = frozenset(_OS_REASONS)
#: failures to write that are the user's situation, never a bug (no space, read-only, no permission)
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


def from_os_error(exc: OSError, path: Path | str | None = None, action: str = "write") -> StorageError | None:
    """A one-line :class:`StorageError` for a foreseeable ``OSError``; None for anything else."""
    reason = _OS_REASONS.get(getattr(exc, "errno", None))
    if reason is None:
        return None
    where = path if path is not None else exc.filename
    target = f"{action} {where}" if where else f"{action} a file"
    return StorageError(f"cannot {target}: {reason[0]} — {reason[1]}")
