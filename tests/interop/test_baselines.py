"""Baselines: weights a user already has (torchvision, model-zoo .pkl, detectron2 .pth) read safely,
resolved against the fine-tuning detector and fine-tuned next to random init in the transfer benchmark."""
import json
import os
import pickle

import numpy as np
import pytest
import torch
import torchvision
from _catalog import names_freed
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import build_resnet_backbone

from detpre.config import get_detpre_cfg
from detpre.errors import DetpreError
from detpre.interop.torchvision import TORCHVISION_OPTS, torchvision_to_detectron2
from detpre.interop.weights import import_checked, read_weights, safe_pickle_load

FINETUNE = "configs/demo/mask_rcnn_R18_FPN_tiny.yaml"


def _torchvision(depth, seed=0):
    """A torchvision ResNet with random weights and BN statistics, in eval mode."""
    torch.manual_seed(seed)
    tv = getattr(torchvision.models, f"resnet{depth}")()
    with torch.no_grad():
        for name, t in tv.state_dict().items():
            if name.endswith("running_var") or (name.startswith(("bn", "layer")) and name.endswith("bn1.weight")):
                t.copy_(torch.rand_like(t) + 0.5)
            elif name.endswith(("running_mean", ".bias")):
                t.copy_(torch.randn_like(t) * 0.1)
    return tv.eval()


def _save_torchvision(tmp_path, depth=18):
    path = str(tmp_path / f"resnet{depth}.pth")
    tv = _torchvision(depth)
    torch.save(tv.state_dict(), path)
    return path, tv


@pytest.mark.parametrize("depth", [18, 50])
def test_torchvision_weights_load_into_a_detectron2_resnet_with_equal_features(depth):
    tv = _torchvision(depth)
    cfg = get_detpre_cfg()
    r = cfg.MODEL.RESNETS
    r.DEPTH, r.STRIDE_IN_1X1, r.NORM, r.RES2_OUT_CHANNELS = depth, False, "BN", 64 if depth < 50 else 256
    r.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    net = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    weights = torchvision_to_detectron2(tv.state_dict(), prefix="")
    result = net.load_state_dict({k: torch.as_tensor(v) for k, v in weights.items()}, strict=False)
    assert result.unexpected_keys == []
    assert [k for k in result.missing_keys if not k.endswith("num_batches_tracked")] == []
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours = net.eval()(x)["res5"]
        y = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
        theirs = tv.layer4(tv.layer3(tv.layer2(tv.layer1(y))))
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_a_torchvision_file_is_imported_with_its_layout(tmp_path):
    path, tv = _save_torchvision(tmp_path)
    w = read_weights(path)
    assert w["format"] == "torchvision" and "res5.1.conv2.norm.running_var" in w["model"]
    resolved, info = import_checked(path, FINETUNE)
    assert info["format"] == "torchvision" and info["opts"] == TORCHVISION_OPTS
    np.testing.assert_array_equal(resolved["backbone.bottom_up.res4.0.shortcut.norm.running_mean"],
                                  tv.layer3[0].downsample[1].running_mean.numpy())
    assert not any(k.startswith(("fc", "backbone.fpn", "roi_heads")) for k in resolved)


def test_weights_of_another_resnet_are_refused_naming_the_file(tmp_path):
    path, _ = _save_torchvision(tmp_path, depth=50)
    with pytest.raises(DetpreError, match=r"resnet50.pth .*fills \d+ of the \d+ ResNet convs.*MODEL.RESNETS.DEPTH"):
        import_checked(path, FINETUNE)


def _c2_names(state):
    """A detectron2 ResNet's state_dict under Caffe2 / Detectron names (as in MSRA's R-50.pkl)."""
    out = {}
    for k, v in state.items():
        if k.endswith("num_batches_tracked"):
            continue
        k = k.replace("stem.conv1.norm.", "res_conv1.norm.").replace("stem.conv1.weight", "conv1_w")
        for d2, c2 in (("conv1", "branch2a"), ("conv2", "branch2b"), ("conv3", "branch2c"), ("shortcut", "branch1")):
            k = k.replace(f".{d2}.", f".{c2}.")
        k = k.replace(".norm.weight", "_bn_s").replace(".norm.bias", "_bn_b")
        k = k.replace(".norm.running_mean", "_bn_rm").replace(".norm.running_var", "_bn_riv")
        k = k.replace(".weight", "_w").replace(".", "_")
        out[k] = v.numpy().copy()
    return out


