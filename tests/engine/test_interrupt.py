"""
Ctrl-C of a real ``tools/train_net.py`` run: the step in progress finishes, a checkpoint of it is
saved, one line gives the exact command that resumes, the exit status is 130; the resumed run ends
with the uninterrupted run's weights. A full disk during a save is one line naming the folder and
its free space, and the previous checkpoint is kept.
"""
import errno
import io
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from _reliability_data import REPO, random_images, register_list, tiny_cfg

from detpre.checkpoint import is_finished
from detpre.engine import Trainer
from detpre.errors import DetpreError
from detpre.utils.io import DIR_LOCK_NAME

ITERS = 12


def _train_net(tmp_path, out, name):
    images = str(tmp_path / "imgs")
    if not os.path.isdir(images):
        random_images(images, 8)
    cmd = [sys.executable, os.path.join(REPO, "tools/train_net.py"), "--config-file",
           os.path.join(REPO, "configs/demo/fastmoco_R18_tiny.yaml"),
           "DATASETS.FOLDER", str([["_interrupt_images", images]]), "DATASETS.TRAIN", "('_interrupt_images',)",
           "INPUT.TWO_VIEW.SIZE", "32", "MODEL.FASTMOCO.HIDDEN_DIM", "32", "MODEL.FASTMOCO.PROJ_DIM", "16",
           "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", str(ITERS), "SOLVER.WARMUP_ITERS", "2",
           "SOLVER.CHECKPOINT_PERIOD", "4", "DATALOADER.NUM_WORKERS", "1", "OUTPUT_DIR", out]
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    streams = [open(str(tmp_path / f"{name}.{s}"), "w") for s in ("out", "err")]
    # a session of its own, so the test can send SIGINT to the whole group as a terminal's Ctrl-C does
    # (SIGINT at its default even when the tests run in the background, which ignores it)
    return subprocess.Popen(cmd, cwd=str(tmp_path), env=env, stdout=streams[0], stderr=streams[1],
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _weights(out):
    return torch.load(os.path.join(out, "model_final.pth"), map_location="cpu", weights_only=False)["model"]


def test_ctrl_c_saves_a_checkpoint_prints_the_resume_command_and_the_resumed_run_matches(tmp_path):
    out, ref = str(tmp_path / "out"), str(tmp_path / "ref")
    gone = subprocess.Popen(["true"])
    gone.wait()
    os.makedirs(out)
    with open(os.path.join(out, DIR_LOCK_NAME), "w") as f:  # a killed run's lock: taken over
        f.write(f'{{"pid": {gone.pid}, "host": "{socket.gethostname()}"}}')
    run = _train_net(tmp_path, out, "run")
    uninterrupted = _train_net(tmp_path, ref, "ref")
    t0 = time.time()
    while not os.path.exists(os.path.join(out, "model_0000003.pth")):  # iterations run
        assert run.poll() is None and time.time() - t0 < 300, (tmp_path / "run.err").read_text()[-3000:]
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGINT)  # the trainer and its data loader worker, as Ctrl-C in a terminal
    assert run.wait(timeout=120) == 130, (tmp_path / "run.err").read_text()[-3000:]
    lines = [ln for ln in (tmp_path / "run.err").read_text().splitlines() if ln.startswith("detpre:")]
    assert len(lines) == 1, lines
    m = re.fullmatch(rf"detpre: interrupted after iteration (\d+)/{ITERS}; saved (\S+); resume with: (.+)", lines[0])
    assert m, lines[0]
    done = int(m[1])
    assert 4 <= done < ITERS and m[2] == os.path.join(out, f"model_{done - 1:07d}.pth")
    assert open(os.path.join(out, "last_checkpoint")).read() == f"model_{done - 1:07d}.pth"
    assert not os.path.exists(os.path.join(out, DIR_LOCK_NAME)) and not is_finished(out)
    cmd = shlex.split(m[3])
    assert cmd[:3] == [sys.executable, os.path.join(REPO, "tools/train_net.py"), "--resume"]

    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    resumed = subprocess.run(cmd, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Starting training from iteration {done}" in resumed.stdout + resumed.stderr
    assert uninterrupted.wait(timeout=300) == 0, (tmp_path / "ref.err").read_text()[-3000:]
    a, b = _weights(out), _weights(ref)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class _FullDisk(io.RawIOBase):
    """A file on a disk that fills up after ``room`` bytes."""

    def __init__(self, f, room):
        self.f, self.room = f, room

    def writable(self):
        return True

    def write(self, b):
        if len(b) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(b)
        return self.f.write(b)


def test_a_full_disk_during_a_save_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    paths = random_images(tmp_path / "imgs", 4)
    register_list("_full_disk_images", [{"file_name": p, "image_id": i, "height": 48, "width": 56}
                                        for i, p in enumerate(paths)])
    cfg = tiny_cfg("fastmoco_R18_tiny.yaml", tmp_path / "run", "DATASETS.TRAIN", ("_full_disk_images",),
                   "INPUT.TWO_VIEW.SIZE", 32, "MODEL.FASTMOCO.HIDDEN_DIM", 32, "MODEL.FASTMOCO.PROJ_DIM", 16,
                   "SOLVER.MAX_ITER", 4, "SOLVER.CHECKPOINT_PERIOD", 2)
    out = cfg.OUTPUT_DIR
    real_save, saves = torch.save, []

    def save_on_a_filling_disk(obj, f, *args, **kwargs):
        saves.append(1)
        return real_save(obj, _FullDisk(f, 4096) if len(saves) == 2 else f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_on_a_filling_disk)  # model_0000001 fits, model_0000003 does not
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    with pytest.raises(DetpreError) as e:
        trainer.train()
    msg = str(e.value)
    assert "\n" not in msg and "unexpected pos" not in msg
    assert re.fullmatch(
        rf"cannot write checkpoint {re.escape(out)}/model_0000003.pth: No space left on device \(\d+ MiB free there\); "
        rf"the previous checkpoint {re.escape(out)}/model_0000001.pth is kept; free space on that disk \(or move "
        r"OUTPUT_DIR to one with room\), then resume with --resume", msg), msg
    assert "unexpected pos" in str(e.value.__cause__)  # what torch raised, ENOSPC in its chain
    assert not [n for n in os.listdir(out) if n.endswith(".tmp") or n == DIR_LOCK_NAME]  # no temp file, no lock
    assert open(os.path.join(out, "last_checkpoint")).read() == "model_0000001.pth"

    monkeypatch.setattr(torch, "save", real_save)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=True)  # the kept checkpoint loads
    assert trainer.start_iter == 2
    trainer.train()
    assert is_finished(out)


def test_the_resume_command_adds_resume_before_the_overrides_and_names_the_launcher():
    from detpre.engine.defaults import resume_command
    from detpre.engine.launch import argument_parser

    argv = ["tools/train_net.py", "--config-file", "x.yaml", "OUTPUT_DIR", "out dir"]
    args = argument_parser().parse_args(argv[1:])
    assert resume_command(args, argv, {}) == \
        f"{shlex.quote(sys.executable)} tools/train_net.py --resume --config-file x.yaml OUTPUT_DIR 'out dir'"
    assert argument_parser().parse_args(shlex.split(resume_command(args, argv, {}))[2:]).resume
    again = argument_parser().parse_args(["--resume", *argv[1:]])
    assert resume_command(again, ["tools/train_net.py", "--resume", *argv[1:]], {}).count("--resume") == 1
    torchrun = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2"}
    assert resume_command(args, argv, torchrun).startswith("torchrun --nproc_per_node 2 tools/train_net.py --resume ")
