"""A method is declared once, on its meta-architecture (detpre.method): every declaration names
something that exists, and the demo, the job pipeline and the equal-compute control read it."""
import os

import pytest

from detpre.checkpoint import DETECTOR_PREFIXES
from detpre.config import get_detpre_cfg
from detpre.jobs.pipeline import PREREQUISITES, prerequisite_opts
from detpre.method import declared, demo_entries, detpre_methods, trains_on_judged_labels
from detpre.registry import HOOK_REGISTRY, MAPPER_REGISTRY

FINETUNE = "configs/demo/mask_rcnn_R18_FPN_tiny.yaml"


def test_every_declaration_names_what_exists(repo_root):
    cfg = get_detpre_cfg()
    assert set(detpre_methods()) == {"ClassAgnosticRCNN", "FastMoCo", "JigsawPretrain", "SoCo", "SpCL"}
    for arch, cls in detpre_methods().items():
        for group in getattr(cls, "config_groups", ()):
            node = cfg
            for part in group.split("."):
                node = getattr(node, part)  # AttributeError: a group add_detpre_config does not define
        assert set(getattr(cls, "prerequisites", ())) <= set(PREREQUISITES), arch
        assert getattr(cls, "export_detector", "mask_rcnn") in DETECTOR_PREFIXES, arch
        mapper = getattr(cls, "required_mapper", "")
        assert not mapper or mapper in MAPPER_REGISTRY, arch
    for name, (arch, entry) in demo_entries().items():
        demo_cfg = get_detpre_cfg(os.path.join(repo_root, entry.config))
        assert demo_cfg.MODEL.META_ARCHITECTURE == arch, name
        assert entry.detector in DETECTOR_PREFIXES and entry.s_per_iter > 0
        assert all(h in HOOK_REGISTRY for h in declared(demo_cfg, "required_hooks", ())), name


def test_the_demo_reads_its_methods_from_the_declarations():
    from detpre.jobs.demo import DEMO_DEFAULT, demo_methods

    entries = demo_methods()
    assert set(entries) == {"agnostic", "soco", "jigsaw", "fastmoco", "mocov3"}
    assert set(DEMO_DEFAULT) <= set(entries)
    assert entries["agnostic"].detector == "rpn_box_head"  # the method's export_detector
    assert entries["soco"].detector == "backbone_fpn"  # the demo's own choice, declared with it
    assert entries["jigsaw"].detector == "mask_rcnn"  # nothing declared: mask_rcnn


def test_prerequisites_follow_the_declaration(tmp_path):
    soco = prerequisite_opts("configs/demo/soco_R18_FPN_tiny.yaml", str(tmp_path))
    assert soco == ["DATASETS.PROPOSAL_FILES_TRAIN", str((str(tmp_path / "proposals" / "detpre_demo_unlabeled.pkl"),))]
    jigsaw = prerequisite_opts("configs/demo/jigsaw_R18_tiny.yaml", str(tmp_path))
    assert jigsaw == ["DATASETS.JIGSAW_SAMPLES", str(tmp_path / "jigsaw" / "samples_detpre_demo_train.json")]
    assert prerequisite_opts("configs/demo/agnostic_R18_FPN_tiny.yaml", str(tmp_path)) == []


@pytest.mark.parametrize("config,train,expected", [
    ("configs/demo/agnostic_R18_FPN_tiny.yaml", "detpre_demo_train", True),
    ("configs/demo/jigsaw_R18_tiny.yaml", "detpre_demo_train", True),
    # the same methods on another labeled set than the one fine-tuning is judged on: no control
    ("configs/demo/agnostic_R18_FPN_tiny.yaml", "detpre_demo_unlabeled", False),
    # SoCo learns from images, never from annotations, even on the labeled set's images
    ("configs/demo/soco_R18_FPN_tiny.yaml", "detpre_demo_train", False),
])
def test_equal_compute_control_is_for_methods_that_learn_from_the_judged_labels(config, train, expected):
    pre = get_detpre_cfg(config, ["DATASETS.TRAIN", f"('{train}',)"])
    assert trains_on_judged_labels(pre, get_detpre_cfg(FINETUNE)) is expected


def test_a_config_dependent_declaration_needs_the_config():
    cfg = get_detpre_cfg("configs/demo/jigsaw_R18_tiny.yaml")
    assert declared(cfg, "required_hooks", ()) == (("ERFRefresh",) if cfg.MODEL.JIGSAW.MODE == "erf" else ())
    with pytest.raises(TypeError, match="pass the config"):
        declared("JigsawPretrain", "required_hooks")
    assert declared("GeneralizedRCNN", "export_detector", "mask_rcnn") == "mask_rcnn"  # detectron2's: nothing
