"""Atomic file writes, whose files end up with the mode any other new file would get.

``tempfile.mkstemp`` creates its file with mode 0600 (private, for temporary secrets); a file
renamed into place from it would stay unreadable to the user's group and tools. Every atomic
write of the project goes through here: a temporary file in the target's folder with
``0666 & ~umask``, fsynced, then renamed over the target (:func:`atomic_write_bytes`).

>>> import os, tempfile
>>> d = tempfile.mkdtemp()
>>> fd, tmp = temp_beside(os.path.join(d, "out.json"))
>>> os.close(fd)
>>> oct(os.stat(tmp).st_mode & 0o777) == oct(0o666 & ~current_umask())
True
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def current_umask() -> int:
    """The process's umask (reading it needs setting it: set and restored at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temp_beside(path: str | os.PathLike[str]) -> tuple[int, str]:
    """``(fd, name)`` of a new temporary file in ``path``'s folder, mode ``0666 & ~umask``."""
    p = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=str(p.parent))
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
    except OSError:  # a filesystem without modes (some network mounts): keep what it gave
        pass
    return fd, tmp


def usual_mode(path: str | os.PathLike[str]) -> None:
    """Give ``path`` mode ``0666 & ~umask`` (for files a library wrote afresh over our temporary one)."""
    try:
        os.chmod(path, 0o666 & ~current_umask())
    except OSError:
        pass


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder, fsync and rename."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_beside(p)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(p.parent)


def package_data(*parts: str) -> Path:
    """A file shipped in the package's ``data/`` folder, from a checkout or an installed wheel alike.

    >>> package_data("probe_ceilings_smollm2-135m.json").is_file()
    True
    """
    return Path(__file__).resolve().parent.joinpath("data", *parts)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's bytes (hex), read in 1 MiB blocks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
