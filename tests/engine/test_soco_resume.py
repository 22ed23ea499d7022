"""Kill and --resume: a SoCo run resumed from its mid-way checkpoint ends with the uninterrupted weights."""
import os
import shutil

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from PIL import Image

import detpre.data.mappers.soco  # noqa: F401  (registers SoCoMapper)
import detpre.modeling.meta_arch.soco  # noqa: F401  (registers SoCo)
from detpre.config import get_detpre_cfg
from detpre.data.proposals import write_proposal_file
from detpre.engine import Trainer

NAME = "detpre_test_soco_resume"


def _dataset(tmp_path):
    rng = np.random.RandomState(0)
    dicts, boxes = [], []
    for i in range(6):
        path = str(tmp_path / f"im{i}.png")
        Image.fromarray(rng.randint(0, 256, (72, 88, 3), dtype=np.uint8)).save(path)
        dicts.append({"file_name": path, "image_id": i, "height": 72, "width": 88})
        x0, y0 = rng.uniform(0, 40, size=(2, 5))
        boxes.append(np.stack([x0, y0, x0 + 30, y0 + 25], axis=1))
    props = str(tmp_path / "props.pkl")
    write_proposal_file(props, [d["image_id"] for d in dicts], boxes)
    if NAME in DatasetCatalog.list():
        DatasetCatalog.remove(NAME)
    DatasetCatalog.register(NAME, lambda: [dict(d) for d in dicts])
    return props


def _cfg(repo_root, props, out, extra=()):
    cfg = get_detpre_cfg()
    cfg.merge_from_file(os.path.join(repo_root, "configs/demo/soco_R18_FPN_tiny.yaml"))
    cfg.merge_from_list([
        "DATASETS.TRAIN", (NAME,), "DATASETS.PROPOSAL_FILES_TRAIN", (props,),
        "INPUT.SOCO.VIEW_SIZE", 64, "INPUT.SOCO.SMALL_VIEW_SIZE", 32, "MODEL.SOCO.CANONICAL_BOX_SIZE", 24,
        "MODEL.SOCO.HIDDEN_DIM", 32, "MODEL.SOCO.PROJ_DIM", 16, "SOLVER.IMS_PER_BATCH", 2,
        "SOLVER.MAX_ITER", 4, "SOLVER.CHECKPOINT_PERIOD", 2, "SOLVER.WARMUP_ITERS", 1, "SEED", 7,
        "OUTPUT_DIR", str(out), *extra,
    ])
    return cfg


def _run(cfg, resume):
    torch.manual_seed(0)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=resume)
    trainer.train()
    return trainer.model.state_dict()


# the demo's views and schedule; the paper configs' (SoCo's code: V3 of its own, the cosine after
# the warm-up)
@pytest.mark.parametrize("extra", [(), ("INPUT.SOCO.VIEWS", "official", "SOLVER.LR_SCHEDULER_NAME",
                                        "WarmupThenCosineLR", "SOLVER.WARMUP_FACTOR", 0.01)])
def test_resume_reproduces_the_uninterrupted_run(repo_root, tmp_path, extra):
    props = _dataset(tmp_path)
    full = _run(_cfg(repo_root, props, tmp_path / "full", extra), resume=False)
    # the "killed" run: only the checkpoint after 2 of 4 iterations survives
    killed = tmp_path / "killed"
    killed.mkdir()
    shutil.copy(tmp_path / "full" / "model_0000001.pth", killed / "model_0000001.pth")
    (killed / "last_checkpoint").write_text("model_0000001.pth")
    torch.manual_seed(123)  # a fresh process would not share the first run's torch RNG state
    resumed = _run(_cfg(repo_root, props, killed, extra), resume=True)
    mid = torch.load(killed / "model_0000001.pth", weights_only=False)["model"]
    assert any(not torch.equal(mid[k], full[k]) for k in mid if k.startswith("target."))
    for k, v in full.items():
        assert torch.equal(resumed[k], v), k