def test_a_caffe2_model_zoo_pkl_is_renamed_and_gets_msra_layout(tmp_path):
    cfg = get_detpre_cfg(FINETUNE)
    torch.manual_seed(3)
    net = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    blobs = _c2_names(net.state_dict())
    assert "res3_0_branch1_bn_riv" in blobs and "conv1_w" in blobs
    path = str(tmp_path / "R-18.pkl")
    with open(path, "wb") as f:
        pickle.dump({"model": blobs, "__author__": "Caffe2", "matching_heuristics": True}, f, protocol=2)
    resolved, info = import_checked(path, FINETUNE)
    assert info["format"] == "caffe2" and "INPUT.FORMAT" in info["opts"] and "BGR" in info["opts"]
    for k, v in net.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            np.testing.assert_array_equal(resolved["backbone.bottom_up." + k], v.numpy())


@pytest.mark.parametrize("protocol", [2, 5])
def test_a_genuine_model_zoo_pkl_loads(tmp_path, protocol):
    data = {"model": {"backbone.bottom_up.stem.conv1.weight": np.arange(6, dtype=np.float32).reshape(1, 1, 2, 3),
                      "backbone.bottom_up.res2.0.conv1.norm.running_var": np.ones(3, np.float64)[::2]},
            "__author__": "Detectron2 Model Zoo", "matching_heuristics": False}
    path = str(tmp_path / "zoo.pkl")
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=protocol)
    loaded = safe_pickle_load(path)
    assert loaded["__author__"] == "Detectron2 Model Zoo"
    for k, v in data["model"].items():
        np.testing.assert_array_equal(loaded["model"][k], v)
    assert read_weights(path)["format"] == "detectron2"


