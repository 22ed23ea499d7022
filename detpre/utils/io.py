"""
Atomic writes: every output detpre produces appears whole or not at all (temp file + rename).
``output_lock``: one writer at a time for an output that is built over many steps.
"""
import contextlib
import errno
import json
import os
import socket
import tempfile

from detpre.errors import DetpreError

__all__ = ["atomic_open", "read_json", "write_bytes_atomic", "write_json_atomic", "output_lock", "OutputLocked"]


def _umask():
    """The process umask, read without changing it (Linux: /proc), else once at import: reading
    it through ``os.umask`` sets it, which races with threads creating files."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# the mode ``open`` would give a new file; computed once, applied with chmod to the temporary file
_FILE_MODE = 0o666 & ~_umask()


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
            os.fchmod(f.fileno(), _FILE_MODE)  # mkstemp makes 0600; give the usual permissions
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_bytes_atomic(path, data):
    """``data`` (bytes) to ``path``, atomically."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_json_atomic(path, data, **dump_kwargs):
    """``data`` as JSON (``json.dump`` keywords) to ``path``, atomically; same order as
    ``write_bytes_atomic``."""
    with atomic_open(path, "w") as f:
        json.dump(data, f, **dump_kwargs)


class OutputLocked(DetpreError):
    """Another live process is writing the same output."""


def read_json(path):
    """The JSON in ``path``, or None if it is missing or unreadable (e.g. a marker or stamp that
    a killed writer never finished: ``write_json_atomic`` leaves none half-written)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _read_owner(lock):
    try:
        with open(lock) as f:
            info = json.load(f)
        return int(info["pid"]), str(info.get("host", ""))
    except (OSError, ValueError, KeyError, TypeError):
        return None, ""


@contextlib.contextmanager
def output_lock(path, what="output"):
    """
    Hold ``<path>.lock`` (created with ``O_EXCL``, naming the owner's pid and host) while ``path``
    is written. A second writer gets ``OutputLocked`` naming the owner; a lock left by a dead
    process of this host is taken over. A lock that is being created (empty) counts as held.
    """
    lock = os.fspath(path) + ".lock"
    os.makedirs(os.path.dirname(os.path.abspath(lock)), exist_ok=True)
    host, me = socket.gethostname(), os.getpid()
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except OSError as e:
            if e.errno != errno.EEXIST:
                raise
            pid, owner_host = _read_owner(lock)
            if pid is not None and owner_host == host and pid != me and not _pid_alive(pid):
                os.remove(lock)  # stale: its writer died without cleaning up
                continue
            who = f"process {pid} on {owner_host or 'an unknown host'}" if pid else "another process"
            raise OutputLocked(
                f"{path} is being written by {who} (lock file {lock}); wait for it to finish, "
                f"or write this {what} elsewhere. If no such process runs, delete {lock}.") from None
        with os.fdopen(fd, "w") as f:
            json.dump({"pid": me, "host": host}, f)
        break
    else:
        raise OutputLocked(f"cannot take the lock {lock}: it keeps reappearing")
    try:
        yield lock
    finally:
        if _read_owner(lock)[0] == me:
            os.remove(lock)
