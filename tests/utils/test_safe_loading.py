"""Files detpre reads never run code unless listed in DETPRE_TRUSTED_FILES; what detpre writes loads.

Each crafted file creates a marker file when read by ``pickle.load`` / ``torch.load(weights_only=False)``
/ ``yaml.unsafe_load``: it must be refused with one line naming it and the switch, and the marker must
not exist. The trusted cases use harmless payloads (a ``datetime.date``, a YAML tuple).
"""
import datetime
import os
import pickle

import numpy as np
import pytest
import torch
from _reliability_data import random_images, register_list, tiny_cfg
from detectron2.structures import BoxMode
from torch import nn

from detpre.checkpoint import (
    DetpreCheckpointer,
    checkpoint_problem,
    export_checked,
    is_finished,
    load_detpre_checkpoint,
    read_checkpoint,
    save_model_zoo_file,
)
from detpre.config import get_detpre_cfg
from detpre.data.proposals.proposal_file import (
    PartStore,
    check_proposal_file,
    read_proposal_file,
    write_proposal_file,
)
from detpre.engine import Trainer
from detpre.evaluation.backbone_probe import read_backbone_weights
from detpre.interop.weights import read_weights
from detpre.jobs.self_training import export_plain_checkpoint
from detpre.utils.safe_load import TRUST_ENV, UntrustedFileError, is_trusted, load_torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _Touch:
    """Unpickling this calls ``open(marker, "w")``: an unsafe load creates the marker."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class _Det(nn.Module):
    """The key layout of a detectron2 FPN detector, small."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.bottom_up = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.backbone.fpn_lateral2 = nn.Conv2d(4, 8, 1)


@pytest.fixture(autouse=True)
def _untrusted(monkeypatch):
    monkeypatch.delenv(TRUST_ENV, raising=False)


def _refused(call, path, marker):
    """``call()`` is refused with one line naming ``path`` and the switch, and ran nothing."""
    with pytest.raises(UntrustedFileError) as e:
        call()
    msg = str(e.value)
    assert str(path) in msg and TRUST_ENV in msg and "\n" not in msg, msg
    assert "weights_only" not in msg  # never torch's advice to load it fully
    assert not os.path.exists(marker)
    return msg


def _pickle(path, data):
    with open(path, "wb") as f:
        pickle.dump(data, f)
    return str(path)


def _arrays(model):
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