class _Opens:
    """Unpickling this calls ``open(marker, "w")``: it creates the file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


class _Shell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("payload", [_Opens, _Shell])
def test_a_pkl_that_runs_code_is_refused_and_runs_nothing(tmp_path, payload):
    marker = str(tmp_path / "MARKER")
    path = str(tmp_path / "evil.pkl")
    with open(path, "wb") as f:
        pickle.dump({"model": {"x": payload(marker)}, "__author__": "someone"}, f)
    with pytest.raises(DetpreError, match=r"evil.pkl: refused to unpickle") as e:
        read_weights(path)
    assert "\n" not in str(e.value)
    assert not os.path.exists(marker)
    if payload is _Opens:  # the file is what it claims: an ordinary unpickler creates the marker
        with open(path, "rb") as f:
            pickle.load(f)
        assert os.path.exists(marker)


def test_other_files_are_refused_with_one_line_each(tmp_path):
    cases = {"missing.pkl": None, "epoch.pth": {"epoch": 3, "state_dict": {"conv.weight": torch.zeros(1)}},
             "module.pth": torch.nn.Linear(2, 2), "text.pkl": b"not a pickle"}
    for name, content in cases.items():
        path = str(tmp_path / name)
        if isinstance(content, bytes):
            open(path, "wb").write(content)
        elif content is not None:
            torch.save(content, path)
        with pytest.raises(DetpreError) as e:
            read_weights(path)
        assert str(e.value).startswith(path) and "\n" not in str(e.value), str(e.value)


def test_baseline_argument_forms(tmp_path):
    from detpre.jobs.transfer import parse_baseline

    path, _ = _save_torchvision(tmp_path)
    b = parse_baseline(f"imagenet={path}")
    assert (b.name, b.weights) == ("imagenet", os.path.abspath(path))
    for bad, msg in [(path, "expected NAME=WEIGHTS"), (f"={path}", "expected NAME=WEIGHTS"), ("x=", "NAME=WEIGHTS"),
                     (f"a/b={path}", "letters, digits"), (f"random_init={path}", "not 'random init'"),
                     (f"x={tmp_path}/nope.pkl", "nope.pkl: no such file; pass a detectron2 model-zoo .pkl")]:
        with pytest.raises(DetpreError, match=msg):
            parse_baseline(bad)


def test_the_tool_refuses_a_bad_baseline_before_running_anything(repo_root, tmp_path, monkeypatch, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("benchmark_transfer",
                                                  os.path.join(repo_root, "tools", "benchmark_transfer.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    monkeypatch.setattr(tool, "run_transfer", lambda *a, **k: pytest.fail("run_transfer was called"))
    with pytest.raises(SystemExit) as e:
        tool.main(["--baseline", f"imagenet={tmp_path}/R-50.pkl", "--output-dir", str(tmp_path / "out")])
    assert e.value.code == 2 and "R-50.pkl: no such file" in capsys.readouterr().err


def _fake_runs(monkeypatch, calls):
    from detpre.jobs import transfer

    def finetune(config, out, weights, seed, opts, label, *a, **k):
        calls.append((os.path.basename(os.path.dirname(out)), weights, list(opts)))
        ap = 1.0 + seed + (0.5 if weights else 0.0)
        return {"bbox/AP": ap, "bbox/AP50": ap, "segm/AP": ap}, 1.0

    monkeypatch.setattr(transfer, "finetune", finetune)
    monkeypatch.setattr(transfer, "probe", lambda *a, **k: {"knn_top1": 1.0, "linear_top1": 1.0})
    return transfer


def test_a_baseline_row_is_paired_with_random_init(tmp_path, monkeypatch):
    """The graph with its trainings faked: the baseline is imported once, fine-tuned from the imported
    file with its layout's overrides after the user's, with every seed, and summarized like a method."""
    calls = []
    transfer = _fake_runs(monkeypatch, calls)
    path, _ = _save_torchvision(tmp_path)
    res = transfer.run_transfer([], FINETUNE, str(tmp_path / "out"), seeds=(0, 1), jobs=1,
                                finetune_opts=["SOLVER.MAX_ITER", "2"], baselines=[transfer.Baseline("tv18", path)])
    imported = str(tmp_path / "out" / "baselines" / "tv18" / "weights.pkl")
    assert sorted(calls) == [
        ("random_init", None, ["SOLVER.MAX_ITER", "2"]), ("random_init", None, ["SOLVER.MAX_ITER", "2"]),
        ("tv18", imported, ["SOLVER.MAX_ITER", "2", *TORCHVISION_OPTS]),
        ("tv18", imported, ["SOLVER.MAX_ITER", "2", *TORCHVISION_OPTS])]
    row = res["rows"][1]
    assert row["init"] == "tv18" and row["pretrain"] is None and row["weights"] == imported
    assert row["baseline"]["format"] == "torchvision" and row["baseline"]["source"] == os.path.abspath(path)
    d = row["summary"]["box AP"]["vs_random"]
    assert d["mean"] == pytest.approx(0.5) and d["n"] == 2
    saved = json.load(open(tmp_path / "out" / "benchmark_transfer.json"))
    assert [r["init"] for r in saved["rows"]] == ["random init", "tv18"]

    torch.save(torch.nn.Linear(2, 2).state_dict(), path)  # another file under the same name
    with pytest.raises(DetpreError, match="not the file .*weights.pkl was imported from"):
        transfer.run_transfer([], FINETUNE, str(tmp_path / "out"), seeds=(0,), jobs=1,
                              baselines=[transfer.Baseline("tv18", path)])


def test_a_bad_baseline_fails_before_any_training(tmp_path, monkeypatch):
    calls = []
    transfer = _fake_runs(monkeypatch, calls)
    monkeypatch.setattr(transfer, "pretrain", lambda *a, **k: pytest.fail("pretrained before the baseline check"))
    evil = str(tmp_path / "evil.pkl")
    with open(evil, "wb") as f:
        pickle.dump({"model": {"x": _Opens(str(tmp_path / "MARKER"))}, "__author__": "x"}, f)
    methods = [transfer.Method("jigsaw", "configs/demo/jigsaw_R18_tiny.yaml")]
    with pytest.raises(DetpreError, match="evil.pkl: refused to unpickle"):
        transfer.run_transfer(methods, FINETUNE, str(tmp_path / "out"), seeds=(0,), jobs=1,
                              baselines=[transfer.Baseline("evil", evil)])
    assert calls == [] and not os.path.exists(tmp_path / "MARKER")
    with pytest.raises(DetpreError, match="same directory"):
        transfer.run_transfer(methods, FINETUNE, str(tmp_path / "out"), seeds=(0,), jobs=1,
                              baselines=[transfer.Baseline("jigsaw", evil)])


def test_benchmark_end_to_end_with_a_torchvision_baseline(tmp_path):
    """The real job graph (train_net.py subprocesses, probes, the images' interval) with random init
    and one torchvision baseline, 1 seed, 2 iterations at LR 0 on a tiny demo: the baseline's run
    starts from exactly its weights under torchvision's input convention; its row is in the table,
    the JSON and the plot."""
    from detpre.data.datasets import DEMO_NAMES, generate_demo_dataset
    from detpre.jobs.report import plot_transfer, transfer_table
    from detpre.jobs.transfer import Baseline, run_transfer

    root = generate_demo_dataset(str(tmp_path / "demo"), seed=2, num_train=4, num_val=3, num_unlabeled=1)
    coco = str([[f"baselines_e2e_{s}", os.path.join(root, "annotations", f"instances_{s}.json"),
                 os.path.join(root, "images", s)] for s in ("train", "val")])
    opts = ["DATASETS.COCO", coco, "DATASETS.TRAIN", "('baselines_e2e_train',)", "DATASETS.TEST",
            "('baselines_e2e_val',)", "DATASETS.DEMO_ROOT", str(tmp_path / "demo_default"),
            "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2", "SOLVER.WARMUP_ITERS", "0", "SOLVER.STEPS", "()",
            "SOLVER.BASE_LR", "0.0", "SOLVER.CHECKPOINT_PERIOD", "100", "TEST.DETECTIONS_PER_IMAGE", "20"]
    path, tv = _save_torchvision(tmp_path)
    out = str(tmp_path / "out")
    with names_freed(DEMO_NAMES, extra=("baselines_e2e_train", "baselines_e2e_val")):
        res = run_transfer([], FINETUNE, out, seeds=(0,), jobs=1, finetune_opts=opts, image_samples=20,
                           baselines=[Baseline("tv18", path)])
    assert [r["init"] for r in res["rows"]] == ["random init", "tv18"]
    row = res["rows"][1]
    assert row["pretrain"] is None and set(row["probe"]) >= {"knn_top1", "linear_top1"}
    assert {"vs_random", "vs_random_images"} <= set(row["summary"]["box AP"])
    run = os.path.join(out, "finetune", "tv18", "seed0")
    cfg = get_detpre_cfg(os.path.join(run, "config.yaml"))
    assert cfg.INPUT.FORMAT == "RGB" and not cfg.MODEL.RESNETS.STRIDE_IN_1X1 and cfg.MODEL.WEIGHTS == row["weights"]
    final = torch.load(os.path.join(run, "model_final.pth"), weights_only=False)["model"]
    assert torch.equal(final["backbone.bottom_up.stem.conv1.weight"], tv.conv1.weight.detach())  # LR 0
    assert torch.equal(final["backbone.bottom_up.res5.1.conv2.weight"], tv.layer4[1].conv2.weight.detach())
    assert "tv18" in transfer_table(res)
    assert [r["init"] for r in json.load(open(os.path.join(out, "benchmark_transfer.json")))["rows"]][1] == "tv18"
    assert os.path.getsize(plot_transfer(res, os.path.join(out, "transfer.png"))) > 0
