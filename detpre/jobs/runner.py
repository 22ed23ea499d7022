"""
The job runner: each step runs the command a user would type in a subprocess, appends its
output to a log, prints a progress line (iteration/total, ETA) at least every ``PROGRESS_S``
seconds, is skipped when its output is finished and resumes (``--resume``) when it was killed.
Tools and configs are found relative to the package, so a job runs from any directory.

A step never outlives its job: it runs in a process group of its own (the command and its data
loader workers), which the runner ends when the job is interrupted (Ctrl-C, SIGTERM: SIGINT first,
so a training saves a checkpoint, SIGKILL after ``STOP_GRACE_S``), and on Linux the step gets
SIGKILL when the runner dies, kill -9 included (``PR_SET_PDEATHSIG``).
"""
import contextlib
import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, Hashable, List, Optional, Sequence, Tuple

from detpre.checkpoint import is_finished

__all__ = ["REPO_ROOT", "repo_path", "tool_command", "run_logged", "run_parallel", "run_graph", "is_finished",
           "final_evaluation", "evaluate_weights", "end_steps",
           "train", "metrics_records", "final_metrics", "PROGRESS_S", "STOP_GRACE_S"]

REPO_ROOT = Path(__file__).resolve().parents[2]
PROGRESS_S = 20.0
STOP_GRACE_S = 20.0  # a training interrupted by SIGINT finishes its step and saves a checkpoint
_PRINT_LOCK = threading.Lock()
_STEPS = {}  # Popen -> label: the steps this process runs now, in every thread
_STEPS_LOCK = threading.Lock()
# set while an interrupted job ends its steps: a pool thread between two steps starts no new one
# (in its own session, the terminal's Ctrl-C would not reach it, and the job would wait for it)
_STOPPING = threading.Event()
_D2_LINE = re.compile(r"eta: (?P<eta>\S+)\s+iter: (?P<iter>\d+)\s+total_loss: (?P<loss>\S+)")


def repo_path(path: str) -> str:
    """``path`` as given when it exists (relative to the current directory), else relative to
    the repository (``configs/...`` from anywhere)."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return str(p)
    return str(REPO_ROOT / p)


def tool_command(tool: str, *args: Any) -> List[str]:
    """``python tools/<tool>.py args...`` with this interpreter and the repository's tools/."""
    return [sys.executable, str(REPO_ROOT / "tools" / f"{tool}.py"), *map(str, args)]


def say(msg: str) -> None:
    with _PRINT_LOCK:
        print(msg, flush=True)


def _load_prctl():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()
_PDEATHSIG_ARGS = tuple(ctypes.c_ulong(v) for v in (1, int(signal.SIGKILL), 0, 0, 0))  # PR_SET_PDEATHSIG


def _dies_with_runner():
    """``preexec_fn``: the step's SIGINT back to its default (the runner ends steps with it, and a
    job started in the background, ``make demo &``, passes its steps an ignored SIGINT); on Linux,
    SIGKILL to the step when the thread that started it ends, i.e. the runner dies (run_logged's
    thread waits for the step while it runs); a runner that died before the call is seen by the
    step's parent pid changing. Arguments are built before the fork."""
    runner = os.getpid()

    def preexec():
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if _PRCTL is not None:
            _PRCTL(*_PDEATHSIG_ARGS)
            if os.getppid() != runner:
                os._exit(137)
    return preexec


def _signal_group(proc, sig):
    try:
        os.killpg(proc.pid, sig)  # the step's session: it and its data loader workers
    except (ProcessLookupError, PermissionError):
        pass


