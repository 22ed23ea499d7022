"""Checkpoints: a kill during the final save loses nothing, a corrupt latest checkpoint is skipped."""
import os

import pytest
import torch
from _reliability_data import Records, random_images, register_list, tiny_cfg

from detpre.checkpoint import is_finished
from detpre.engine import Trainer

NAME = "_rel_ckpt_images"


class _Killed(BaseException):
    """What SIGKILL would do to the writer, as far as the files are concerned."""


def _cfg(tmp_path, out):
    paths = random_images(tmp_path / "imgs", 4)
    register_list(NAME, [{"file_name": p, "image_id": i, "height": 48, "width": 56}
                         for i, p in enumerate(paths)])
    return tiny_cfg("fastmoco_R18_tiny.yaml", tmp_path / out, "DATASETS.TRAIN", (NAME,),
                    "INPUT.TWO_VIEW.SIZE", 32, "MODEL.FASTMOCO.HIDDEN_DIM", 32,
                    "MODEL.FASTMOCO.PROJ_DIM", 16, "SOLVER.MAX_ITER", 4, "SOLVER.CHECKPOINT_PERIOD", 2)


def _train(cfg, resume):
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=resume)
    trainer.train()
    return trainer


def test_kill_during_final_save_leaves_no_final_and_resume_finishes(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, "run")
    real_save, calls = torch.save, []

    def dying_save(obj, f, *a, **k):
        calls.append(1)
        if len(calls) == 3:  # model_0000001, model_0000003, then model_final
            f.write(b"PK\x03\x04 half a checkpoint")
            raise _Killed()
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(_Killed):
        _train(cfg, resume=False)
    monkeypatch.setattr(torch, "save", real_save)
    out = cfg.OUTPUT_DIR
    assert not os.path.exists(os.path.join(out, "model_final.pth"))  # never a partial file
    assert open(os.path.join(out, "last_checkpoint")).read() == "model_0000003.pth"
    assert not is_finished(out)
    stale = os.path.join(out, ".model_final.pth.x1y2.tmp")  # what a real SIGKILL leaves
    open(stale, "wb").write(b"junk")
    trainer = _train(cfg, resume=True)
    assert trainer.start_iter == 4  # nothing left to train: only the final file is written
    assert is_finished(out) and not os.path.exists(stale)
    final = torch.load(os.path.join(out, "model_final.pth"), weights_only=False)
    assert final["iteration"] == 3


def test_resume_skips_corrupt_latest_checkpoints(tmp_path):
    cfg = _cfg(tmp_path, "run")
    _train(cfg, resume=False)
    out = cfg.OUTPUT_DIR
    assert is_finished(out)
    open(os.path.join(out, "model_final.pth"), "wb").close()  # 0 bytes: killed mid-write
    with open(os.path.join(out, "model_0000003.pth"), "r+b") as f:
        f.truncate(os.path.getsize(f.name) // 2)  # disk full
    open(os.path.join(out, "last_checkpoint"), "w").close()  # empty
    assert not is_finished(out)
    with Records() as rec:
        trainer = _train(cfg, resume=True)
    assert trainer.start_iter == 2  # from model_0000001.pth, the newest intact one
    assert rec.count("model_final.pth") and rec.count("model_0000003.pth")
    assert rec.count("resuming from " + os.path.join(out, "model_0000001.pth"))
    assert is_finished(out)
