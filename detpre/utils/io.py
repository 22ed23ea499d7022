"""
Atomic writes: every output detpre produces appears whole or not at all (temp file + rename).
``output_lock``: one writer at a time for an output that is built over many steps;
``output_dir_lock``: the same for a folder a run writes (a training's OUTPUT_DIR).
"""
import contextlib
import errno
import json
import os
import socket
import tempfile
import threading

from detpre.errors import DetpreError

__all__ = ["atomic_open", "read_json", "write_bytes_atomic", "write_json_atomic", "output_lock", "OutputLocked",
           "output_dir_lock", "DIR_LOCK_NAME"]


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


def _proc_stat(pid):
    """(state, start time) of ``pid`` from /proc (Linux), else None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # the name in () may hold spaces
        return fields[0], fields[19]
    except (OSError, IndexError):
        return None


def _pid_alive(pid, start=None):
    """``pid`` runs and is the process that wrote ``start`` (its start time, when known: pids
    are reused). A zombie is dead: a killed writer nobody reaped holds nothing."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    stat = _proc_stat(pid)
    if stat is None:
        return True
    return stat[0] not in ("Z", "X") and (not start or stat[1] == start)


def _read_owner(lock):
    try:
        with open(lock) as f:
            info = json.load(f)
        return int(info["pid"]), str(info.get("host", "")), str(info.get("start", "")), info.get("job")
    except (OSError, ValueError, KeyError, TypeError):
        return None, "", "", None


def _slurm_job():
    """[job id, restart count] of this process's Slurm job, or None: a requeued job (same id, one
    more restart) may run on another host, where the previous run's pid cannot be checked."""
    job = os.environ.get("SLURM_JOB_ID", "")
    restarts = os.environ.get("SLURM_RESTART_COUNT", "0")
    return [job, int(restarts)] if job and restarts.isdigit() else None


def _earlier_run_of_this_job(job):
    mine = _slurm_job()
    return bool(mine and isinstance(job, list) and len(job) == 2 and job[0] == mine[0]
                and isinstance(job[1], int) and job[1] < mine[1])


@contextlib.contextmanager
def output_lock(path, what="output", lock=None):
    """
    Hold ``<path>.lock`` (or ``lock``; created with ``O_EXCL``, naming the owner's pid, host, start
    time and Slurm job) while ``path`` is written. A second writer gets ``OutputLocked`` naming the
    owner; a lock left by a dead process of this host, or by an earlier run of this requeued Slurm
    job, is taken over. A lock that is being created (empty) counts as held.
    """
    lock = lock or os.fspath(path) + ".lock"
    os.makedirs(os.path.dirname(os.path.abspath(lock)), exist_ok=True)
    host, me = socket.gethostname(), os.getpid()
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except OSError as e:
            if e.errno != errno.EEXIST:
                raise
            pid, owner_host, start, job = _read_owner(lock)
            # this pid but another start time: a restarted container's earlier process (pid 1 again)
            mine_before = pid == me and start and start != (_proc_stat(me) or ("", ""))[1]
            if pid is not None and ((owner_host == host and pid != me and not _pid_alive(pid, start))
                                    or (owner_host == host and mine_before)
                                    or _earlier_run_of_this_job(job)):
                os.remove(lock)  # stale: its writer died without cleaning up
                continue
            who = f"process {pid} on {owner_host or 'an unknown host'}" if pid else "another process"
            raise OutputLocked(
                f"{path} is being written by {who} (lock file {lock}); wait for it to finish, "
                f"or write this {what} elsewhere. If no such process runs, delete {lock}.") from None
        with os.fdopen(fd, "w") as f:
            json.dump({"pid": me, "host": host, "start": (_proc_stat(me) or ("", ""))[1], "job": _slurm_job()}, f)
        break
    else:
        raise OutputLocked(f"cannot take the lock {lock}: it keeps reappearing")
    try:
        yield lock
    finally:
        if _read_owner(lock)[0] == me:
            os.remove(lock)


DIR_LOCK_NAME = "detpre.lock"
_DIR_LOCKS = {}  # lock file -> [thread id, depth] of the folder locks this process holds
_DIR_LOCKS_GUARD = threading.Lock()


@contextlib.contextmanager
def output_dir_lock(path, what="run"):
    """
    ``output_lock`` on the folder ``path`` (lock file ``path/detpre.lock``), re-entrant in one
    thread: a training's entry point takes it before anything writes OUTPUT_DIR, and the
    trainer it runs takes it again (so a trainer used from Python holds it too).
    """
    lock = os.path.join(os.path.abspath(path), DIR_LOCK_NAME)
    me = threading.get_ident()
    with _DIR_LOCKS_GUARD:
        held = _DIR_LOCKS.get(lock)
        if held is not None and held[0] == me:
            held[1] += 1
    if held is not None and held[0] == me:
        try:
            yield lock
        finally:
            with _DIR_LOCKS_GUARD:
                held[1] -= 1
        return
    if held is not None:
        raise OutputLocked(f"{path} is being written by another thread of this process (lock file "
                           f"{lock}); write this {what} elsewhere")
    with output_lock(path, what, lock=lock):
        with _DIR_LOCKS_GUARD:
            _DIR_LOCKS[lock] = [me, 1]
        try:
            yield lock
        finally:
            with _DIR_LOCKS_GUARD:
                del _DIR_LOCKS[lock]