def end_steps(procs: Optional[Sequence[subprocess.Popen]] = None, grace: float = STOP_GRACE_S) -> None:
    """
    End ``procs`` (default: every step this process runs): SIGINT to each one's process group (a
    training finishes its step and saves a checkpoint of it), SIGKILL to what is left after
    ``grace`` seconds, or at once on a second Ctrl-C.
    """
    if procs is None:
        with _STEPS_LOCK:
            procs = list(_STEPS)
    procs = [p for p in procs if p.poll() is None]
    if not procs:
        return
    say(f"[runner] stopping {len(procs)} running step(s) (up to {grace:.0f}s for checkpoints; Ctrl-C again "
        "to kill them now)")
    try:
        for p in procs:
            _signal_group(p, signal.SIGINT)
        deadline = time.time() + grace
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(max(0.0, deadline - time.time()))
    finally:
        for p in procs:
            _signal_group(p, signal.SIGKILL)


def _stop_and_drain(proc, log, label):
    """``end_steps`` for one step whose output this thread reads: its last lines (the checkpoint
    of a training, how to resume) still go to ``log`` while it stops."""
    if proc.poll() is not None:
        return
    say(f"[{label}] stopping (up to {STOP_GRACE_S:.0f}s for a checkpoint; Ctrl-C again to kill it now)")
    killer = threading.Timer(STOP_GRACE_S, _signal_group, (proc, signal.SIGKILL))
    killer.daemon = True
    killer.start()
    try:
        _signal_group(proc, signal.SIGINT)
        with contextlib.suppress(Exception):  # e.g. the log's disk is full: stop writing it
            for line in proc.stdout:
                log.write(line)
    finally:
        killer.cancel()


class _Terminated(SystemExit):
    """SIGTERM, turned into an exception so the runner ends its steps before it exits."""


def _raise_terminated(signum, frame):
    raise _Terminated(128 + signum)


@contextlib.contextmanager
def _sigterm_raises():
    """SIGTERM raises ``SystemExit(143)`` in the main thread while the body runs (unless the
    program handles SIGTERM itself), so the runner ends its steps like on Ctrl-C."""
    installed = (threading.current_thread() is threading.main_thread()
                 and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)
    if installed:
        signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        if installed:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def _ends_steps_on_interrupt():
    try:
        yield
    except (KeyboardInterrupt, SystemExit):
        _STOPPING.set()
        end_steps()
        raise


@contextlib.contextmanager
def _new_steps_allowed_after():
    """Around a job's thread pool: once its threads are done, steps may start again (tests, or a
    program that catches the interrupt and goes on)."""
    try:
        yield
    finally:
        _STOPPING.clear()


def run_logged(cmd: Sequence[Any], log: str, label: str = "", total_iter: Optional[int] = None,
               threads: Optional[int] = None) -> float:
    """
    Run ``cmd`` with its output appended to ``log``; print detectron2's progress as
    ``[label] iter i/total, eta`` at most every ``PROGRESS_S`` seconds. ``threads`` sets
    OMP_NUM_THREADS for the command (two parallel runs on 2 cores: 1 each). Returns seconds;
    raises with the log's last lines when the command fails. The command runs in a session of
    its own that ends with it, and with the job (module docstring).
    """
    cmd = [str(c) for c in cmd]
    os.makedirs(os.path.dirname(os.path.abspath(log)), exist_ok=True)
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    label = label or os.path.basename(cmd[1] if cmd[0] == sys.executable else cmd[0])
    shown = [c for c in (cmd[1:] if cmd[0] == sys.executable else cmd)]
    say(f"[{label}] $ {' '.join(os.path.relpath(c) if c.startswith(str(REPO_ROOT)) else c for c in shown)}")
    t0 = last = time.time()
    with open(log, "a") as f, _sigterm_raises():
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=env, bufsize=1, start_new_session=True,
                                preexec_fn=_dies_with_runner())
        with _STEPS_LOCK:
            refused = _STOPPING.is_set()
            if not refused:
                _STEPS[proc] = label
        if refused:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()
            raise RuntimeError(f"[{label}] not started: the job is stopping")
        try:
            for line in proc.stdout:
                f.write(line)
                m = _D2_LINE.search(line)
                if m and time.time() - last >= 0.75 * PROGRESS_S:  # the trainer writes every ~20 s
                    last = time.time()
                    it = int(m["iter"]) + 1
                    of = f"/{total_iter}" if total_iter else ""
                    say(f"[{label}] iter {it}{of}, loss {m['loss']}, eta {m['eta']}, {last - t0:.0f}s so far")
            rc = proc.wait()
        except BaseException:  # Ctrl-C / SIGTERM while this (main) thread waits, or the log failed
            _stop_and_drain(proc, f, label)
            raise
        finally:
            with _STEPS_LOCK:
                del _STEPS[proc]
            _signal_group(proc, signal.SIGKILL)  # what the step left behind (its workers)
    if rc != 0:
        with open(log) as f:
            tail = "".join(f.readlines()[-30:])
        raise RuntimeError(f"[{label}] command failed (exit {rc}); last lines of {log}:\n{tail}")
    sec = time.time() - t0
    say(f"[{label}] done in {sec:.0f}s")
    return sec


