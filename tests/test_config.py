import glob
import os

import pytest
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from detpre.config import add_detpre_config, get_detpre_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(
    os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True)
)


def test_defaults_do_not_change_detectron2_keys():
    plain, ours = get_cfg(), get_detpre_cfg()
    flat = lambda c, p="": {  # noqa: E731
        k2: v2 for k, v in c.items()
        for k2, v2 in (flat(v, p + k + ".").items() if isinstance(v, dict) else [(p + k, v)])
    }
    a, b = flat(plain), flat(ours)
    assert all(b[k] == v for k, v in a.items())  # every detectron2 default kept
    assert b["DATASETS.COCO"] == [] and b["DATALOADER.MAPPER"] == "" and b["SOLVER.OPTIMIZER"] == "SGD"
    assert b["MODEL.EMA.BASE"] == 0.99 and b["DETPRE.HOOKS"] == []


def test_yaml_with_detpre_keys_merges_and_typos_fail(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("DATASETS:\n  COCO: [[mine, a.json, imgs]]\nSOLVER:\n  OPTIMIZER: LARS\n")
    cfg = add_detpre_config(get_cfg())
    cfg.merge_from_file(str(good))
    assert cfg.DATASETS.COCO == [["mine", "a.json", "imgs"]] and cfg.SOLVER.OPTIMIZER == "LARS"
    bad = tmp_path / "bad.yaml"
    bad.write_text("DATASETS:\n  COCCO: []\n")
    with pytest.raises(KeyError):
        get_detpre_cfg().merge_from_file(str(bad))


@pytest.mark.parametrize("path", CONFIGS)
def test_every_config_loads_and_builds(path):
    cfg = get_detpre_cfg()
    cfg.merge_from_file(os.path.join(REPO, path))
    if os.path.basename(path).startswith("Base") or "/_" in path:
        return  # partial bases are checked through the configs that inherit them
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.RESNETS.NORM = cfg.MODEL.RESNETS.NORM.replace("SyncBN", "BN")
    for node in (cfg.MODEL.FPN, cfg.MODEL.ROI_BOX_HEAD, cfg.MODEL.ROI_MASK_HEAD, cfg.MODEL.RETINANET):
        node.NORM = node.NORM.replace("SyncBN", "BN")
    model = build_model(cfg)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) > 0


def test_old_names_of_renamed_keys_are_accepted_with_a_warning(tmp_path, caplog):
    old = tmp_path / "old.yaml"
    old.write_text("MODEL:\n  MOMENTUM:\n    BASE: 0.9\nSELF_TRAINING:\n  ENABLED: True\n  IMAGE_SIZE: 96\n")
    child = tmp_path / "child.yaml"  # a new-name file on an old-name base: the child wins
    child.write_text(f"_BASE_: {old}\nMODEL:\n  EMA:\n    END: 0.999\n  SELF_TRAINING:\n    PSEUDO_RATIO: 2.0\n")
    with caplog.at_level("WARNING", logger="detpre.config"):
        cfg = get_detpre_cfg(str(child), ["SELF_TRAINING.AUGMENT", "S4", "MODEL.MOMENTUM.SCHEDULE", "constant"])
    assert (cfg.MODEL.EMA.BASE, cfg.MODEL.EMA.END, cfg.MODEL.EMA.SCHEDULE) == (0.9, 0.999, "constant")
    assert cfg.MODEL.SELF_TRAINING.ENABLED and cfg.MODEL.SELF_TRAINING.PSEUDO_RATIO == 2.0
    assert (cfg.INPUT.SELF_TRAINING.IMAGE_SIZE, cfg.INPUT.SELF_TRAINING.AUGMENT) == (96, "S4")
    assert cfg.SOLVER.MOMENTUM == 0.9 and "SELF_TRAINING" not in cfg and "MOMENTUM" not in cfg.MODEL
    warned = " ".join(r.getMessage() for r in caplog.records)
    for old_key, new_key in [("MODEL.MOMENTUM.BASE", "MODEL.EMA.BASE"),
                             ("SELF_TRAINING.IMAGE_SIZE", "INPUT.SELF_TRAINING.IMAGE_SIZE"),
                             ("SELF_TRAINING.ENABLED", "MODEL.SELF_TRAINING.ENABLED"),
                             ("MODEL.MOMENTUM.SCHEDULE", "MODEL.EMA.SCHEDULE")]:
        assert f"{old_key} is deprecated, use {new_key}" in warned
    caplog.clear()
    with caplog.at_level("WARNING", logger="detpre.config"):
        get_detpre_cfg(os.path.join(REPO, "configs/demo/self_training_mask_rcnn_R18_FPN_tiny.yaml"))
    assert not caplog.records  # the repository's configs use the new names