def test_trust_is_a_list_of_files_and_folders(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    inside, other = tmp_path / "a" / "w.pkl", tmp_path / "b.pkl"
    assert not is_trusted(str(inside))
    monkeypatch.setenv(TRUST_ENV, os.pathsep.join(["", str(tmp_path / "a"), "/nonexistent"]))
    assert is_trusted(str(inside)) and not is_trusted(str(other))
    assert not is_trusted(str(tmp_path / "ab.pkl"))  # a prefix of the name is not its folder
    monkeypatch.setenv(TRUST_ENV, str(other))
    assert is_trusted(str(other)) and not is_trusted(str(inside))


# ---- MODEL.WEIGHTS --------------------------------------------------------------------------------
def test_weights_pkl_and_pth_through_model_weights(tmp_path, monkeypatch):
    marker = tmp_path / "MARKER"
    evil = _pickle(tmp_path / "evil.pkl", {"model": {"x": _Touch(marker)}, "__author__": "x"})
    _refused(lambda: DetpreCheckpointer(_Det()).load(evil), evil, marker)
    caffe2 = _pickle(tmp_path / "c2.pkl", {"blobs": {"conv1_w": np.zeros(1), "x": _Touch(marker)}})
    _refused(lambda: DetpreCheckpointer(_Det()).load(caffe2), caffe2, marker)
    evil_pth = str(tmp_path / "evil.pth")
    torch.save({"model": _Det().state_dict(), "x": _Touch(marker)}, evil_pth)
    _refused(lambda: DetpreCheckpointer(_Det()).load(evil_pth), evil_pth, marker)

    # trusted: a harmless object the safe readers refuse all the same
    src = _Det()
    pkl = _pickle(tmp_path / "dated.pkl", {"model": _arrays(src), "__author__": "x", "made": datetime.date(2024, 1, 1)})
    pth = str(tmp_path / "dated.pth")
    torch.save({"model": src.state_dict(), "made": datetime.date(2024, 1, 1)}, pth)
    for path in (pkl, pth):
        _refused(lambda: DetpreCheckpointer(_Det()).load(path), path, marker)
    monkeypatch.setenv(TRUST_ENV, os.pathsep.join([pkl, pth]))
    for path in (pkl, pth):
        model = _Det()
        DetpreCheckpointer(model).load(path)
        torch.testing.assert_close(model.backbone.fpn_lateral2.weight, src.backbone.fpn_lateral2.weight)


def test_model_zoo_caffe2_and_export_pkls_load_through_model_weights(tmp_path):
    src = _Det()
    zoo = _pickle(tmp_path / "zoo.pkl", {"model": _arrays(src), "__author__": "Detectron2 Model Zoo",
                                         "matching_heuristics": True})
    export = str(tmp_path / "export.pkl")
    save_model_zoo_file(_arrays(src), export, author="detpre FastMoCo")
    for path in (zoo, export):
        model = _Det()
        DetpreCheckpointer(model).load(path)
        torch.testing.assert_close(model.backbone.bottom_up[0].weight, src.backbone.bottom_up[0].weight)
    # Caffe2 / Detectron pickles keep detectron2's handling: blobs unwrapped, momenta dropped, renamed
    c2 = _pickle(tmp_path / "c2.pkl", {"blobs": {"conv1_w": np.ones((4, 3, 3, 3), np.float32),
                                                 "conv1_w_momentum": np.zeros(1)}})
    data = DetpreCheckpointer(_Det())._load_file(c2)
    assert data["__author__"] == "Caffe2" and data["matching_heuristics"] and list(data["model"]) == ["conv1_w"]
    # a detectron2 model-zoo .pkl of a Python 2 era: protocol 2, numpy scalars
    old = str(tmp_path / "py2.pkl")
    with open(old, "wb") as f:
        pickle.dump({"model": _arrays(src), "__author__": "Caffe2", "step": np.float32(3)}, f, protocol=2)
    assert DetpreCheckpointer(_Det())._load_file(old)["step"] == 3


def test_garbage_pth_names_the_file_without_torchs_advice(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a zip nor a pickle")
    with pytest.raises(ValueError) as e:
        DetpreCheckpointer(_Det()).load(str(garbage))
    assert str(garbage) in str(e.value) and "weights_only" not in str(e.value)


# ---- OUTPUT_DIR: --resume and "is this step finished?" ----------------------------------------
def test_model_pth_in_output_dir_on_resume_and_is_finished(tmp_path, monkeypatch):
    marker = tmp_path / "MARKER"
    out = tmp_path / "out"
    out.mkdir()
    good = {"model": _Det().state_dict(), "iteration": 1}
    torch.save(good, out / "model_0000001.pth")
    final = str(out / "model_final.pth")
    torch.save(dict(good, iteration=3, x=_Touch(marker)), final)
    assert not is_finished(str(out))
    assert TRUST_ENV in checkpoint_problem(final) and not marker.exists()
    _refused(lambda: read_checkpoint(final), final, marker)
    # not skipped like a broken file (the run would restart from an older one): refused
    _refused(lambda: DetpreCheckpointer(_Det(), save_dir=str(out)).resume_or_load("", resume=True), final, marker)

    torch.save(dict(good, iteration=3, made=datetime.date(2024, 1, 1)), final)
    _refused(lambda: DetpreCheckpointer(_Det(), save_dir=str(out)).resume_or_load("", resume=True), final, marker)
    monkeypatch.setenv(TRUST_ENV, str(out))
    assert is_finished(str(out))
    assert DetpreCheckpointer(_Det(), save_dir=str(out)).resume_or_load("", resume=True)["iteration"] == 3


def test_a_real_training_checkpoint_loads_safely_and_resumes(tmp_path):
    """What detpre writes (model, LARS state, cosine scheduler, run info, EMA target) needs no trust."""
    name = "_safe_loading_images"
    paths = random_images(tmp_path / "imgs", 4)
    register_list(name, [{"file_name": p, "image_id": i, "height": 48, "width": 56} for i, p in enumerate(paths)])
    cfg = tiny_cfg("fastmoco_R18_tiny.yaml", tmp_path / "run", "DATASETS.TRAIN", (name,),
                   "INPUT.TWO_VIEW.SIZE", 32, "MODEL.FASTMOCO.HIDDEN_DIM", 32, "MODEL.FASTMOCO.PROJ_DIM", 16,
                   "SOLVER.MAX_ITER", 4, "SOLVER.CHECKPOINT_PERIOD", 2)
    assert cfg.SOLVER.OPTIMIZER == "LARS"
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    out = cfg.OUTPUT_DIR
    assert is_finished(out)
    for f in ("model_0000001.pth", "model_0000003.pth", "model_final.pth"):
        data = load_torch(os.path.join(out, f))  # weights_only=True, no trust
        assert {"model", "trainer", "iteration", "detpre"} <= set(data)
        assert data["trainer"]["_trainer"]["optimizer"]["state"]  # LARS momentum buffers
        assert "LRScheduler" in data["trainer"]["hooks"]
    os.remove(os.path.join(out, "model_final.pth"))
    resumed = Trainer(cfg)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 4
    state, arch = load_detpre_checkpoint(os.path.join(out, "model_0000003.pth"))
    assert arch == "FastMoCo" and any(k.startswith("target.") for k in state)
    # a float16 GradScaler's state (AMPStep's "grad_scaler") is plain numbers too
    scaler, w = torch.amp.GradScaler("cpu"), nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([w], lr=0.1)
    scaler.scale(w.sum()).backward()
    scaler.step(opt)
    scaler.update()
    torch.save({"model": {"w": w.detach()}, "grad_scaler": scaler.state_dict()}, tmp_path / "amp.pth")
    assert load_torch(str(tmp_path / "amp.pth"))["grad_scaler"]["scale"] == scaler.get_scale()


# ---- tools/convert_pretrained.py --input, self-training's plain export -------------------------
def test_convert_pretrained_input_and_plain_export(tmp_path, monkeypatch):
    marker = tmp_path / "MARKER"
    evil = str(tmp_path / "evil.pth")
    torch.save({"model": {"w": torch.zeros(1)}, "detpre": {"meta_architecture": "FastMoCo", "x": _Touch(marker)}},
               evil)
    _refused(lambda: export_checked(evil, "backbone"), evil, marker)
    _refused(lambda: export_plain_checkpoint(evil, str(tmp_path / "plain.pth")), evil, marker)
    dated = str(tmp_path / "dated.pth")
    torch.save({"model": {"w": torch.zeros(1)}, "detpre": {"meta_architecture": "FastMoCo",
                                                           "made": datetime.date(2024, 1, 1)}}, dated)
    _refused(lambda: load_detpre_checkpoint(dated), dated, marker)
    monkeypatch.setenv(TRUST_ENV, dated)
    assert load_detpre_checkpoint(dated)[1] == "FastMoCo"


def test_convert_pretrained_tool_prints_one_line(repo_root, tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("convert_pretrained",
                                                  os.path.join(repo_root, "tools", "convert_pretrained.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    marker = tmp_path / "MARKER"
    evil = str(tmp_path / "evil.pth")
    torch.save({"model": {}, "x": _Touch(marker)}, evil)
    with pytest.raises(SystemExit) as e:
        tool.main(["--input", evil, "--output", str(tmp_path / "out.pkl")])
    assert evil in str(e.value.code) and TRUST_ENV in str(e.value.code) and not marker.exists()
    assert not os.path.exists(tmp_path / "out.pkl")


# ---- proposal files -----------------------------------------------------------------------------
def test_proposal_files_and_chunks(tmp_path, monkeypatch):
    marker = tmp_path / "MARKER"
    evil = _pickle(tmp_path / "props.pkl", {"ids": [0], "boxes": [_Touch(marker)],
                                            "objectness_logits": [np.zeros(1, np.float32)]})
    _refused(lambda: read_proposal_file(evil), evil, marker)
    dicts = [{"image_id": 0, "file_name": str(tmp_path / "im0.jpg")}]
    _refused(lambda: check_proposal_file(evil, dicts, "d"), evil, marker)
    store = PartStore(str(tmp_path / "props.pkl"))
    os.makedirs(store.dir)
    chunk = _pickle(store._chunk(0), {"ids": [0], "boxes": [_Touch(marker)], "errors": []})
    _refused(lambda: store.load(0), chunk, marker)

    # detpre's writer and its chunks load; so does a file whose bbox_mode is detectron2's enum
    good = str(tmp_path / "good.pkl")
    write_proposal_file(good, [0, 1], [np.ones((2, 4)), np.zeros((0, 4))], meta={"shard": [0, 1]})
    assert read_proposal_file(good)["ids"] == [0, 1]
    store.save(1, [0], [np.ones((1, 4))], [("a.jpg", "truncated")])
    assert store.load(1)["errors"] == [("a.jpg", "truncated")]
    enum = _pickle(tmp_path / "enum.pkl", {"ids": [0], "boxes": [np.ones((1, 4))], "objectness_logits": [np.zeros(1)],
                                           "bbox_mode": BoxMode.XYWH_ABS})
    assert read_proposal_file(enum)["bbox_mode"] is BoxMode.XYWH_ABS

    dated = _pickle(tmp_path / "dated.pkl", {"ids": [0], "boxes": [np.ones((1, 4))], "objectness_logits": [np.zeros(1)],
                                             "made": datetime.date(2024, 1, 1)})
    _refused(lambda: read_proposal_file(dated), dated, marker)
    monkeypatch.setenv(TRUST_ENV, dated)
    assert read_proposal_file(dated)["made"].year == 2024


# ---- tools/eval_backbone.py ---------------------------------------------------------------------
def test_backbone_pkl_for_the_probe(tmp_path, monkeypatch):
    marker = tmp_path / "MARKER"
    evil = _pickle(tmp_path / "bb.pkl", {"model": {"backbone.bottom_up.stem.conv1.weight": _Touch(marker)}})
    _refused(lambda: read_backbone_weights(evil), evil, marker)
    w = {"backbone.bottom_up.stem.conv1.weight": np.ones((2, 3, 1, 1), np.float32)}
    export = str(tmp_path / "export.pkl")
    save_model_zoo_file(w, export)
    assert read_backbone_weights(export)["stem.conv1.weight"].shape == (2, 3, 1, 1)
    dated = _pickle(tmp_path / "dated.pkl", {"model": w, "made": datetime.date(2024, 1, 1)})
    _refused(lambda: read_backbone_weights(dated), dated, marker)
    _refused(lambda: read_weights(dated), dated, marker)  # the transfer benchmark's --baseline
    monkeypatch.setenv(TRUST_ENV, str(tmp_path))
    assert set(read_backbone_weights(dated)) == {"stem.conv1.weight"}


# ---- configs ------------------------------------------------------------------------------------
def test_config_yaml_with_a_python_tag(tmp_path, monkeypatch):
    marker = tmp_path / "MARKER"
    base = os.path.join(REPO, "configs/demo/mask_rcnn_R18_FPN_tiny.yaml")
    evil = tmp_path / "evil.yaml"
    evil.write_text(f'_BASE_: "{base}"\nSOLVER:\n  BASE_LR: !!python/object/apply:os.system ["touch {marker}"]\n')
    child = tmp_path / "child.yaml"
    child.write_text('_BASE_: "evil.yaml"\nSOLVER:\n  MAX_ITER: 3\n')
    msg = _refused(lambda: get_detpre_cfg(str(evil)), evil, marker)
    assert "python/object/apply:os.system" in msg and "line 3" in msg
    _refused(lambda: get_detpre_cfg(str(child)), evil, marker)  # through _BASE_
    _refused(lambda: get_detpre_cfg().merge_from_file(str(evil)), evil, marker)  # what tools/ call

    tagged = tmp_path / "tagged.yaml"
    tagged.write_text(f'_BASE_: "{base}"\nMODEL:\n  PIXEL_MEAN: !!python/tuple [1.0, 2.0, 3.0]\n')
    _refused(lambda: get_detpre_cfg(str(tagged)), tagged, marker)
    monkeypatch.setenv(TRUST_ENV, str(tagged))
    assert tuple(get_detpre_cfg(str(tagged)).MODEL.PIXEL_MEAN) == (1.0, 2.0, 3.0)
    assert get_detpre_cfg(base).MODEL.META_ARCHITECTURE == "GeneralizedRCNN"  # safe YAML, _BASE_ and all


def test_configs_that_ship_with_the_code_keep_their_eval_tag(tmp_path):
    """detectron2's RetinaNet configs (and detpre's copy) compute anchor sizes with a python/eval tag:
    trusted where they ship, refused as a copy elsewhere."""
    import shutil

    import detectron2

    shipped = os.path.join(REPO, "configs/finetune/retinanet_R50_FPN_1x_SyncBN.yaml")
    assert len(get_detpre_cfg(shipped).MODEL.ANCHOR_GENERATOR.SIZES) == 5
    zoo = os.path.join(os.path.dirname(detectron2.__file__), "model_zoo", "configs", "Base-RetinaNet.yaml")
    if os.path.isfile(zoo):
        assert len(get_detpre_cfg(zoo).MODEL.ANCHOR_GENERATOR.SIZES) == 5
    copy = tmp_path / "retinanet.yaml"
    shutil.copy(shipped, copy)
    _refused(lambda: get_detpre_cfg(str(copy)), copy, tmp_path / "MARKER")