def run_parallel(fns: Sequence[Callable[[], Any]], jobs: int = 1) -> List[Any]:
    """Call each of ``fns`` (no arguments) with at most ``jobs`` at once; their results in order."""
    return list(run_graph({i: (fn, ()) for i, fn in enumerate(fns)}, jobs).values())


def _task_name(key: Hashable) -> str:
    return " ".join(map(str, key)) if isinstance(key, tuple) else str(key)


def _naming_task(e: BaseException, key: Hashable) -> BaseException:
    """``e`` itself, its message led by the task that raised it (a step's message names its log), so
    that callers' ``except`` clauses and the exception's attributes stay as they were."""
    if isinstance(e, Exception) and e.args and isinstance(e.args[0], str):
        e.args = (f"task {_task_name(key)} failed: {e.args[0]}", *e.args[1:])
    return e


def run_graph(tasks: Dict[Hashable, Tuple[Callable[..., Any], Sequence[Hashable]]],
              jobs: int = 1) -> Dict[Hashable, Any]:
    """
    ``tasks``: ``{key: (fn, deps)}`` in priority order; ``fn(*results of deps)`` runs once its
    deps are done, with at most ``jobs`` running at once, so a core never idles while some task
    is ready (the demo fine-tunes from random init while SoCo still pretrains). Returns
    ``{key: result}`` in the order of ``tasks``. The first failure ends the other tasks' running
    steps at once (``end_steps``: a training saves a checkpoint, so a rerun resumes it) rather than
    letting them train for nothing, starts no new task or step, and is raised naming its task once
    the running tasks return (a task computing in this process is not interrupted).
    """
    import concurrent.futures as cf

    done, running, failed = {}, {}, []
    pending = dict(tasks)
    # Ctrl-C / SIGTERM reach this (main) thread: the steps end before the pool waits for its threads
    with _new_steps_allowed_after(), ThreadPoolExecutor(max_workers=max(1, jobs)) as pool, \
            _sigterm_raises(), _ends_steps_on_interrupt():
        while pending or running:
            if not failed:
                for key, (fn, deps) in list(pending.items()):
                    if len(running) >= max(1, jobs):
                        break
                    if all(d in done for d in deps):
                        del pending[key]
                        running[pool.submit(fn, *[done[d] for d in deps])] = key
            if not running:
                break
            finished, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for f in finished:
                key = running.pop(f)
                if f.exception() is None:
                    done[key] = f.result()
                elif not failed:  # later failures are mostly the steps stopped here
                    failed.append(_naming_task(f.exception(), key))
                    say(f"[runner] task {_task_name(key)} failed; stopping the other tasks")
                    _STOPPING.set()
                    end_steps()
    if failed:
        raise failed[0]
    if pending:
        raise ValueError(f"run_graph: tasks {sorted(map(str, pending))} depend on unknown tasks")
    return {k: done[k] for k in tasks}


