"""Every SpCL task config: its data sets load from miniature copies of their layouts, the
vehicle settings are the official code's, and docs/methods/spcl.md names its published number."""
import glob
import os

import _reid_miniatures as mini
import pytest
from detectron2.data import DatasetCatalog

from detpre.config import get_detpre_cfg
from detpre.data.datasets.reid import register_reid, reid_memory_layout
from detpre.data.datasets.reid_layouts import get_layout

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(REPO, "configs", "spcl",
                                                                      "spcl_*.yaml")))
# mAP of the official code's ResNet-50 models (SpCL README, "Trained Models")
PUBLISHED = {
    "spcl_uda_R50_market1501_to_msmt17.yaml": "26.8",
    "spcl_uda_R50_msmt17_to_market1501.yaml": "77.5",
    "spcl_uda_R50_personx_to_market1501.yaml": "73.8",
    "spcl_uda_R50_personx_to_msmt17.yaml": "22.7",
    "spcl_uda_R50_vehicleid_to_veri776.yaml": "38.9",
    "spcl_uda_R50_vehiclex_to_veri776.yaml": "38.9",
    "spcl_usl_R50_market1501.yaml": "73.1",
    "spcl_usl_R50_msmt17.yaml": "19.1",
    "spcl_usl_R50_veri776.yaml": "36.9",
}
MINIATURE = {"market1501": mini.market, "msmt17": mini.msmt17, "personx": mini.market,
             "veri776": mini.veri, "vehicleid": mini.vehicleid, "vehiclex": mini.vehiclex}


def _cfg(name):
    cfg = get_detpre_cfg()
    cfg.merge_from_file(os.path.join(REPO, "configs", "spcl", name))
    return cfg


def test_every_paper_task_has_a_config():
    assert set(PUBLISHED) <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_data_sets_load_from_miniatures(tmp_path, name):
    cfg = _cfg(name)
    registered = []
    for i, (ds, _root, layout) in enumerate(cfg.DATASETS.REID):
        root = MINIATURE[get_layout(layout).name](tmp_path / ds)
        registered += register_reid(f"cfgtest{i}_{name}_{ds}", root, layout)
    prefix = {ds: f"cfgtest{i}_{name}_{ds}" for i, (ds, _, _) in enumerate(cfg.DATASETS.REID)}

    def local(n):  # the config's name, as registered here under a test prefix
        ds = next(d for d in prefix if n.startswith(d + "_"))
        return prefix[ds] + n[len(ds):]

    for n in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST):
        assert local(n) in registered, f"{name}: {n} is not a split of its DATASETS.REID"
        assert len(DatasetCatalog.get(local(n))) > 0
    train = [local(n) for n in cfg.DATASETS.TRAIN]
    layout = reid_memory_layout(train, [local(n) for n in cfg.MODEL.SPCL.SOURCE_DATASETS])
    assert layout.num_target > 0 and (layout.num_source > 0) == bool(cfg.MODEL.SPCL.SOURCE_DATASETS)
    if cfg.MODEL.SPCL.SOURCE_DATASETS:
        assert cfg.SOLVER.IMS_PER_BATCH == 128  # 64 source + 64 target images, as SpCL


@pytest.mark.parametrize("name", [c for c in CONFIGS if "veri776" in c])
def test_vehicle_configs_use_the_official_settings(name):
    cfg = _cfg(name)
    assert tuple(cfg.INPUT.REID.SIZE) == (224, 224)
    assert cfg.MODEL.SPCL.CLUSTER_PERIOD == 800 and cfg.MODEL.SPCL.EPS == 0.6
    assert cfg.SOLVER.MAX_ITER == 50 * 800 and tuple(cfg.SOLVER.STEPS) == (20 * 800, 40 * 800)


def test_docs_name_the_published_number_beside_each_config():
    with open(os.path.join(REPO, "docs", "methods", "spcl.md")) as f:
        rows = [line for line in f if line.startswith("|")]
    for name, mAP in PUBLISHED.items():
        row = [r for r in rows if name[:-5] in r]
        assert row and mAP in row[0], f"docs/methods/spcl.md: no table row with {name} and mAP {mAP}"
