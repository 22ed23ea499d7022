"""The demo's unlabeled ground truth is for evaluation only: training never reads it."""
import builtins
import json
import os

import pytest
from _catalog import names_freed
from detectron2.data import DatasetCatalog, MetadataCatalog

from detpre.config import get_detpre_cfg
from detpre.data.datasets import DEMO_NAMES, generate_demo_dataset, register_demo
from detpre.data.datasets.demo_gen import UNLABELED_GROUNDTRUTH
from detpre.engine.self_training import SelfTrainingTrainer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def demo(tmp_path):
    """A demo registered under the demo names (whatever was registered before is restored)."""
    with names_freed(DEMO_NAMES, extra=("st_isolation_pseudo",)):
        root = generate_demo_dataset(str(tmp_path / "demo"))  # (the demo loaders expect the default sizes)
        register_demo(root)
        yield root


def test_student_training_never_opens_the_unlabeled_groundtruth(demo, tmp_path, monkeypatch):
    gt = os.path.join(demo, UNLABELED_GROUNDTRUTH)
    assert os.path.isfile(gt)
    registered = {MetadataCatalog.get(n).get("json_file", None) for n in DatasetCatalog.list()}
    assert gt not in registered  # no data set loads it
    # pseudo-labels of the unlabeled images (their boxes, in a file of their own)
    data = json.load(open(gt))
    pl = tmp_path / "pl.json"
    pl.write_text(json.dumps({**data, "annotations": [{**a, "score": 0.9} for a in data["annotations"]]}))
    cfg = get_detpre_cfg(os.path.join(REPO, "configs/demo/self_training_mask_rcnn_R18_FPN_tiny.yaml"), [
        "DATASETS.DEMO_ROOT", demo, "DATASETS.TEST", "()", "OUTPUT_DIR", str(tmp_path / "out"),
        "DATASETS.COCO", str([["st_isolation_pseudo", str(pl), os.path.join(demo, "images", "unlabeled")]]),
        "MODEL.SELF_TRAINING.PSEUDO_DATASETS", "('st_isolation_pseudo',)", "SOLVER.IMS_PER_BATCH", "2",
        "SOLVER.MAX_ITER", "1", "SOLVER.CHECKPOINT_PERIOD", "100", "INPUT.SELF_TRAINING.IMAGE_SIZE", "96"])
    from detpre.data.datasets import register_from_config

    opened, real_open = [], builtins.open

    def spy(file, *args, **kwargs):
        opened.append(os.path.abspath(os.fspath(file)) if isinstance(file, (str, os.PathLike)) else file)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy)
    register_from_config(cfg)
    trainer = SelfTrainingTrainer(cfg)
    trainer.train()
    monkeypatch.undo()
    assert os.path.join(demo, "annotations", "instances_train.json") in opened  # the spy sees json loads
    assert str(pl) in opened and trainer.iter == 1  # it trained
    assert gt not in opened