def train(config: str, out_dir: str, opts: Sequence[Any] = (), label: str = "", threads: Optional[int] = None,
          log_name: str = "log_job.txt") -> Optional[float]:
    """``tools/train_net.py --config-file config --resume OUTPUT_DIR out_dir opts``; returns
    seconds, or None when the run had finished before (skipped)."""
    from detpre.config import get_detpre_cfg

    if is_finished(out_dir):
        say(f"[{label or out_dir}] finished before: {out_dir}")
        return None
    config = repo_path(config)
    opts = [str(o) for o in opts]
    total = get_detpre_cfg(config, opts).SOLVER.MAX_ITER
    cmd = tool_command("train_net", "--config-file", config, "--resume", "OUTPUT_DIR", out_dir, *opts)
    return run_logged(cmd, os.path.join(out_dir, log_name), label, total, threads)


def metrics_records(out_dir: str) -> List[Dict[str, Any]]:
    """Every record of ``out_dir/metrics.json`` (detectron2's JSONWriter), [] when absent."""
    path = os.path.join(out_dir, "metrics.json")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def final_metrics(out_dir: str) -> Dict[str, Any]:
    """The last evaluation record (one with ``bbox/AP``) in ``out_dir/metrics.json``, or {}."""
    found = {}
    for r in metrics_records(out_dir):
        if "bbox/AP" in r:
            found = r
    return found


_EVAL_LOCK = threading.Lock()  # evaluations in this process: one at a time (data set registration)


def evaluate_weights(cfg, weights: str) -> Dict[str, Any]:
    """AP of ``weights`` on ``cfg``'s DATASETS.TEST with its trainer's evaluators, in this process,
    flattened as the trainer's metrics.json has it (``bbox/AP``, ``segm/AP``, ...)."""
    from detpre.checkpoint import DetpreCheckpointer
    from detpre.data.datasets import register_from_config
    from detpre.engine.defaults import trainer_class

    with _EVAL_LOCK:
        register_from_config(cfg)
        trainer_cls = trainer_class(cfg)
        model = trainer_cls.build_model(cfg)
        DetpreCheckpointer(model).load(weights)  # read without running code (safe_load)
        res = trainer_cls.test(cfg, model)
    return {f"{task}/{k}": v for task, d in res.items() for k, v in d.items()}


def final_evaluation(config: str, out_dir: str, opts: Sequence[Any] = ()) -> Dict[str, Any]:
    """
    The end-of-training evaluation of the finished run ``config`` + ``opts`` in ``out_dir``. A run
    killed during that evaluation has its final checkpoint (so it counts as finished) but no
    evaluation record: then ``model_final.pth`` is evaluated here, and the record is appended to
    ``metrics.json`` as the trainer would have written it. {} for an unfinished run.
    """
    from detpre.config import get_detpre_cfg

    cfg = get_detpre_cfg(repo_path(config), [str(o) for o in opts] + ["OUTPUT_DIR", out_dir])
    found = final_metrics(out_dir)
    # a periodic evaluation (TEST.EVAL_PERIOD) before the kill is not the final one
    final = found.get("iteration", -1) >= cfg.SOLVER.MAX_ITER - 1
    if final or not is_finished(out_dir):
        return found if final else {}
    if not cfg.DATASETS.TEST:
        return {}
    from detpre.utils.io import atomic_open

    say(f"[{out_dir}] finished without its final evaluation (killed during it?): evaluating model_final.pth")
    record = {"iteration": cfg.SOLVER.MAX_ITER,  # where detectron2's writer puts the final evaluation
              **evaluate_weights(cfg, os.path.join(out_dir, "model_final.pth"))}
    path = os.path.join(out_dir, "metrics.json")
    old = open(path).read() if os.path.isfile(path) else ""
    with atomic_open(path, "w") as f:
        f.write(old + ("" if not old or old.endswith("\n") else "\n") + json.dumps(record) + "\n")
    return record
