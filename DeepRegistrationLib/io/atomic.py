"""Write outputs atomically: a failed write never leaves a half-written file or folder behind.

Three guarantees, for every writer of the library (images, transforms, points, reports):

* **Checked before any work**: :func:`check_output_paths` refuses an output that is an input, two
  outputs with one path, a missing or read-only folder, an existing folder as a file path, or an
  unsupported suffix, so a command fails in its first second rather than after the registration.
* **Written whole or not at all**: a writer fills a temporary file beside the target; the file is
  *verified* (:mod:`.integrity`: a full disk makes SimpleITK's NIfTI writer stop without a word, and the
  cut-off file must not be put in place) and only then renamed over the target. Write errors (disk
  full, file too large, permission) become an :class:`~DeepRegistrationLib.errors.OutputError` naming
  the requested path, never the temporary one.
* **All outputs or none**: inside :func:`output_transaction`, every verified file waits beside its
  target until the block ends without an error; then all are renamed together, else all are removed.

Files get the usual mode for new files (``0666`` less the umask), not the ``0600`` of a temporary file.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import InputError, OutputError

__all__ = ["full_suffix", "atomic_output", "atomic_output_dir", "output_transaction", "check_output_paths",
           "remove_temporaries"]

#: Multi-part suffixes that writers recognise (the temporary file must keep them).
_COMPOUND_SUFFIXES = (".nii.gz", ".tar.gz", ".mrk.json")
#: Temporary files are named ``.<target name>.<random>.tmp<suffix>`` (folders ``....tmp``).
_TMP_MARK = ".tmp"


def full_suffix(path: str | os.PathLike) -> str:
    """Lower-case file suffix, keeping compound ones such as ``.nii.gz``."""
    name = Path(path).name.lower()
    for suffix in _COMPOUND_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return Path(name).suffix


# ---------------------------------------------------------------------- checks before any work
def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _check_parent(path: Path) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"cannot write {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {path}: folder {parent} is not writable")


def check_output_paths(outputs: Iterable[tuple[str | os.PathLike | None, Iterable[str] | None]],
                       inputs: Iterable[str | os.PathLike | None] = ()) -> None:
    """Refuse, before any work, outputs that cannot be written.

    Args:
        outputs: ``(path, allowed_suffixes)`` pairs (``None`` paths are skipped; ``None`` suffixes = any).
        inputs: paths the command reads; no output may be one of them.
    """
    seen: dict[Path, str] = {}
    resolved_inputs = {Path(p).resolve(): str(p) for p in inputs if p}
    for path, suffixes in outputs:
        if not path:
            continue
        p = Path(path)
        key = p.resolve()
        if key in resolved_inputs:
            raise OutputError(f"{path}: output would overwrite an input")
        if key in seen:
            raise OutputError(f"{path}: given for two outputs (also {seen[key]}); each output needs its own file")
        seen[key] = str(path)
        if p.is_dir():
            raise OutputError(f"{path}: is a folder; give a file name")
        suffix = full_suffix(p)
        if suffixes is not None and suffix not in set(suffixes):
            raise OutputError(f"{path}: unsupported file type {suffix or '(none)'!r} for this output "
                              f"(use one of {', '.join(sorted(set(suffixes)))})")
        _check_parent(p)


# ---------------------------------------------------------------------- transactions
class _Transaction:
    def __init__(self) -> None:
        self.pending: list[tuple[Path, Path]] = []  # (temporary, target)

    def commit(self) -> None:
        for tmp, target in self.pending:
            os.replace(tmp, target)
        self.pending.clear()

    def discard(self) -> None:
        for tmp, _ in self.pending:
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
        self.pending.clear()


_ACTIVE: contextvars.ContextVar[_Transaction | None] = contextvars.ContextVar("deepreg_output_transaction",
                                                                             default=None)


@contextlib.contextmanager
def output_transaction() -> Iterator[None]:
    """Every file written inside the block appears only when the whole block succeeds (see module docstring)."""
    if _ACTIVE.get() is not None:  # nested: the outer block decides
        yield
        return
    tx = _Transaction()
    token = _ACTIVE.set(tx)
    try:
        yield
        tx.commit()
    finally:
        _ACTIVE.reset(token)
        tx.discard()


def _finish(tmp: Path, target: Path) -> None:
    tx = _ACTIVE.get()
    if tx is not None:
        tx.pending.append((tmp, target))
    else:
        os.replace(tmp, target)


def _write_error(path: Path, err: BaseException) -> OutputError:
    code = getattr(err, "errno", None)
    text = str(err)
    if code in (errno.ENOSPC, errno.EDQUOT) or "No space left" in text:
        reason = "the disk is full"
    elif code == errno.EFBIG or "File too large" in text:
        reason = "the file is too large for this disk or its size limit"
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
        reason = "permission denied"
    else:
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        reason = (lines[-1] if lines else type(err).__name__)[:200]
    return OutputError(f"cannot write {path}: {reason}; nothing was written")


# ---------------------------------------------------------------------- files and folders
@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, verify: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix); on success verify it and move it into place.

    ``verify``: check the written file is complete (:func:`.integrity.check_complete`) before it is used."""
    from .integrity import check_complete

    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; give a file name")
    _check_parent(path)
    suffix = full_suffix(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f"{_TMP_MARK}{suffix}", dir=path.parent)
        os.close(fd)
    except OSError as err:
        raise _write_error(path, err) from None
    tmp_path = Path(tmp)
    done = False
    try:
        try:
            yield tmp_path
        except (OSError, RuntimeError) as err:  # RuntimeError: SimpleITK's writers
            raise _write_error(path, err) from None
        if verify:
            try:
                check_complete(tmp_path)
            except InputError as err:
                raise OutputError(f"cannot write {path}: the written file is incomplete ({err.reason}); the disk "
                                  "may be full; nothing was written") from None
        os.chmod(tmp_path, 0o666 & ~_umask())
        _finish(tmp_path, path)
        done = True
    finally:
        if not done:
            tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_output_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Like :func:`atomic_output` for a folder (e.g. a DICOM series); refuses to replace a non-empty folder."""
    path = Path(path)
    _check_parent(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise OutputError(f"cannot write the folder {path}: it exists and is not an empty folder")
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=_TMP_MARK, dir=path.parent))
    except OSError as err:
        raise _write_error(path, err) from None
    done = False
    try:
        try:
            yield tmp
        except (OSError, RuntimeError) as err:
            raise _write_error(path, err) from None
        os.chmod(tmp, 0o777 & ~_umask())
        if path.exists():
            path.rmdir()
        _finish(tmp, path)
        done = True
    finally:
        if not done and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def remove_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files and folders a killed writer left in ``folder`` (named as
    :func:`atomic_output` names them); returns what was removed."""
    removed = []
    folder = Path(folder)
    for stale in folder.glob(f".*{_TMP_MARK}*") if folder.is_dir() else []:
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
        removed.append(stale)
    return removed
