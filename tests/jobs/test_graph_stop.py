"""A failing task stops the job graph's other tasks at once: their running steps end (SIGINT to
their process groups) instead of training for minutes after the job has already failed."""
import os
import sys
import time

import pytest

from detpre.errors import DetpreError
from detpre.jobs.runner import run_graph, run_logged


def _wait_for(path, text, timeout=60.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.isfile(path) and text in open(path).read():
            return
        time.sleep(0.05)
    raise AssertionError(f"{path}: no {text!r} within {timeout}s")


def test_the_first_failure_stops_a_long_step_and_names_its_task(tmp_path):
    long_log, bad_log, pid_file = str(tmp_path / "long.log"), str(tmp_path / "bad.log"), str(tmp_path / "pid")
    long_cmd = [sys.executable, "-c", f"import os, time; open({pid_file!r}, 'w').write(f'pid {{os.getpid()}}'); "
                "time.sleep(120)"]
    bad_cmd = [sys.executable, "-c", "import sys; print('no such data set'); sys.exit(2)"]

    def proposals():  # fails once the other task's step runs
        _wait_for(pid_file, "pid")
        return run_logged(bad_cmd, bad_log, "soco proposals")

    ended = {}

    def pretrain():
        try:
            return run_logged(long_cmd, long_log, "random init fine-tuning")
        finally:
            ended["at"] = time.time()

    t0 = time.time()
    with pytest.raises(RuntimeError) as e:
        run_graph({("ft", "random init", 0): (pretrain, ()), ("pre", "soco"): (proposals, ()),
                   "never": (lambda: pytest.fail("started after the failure"), ())}, jobs=2)
    failed_at = os.path.getmtime(bad_log)
    msg = str(e.value)
    assert msg.startswith("task pre soco failed: [soco proposals] command failed (exit 2)")
    assert bad_log in msg and "no such data set" in msg
    assert ended["at"] - failed_at < 3.0 and time.time() - t0 < 60  # not the step's 120 s
    pid = int(open(pid_file).read().split()[1])
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_the_error_keeps_its_type():
    def bad():
        raise DetpreError("--dataset 'mine' is not registered")

    with pytest.raises(DetpreError, match="task check failed: --dataset 'mine' is not registered"):
        run_graph({"check": (bad, ())})
