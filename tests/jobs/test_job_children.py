"""
A job's steps never outlive it: kill -9, SIGTERM or Ctrl-C of the runner (detpre.jobs.runner) ends
each step and what it started, and a rerun continues to the uninterrupted result. The runner is a
real separate program; each step is a Python process that appends numbers to a file (resuming
from what it finds) and starts a "worker" in its process group that ignores SIGINT, like a data
loader worker that outlives its step.
"""
import os
import signal
import subprocess
import sys
import time

import pytest

from detpre.jobs.runner import run_logged

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
N = 80  # numbers per step, one every 30 ms

STEP = """
import os, signal, subprocess, sys, time
out, n = sys.argv[1], int(sys.argv[2])
def interrupted(signum, frame):
    open(out + ".sigint", "w").close()
    print("saved, stopping", flush=True)  # what a training prints last: it must reach the log
    sys.exit(130)
signal.signal(signal.SIGINT, interrupted)
worker = subprocess.Popen([sys.executable, "-c",
                           "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); time.sleep(600)"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
with open(out + ".pids.tmp", "w") as f:
    f.write(f"{os.getpid()} {worker.pid}")
os.replace(out + ".pids.tmp", out + ".pids")
done = len(open(out).read().split()) if os.path.exists(out) else 0
for i in range(done, n):
    time.sleep(0.03)
    with open(out, "a") as f:
        f.write(f"{i} ")
"""

RUNNER = """
import sys
from detpre.jobs.runner import run_graph, run_logged
out, step, n, mode = sys.argv[1:]
cmd = lambda k: [sys.executable, step, f"{out}/{k}.txt", n]
if mode == "graph":  # two steps at once, each run_logged in a thread of run_graph
    run_graph({k: (lambda k=k: run_logged(cmd(k), f"{out}/{k}.log", k), ()) for k in "ab"}, jobs=2)
else:  # one step, run_logged in the main thread
    run_logged(cmd("a"), f"{out}/a.log", "a")
print("runner finished", flush=True)
"""


def _alive(pid):
    """Running (a zombie nobody reaped is dead: an orphan's parent may never reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _wait(cond, timeout, what):
    t0 = time.time()
    while not cond():
        if time.time() - t0 > timeout:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.02)
    return time.time() - t0


def _start(tmp_path, out, mode="graph"):
    os.makedirs(out, exist_ok=True)
    (tmp_path / "step.py").write_text(STEP)
    (tmp_path / "runner.py").write_text(RUNNER)
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    log = open(os.path.join(out, "runner.out"), "w")
    # (SIGINT at its default even when the tests run in the background, which ignores it)
    return subprocess.Popen([sys.executable, str(tmp_path / "runner.py"), out, str(tmp_path / "step.py"), str(N), mode],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _running_steps(out, steps="ab"):
    """Waits until the steps run and wrote a few numbers; their (step, worker) pids."""
    paths = [os.path.join(out, f"{k}.txt") for k in steps]
    _wait(lambda: all(os.path.exists(p + ".pids") for p in paths), 120, "the steps start")
    _wait(lambda: all(os.path.exists(p) and len(open(p).read().split()) >= 3 for p in paths), 30, "progress")
    return [tuple(map(int, open(p + ".pids").read().split())) for p in paths]


pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG and /proc: Linux")


def test_kill_9_of_the_runner_kills_its_steps_and_a_rerun_finishes_like_an_uninterrupted_run(tmp_path):
    (tmp_path / "step.py").write_text(STEP)
    ref = tmp_path / "ref"
    os.makedirs(ref)
    run_logged([sys.executable, str(tmp_path / "step.py"), str(ref / "a.txt"), N], str(ref / "a.log"), "ref")
    out = str(tmp_path / "out")
    runner = _start(tmp_path, out)
    pids = _running_steps(out)
    runner.kill()  # SIGKILL: no handler of the runner runs
    runner.wait()
    steps = [p for p, _ in pids]
    took = _wait(lambda: not any(map(_alive, steps)), 5, "the steps die with their runner")
    print(f"steps dead {took:.3f}s after kill -9 of the runner")
    sizes = [os.path.getsize(os.path.join(out, f"{k}.txt")) for k in "ab"]
    time.sleep(0.3)
    assert sizes == [os.path.getsize(os.path.join(out, f"{k}.txt")) for k in "ab"]  # nobody writes on
    assert all(len(open(os.path.join(out, f"{k}.txt")).read().split()) < N for k in "ab")
    for _, worker in pids:
        os.kill(worker, signal.SIGKILL)  # a plain sleep does not watch its parent (torch's workers do)

    rerun = _start(tmp_path, out)
    assert rerun.wait(timeout=180) == 0, open(os.path.join(out, "runner.out")).read()
    expected = (ref / "a.txt").read_text()
    assert expected.split() == [str(i) for i in range(N)]
    assert [open(os.path.join(out, f"{k}.txt")).read() for k in "ab"] == [expected, expected]


@pytest.mark.parametrize("sig,mode", [(signal.SIGINT, "graph"), (signal.SIGTERM, "graph"), (signal.SIGINT, "direct")],
                         ids=["ctrl-c", "sigterm", "ctrl-c-run_logged"])
def test_interrupting_the_runner_ends_each_steps_whole_process_group(tmp_path, sig, mode):
    out = str(tmp_path / "out")
    steps = "ab" if mode == "graph" else "a"
    runner = _start(tmp_path, out, mode)
    pids = _running_steps(out, steps)
    runner.send_signal(sig)  # Ctrl-C reaches only the runner: its steps run in sessions of their own
    rc = runner.wait(timeout=60)
    text = open(os.path.join(out, "runner.out")).read()
    assert rc != 0 and "runner finished" not in text
    assert ("[runner] stopping 2 running step(s)" if mode == "graph" else "[a] stopping") in text, text
    # each step was asked first (SIGINT: a training saves a checkpoint) and its last words were
    # logged, then its group was killed
    for k in steps:
        assert os.path.exists(os.path.join(out, f"{k}.txt.sigint"))
        assert open(os.path.join(out, f"{k}.log")).read().endswith("saved, stopping\n")
    everyone = [pid for pair in pids for pid in pair]
    _wait(lambda: not any(map(_alive, everyone)), 5, "steps and their workers end")


def test_a_stopping_job_starts_no_new_step(tmp_path):
    """Between end_steps' snapshot and the pool's end, a thread moving on to its next step must not
    start it: in its own session the terminal's Ctrl-C would not reach it."""
    from detpre.jobs import runner

    marker = tmp_path / "started"
    runner._STOPPING.set()
    try:
        with pytest.raises(RuntimeError, match="not started: the job is stopping"):
            run_logged([sys.executable, "-c", f"import time; time.sleep(0.5); open({str(marker)!r}, 'w')"],
                       str(tmp_path / "log.txt"), label="late step")
    finally:
        runner._STOPPING.clear()
    time.sleep(1.0)
    assert not marker.exists() and not runner._STEPS
