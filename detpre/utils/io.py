"""Atomic writes: every output detpre produces appears whole or not at all (temp file + rename)."""
import contextlib
import json
import os
import tempfile

__all__ = ["atomic_open", "write_bytes_atomic", "write_json_atomic"]


@contextlib.contextmanager
def atomic_open(path, mode="wb"):
    """``open`` a temporary file next to ``path``; on success it is synced and renamed to ``path``,
    on error it is removed and ``path`` keeps its old content."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_bytes_atomic(path, data):
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_json_atomic(data, path, **dump_kwargs):
    with atomic_open(path, "w") as f:
        json.dump(data, f, **dump_kwargs)
