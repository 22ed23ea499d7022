"""
One run writes an OUTPUT_DIR at a time: a second training stops with one line naming the first
(pid, host, lock file) before it writes anything; a lock of a dead process (exited, a zombie, or
its pid reused by another process) is taken over.
"""
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
from _reliability_data import REPO, random_images, register_list, tiny_cfg

from detpre.engine import Trainer
from detpre.utils.io import DIR_LOCK_NAME, OutputLocked, output_dir_lock

HOST = socket.gethostname()


def _lock_of(pid, out, start=None):
    os.makedirs(out, exist_ok=True)
    info = {"pid": pid, "host": HOST, **({"start": start} if start else {})}
    with open(os.path.join(out, DIR_LOCK_NAME), "w") as f:
        json.dump(info, f)


def _stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def _start_time(pid):
    return _stat(pid)[19]


def test_second_train_net_on_a_locked_output_dir_stops_with_one_line(tmp_path):
    out = str(tmp_path / "out")
    os.makedirs(out)
    (tmp_path / "out" / "config.yaml").write_text("the first run's config\n")
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    cmd = [sys.executable, os.path.join(REPO, "tools/train_net.py"), "--config-file",
           os.path.join(REPO, "configs/demo/fastmoco_R18_tiny.yaml"), "OUTPUT_DIR", out]
    with output_dir_lock(out, "training") as lock:  # the first run: this process
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert lock == os.path.join(out, DIR_LOCK_NAME)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert r.stderr.strip().splitlines()[-1] == (
        f"detpre: error: {out} is being written by process {os.getpid()} on {HOST} (lock file {lock}); "
        f"wait for it to finish, or write this training elsewhere. If no such process runs, delete {lock}.")
    assert (tmp_path / "out" / "config.yaml").read_text() == "the first run's config\n"  # untouched
    assert sorted(os.listdir(out)) == ["config.yaml"]  # no log.txt, and the lock went with its owner


def test_self_train_on_a_locked_output_stops_with_one_line(tmp_path):
    out = str(tmp_path / "st")
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        _lock_of(sleeper.pid, out)
        env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
        r = subprocess.run([sys.executable, os.path.join(REPO, "tools/self_train.py"), "--teacher-config", "t.yaml",
                            "--student-config", "s.yaml", "--output", out], env=env, capture_output=True, text=True,
                           timeout=300)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert r.stderr.strip().splitlines()[-1].startswith(
        f"detpre: error: {out} is being written by process {sleeper.pid} on {HOST}")


def test_the_lock_is_reentrant_in_its_thread_and_refused_to_others(tmp_path):
    out = str(tmp_path / "out")
    refused = []

    def other():
        try:
            with output_dir_lock(out):
                pass
        except OutputLocked as e:
            refused.append(str(e))

    with output_dir_lock(out) as lock:
        with output_dir_lock(out):  # a trainer inside tools/train_net.py's main
            assert os.path.exists(lock)
        assert os.path.exists(lock)
        t = threading.Thread(target=other)
        t.start()
        t.join()
    assert not os.path.exists(lock)
    assert len(refused) == 1 and "another thread of this process" in refused[0]


def test_locks_of_dead_zombie_and_reused_pids_are_taken_over(tmp_path):
    out = str(tmp_path / "out")
    gone = subprocess.Popen(["true"])
    gone.wait()
    _lock_of(gone.pid, out)
    with output_dir_lock(out) as lock:
        assert json.load(open(lock))["pid"] == os.getpid()

    zombie = subprocess.Popen(["true"])  # exited, not reaped: a killed run whose parent never waits
    while _stat(zombie.pid)[0] != "Z":
        time.sleep(0.01)
    _lock_of(zombie.pid, out)
    with output_dir_lock(out):
        pass
    zombie.wait()

    live = subprocess.Popen(["sleep", "60"])
    try:
        _lock_of(live.pid, out, start=str(int(_start_time(live.pid)) - 1))  # the pid now names another process
        with output_dir_lock(out):
            pass
        _lock_of(live.pid, out, start=_start_time(live.pid))  # the owner itself
        with pytest.raises(OutputLocked, match=rf"is being written by process {live.pid} on {HOST}"):
            with output_dir_lock(out):
                pass
    finally:
        live.kill()
        live.wait()

    # this very pid, started earlier: a restarted container's previous run (pid 1 again, same host)
    _lock_of(os.getpid(), out, start=str(int(_start_time(os.getpid())) - 1))
    with output_dir_lock(out) as lock:
        assert json.load(open(lock))["start"] == _start_time(os.getpid())


def test_a_trainer_used_from_python_holds_the_lock_while_it_trains(tmp_path):
    paths = random_images(tmp_path / "imgs", 4)
    register_list("_lock_images", [{"file_name": p, "image_id": i, "height": 48, "width": 56}
                                   for i, p in enumerate(paths)])
    cfg = tiny_cfg("fastmoco_R18_tiny.yaml", tmp_path / "run", "DATASETS.TRAIN", ("_lock_images",),
                   "INPUT.TWO_VIEW.SIZE", 32, "MODEL.FASTMOCO.HIDDEN_DIM", 32, "MODEL.FASTMOCO.PROJ_DIM", 16,
                   "SOLVER.MAX_ITER", 1)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        _lock_of(sleeper.pid, cfg.OUTPUT_DIR)
        with pytest.raises(OutputLocked, match=rf"{cfg.OUTPUT_DIR} is being written by process {sleeper.pid}"):
            trainer.train()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not os.path.exists(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"))
    trainer.train()  # its owner is dead: taken over, and released at the end
    assert os.path.exists(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"))
    assert not os.path.exists(os.path.join(cfg.OUTPUT_DIR, DIR_LOCK_NAME))


def test_a_requeued_slurm_job_takes_over_its_earlier_runs_lock_from_another_host(tmp_path, monkeypatch):
    out = str(tmp_path / "out")
    os.makedirs(out)
    lock = os.path.join(out, DIR_LOCK_NAME)
    with open(lock, "w") as f:  # killed on preemption, on a node this one cannot look into
        json.dump({"pid": 4242, "host": "node-17", "start": "1", "job": ["981", 0]}, f)
    monkeypatch.setenv("SLURM_JOB_ID", "981")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    with pytest.raises(OutputLocked, match="process 4242 on node-17"):  # the same run: cannot tell
        with output_dir_lock(out):
            pass
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # requeued
    with output_dir_lock(out):
        assert json.load(open(lock))["job"] == ["981", 1]
