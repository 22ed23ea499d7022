"""tools/benchmark_fastmoco.py --synthetic: timing on random views needs no registered data set."""
import math
import os

from detectron2.data import DatasetCatalog

from detpre.benchmarks.fastmoco import compare
from detpre.config import get_detpre_cfg


def test_synthetic_timing_runs_without_a_data_set(repo_root):
    """The demo config (with its CollapseWatch) on synthetic views, its train set unregistered:
    both methods step, Fast-MoCo's time is given relative to MoCo v3's."""
    cfg = get_detpre_cfg(os.path.join(repo_root, "configs/demo/fastmoco_R18_tiny.yaml"),
                         ["MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", 0, "SOLVER.IMS_PER_BATCH", 2,
                          "INPUT.TWO_VIEW.SIZE", 32, "DATASETS.TRAIN", ("detpre_test_never_registered",)])
    assert "detpre_test_never_registered" not in DatasetCatalog.list()
    rows = compare(cfg, iters=3, warmup=1, probe=False, synthetic=True)
    assert [r["method"] for r in rows] == ["Fast-MoCo (mean)", "MoCo v3"]
    assert rows[1]["time_ratio"] == 1.0 and rows[0]["time_ratio"] > 0
    assert all(math.isfinite(r["loss_first"]) and math.isfinite(r["loss_last"]) for r in rows)
