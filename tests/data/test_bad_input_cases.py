"""Bad input gives one clear line or a skip with a report, never a bare traceback or silent loss
(issue 32): odd file names, 16-bit images, an emptied training set, registration and output
errors, --eval-only without weights, a set smaller than a batch, files outside image_root, seeds."""
import errno
import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import uuid

import numpy as np
import pytest
import torch
from _catalog import unregister
from _reliability_data import REPO, Records
from detectron2.data import DatasetCatalog
from detectron2.structures import Boxes, Instances
from PIL import Image

from detpre.config import get_detpre_cfg
from detpre.data.build import build_train_loader, train_dataset_dicts, warn_if_smaller_than_batch
from detpre.data.datasets import load_image_folder, register_coco, register_from_config
from detpre.data.image_io import UnreadableImage, read_image
from detpre.data.proposals import generate_proposals, read_proposal_file
from detpre.data.proposals.proposal_file import check_proposal_file
from detpre.errors import DetpreError
from detpre.pseudo_labels import generate_pseudo_labels

ODD, BROKEN = b"\xff.png", b"\xfe.png"  # not UTF-8: os.listdir gives them with surrogates


@pytest.fixture
def names():
    """Unique data set names; whatever the test registers (the demo's names at a temporary root
    included) is unregistered after it, so other tests register theirs freely."""
    unregister([n for n in DatasetCatalog.list() if n.startswith("detpre_demo_")])
    before = set(DatasetCatalog.list())
    yield lambda kind: f"_bad_{kind}_{uuid.uuid4().hex[:8]}"
    unregister(set(DatasetCatalog.list()) - before)


def _tool(name):
    spec = importlib.util.spec_from_file_location(f"_tool_{name}", os.path.join(REPO, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _image(path, size=(72, 96), seed=0):
    """A grey image with one coloured rectangle (selective search finds it); ``path`` str or bytes."""
    rng = np.random.default_rng(seed)
    img = np.full((*size, 3), 120, np.uint8)
    img[12:60, 20:70] = (200, 40, 40)
    img += rng.integers(0, 6, img.shape).astype(np.uint8)
    Image.fromarray(img).save(os.fsdecode(path))
    return os.fsdecode(path)


def _odd_folder(root):
    """Two normal images, one valid PNG named b"\\xff.png" and one broken file named b"\\xfe.png"."""
    d = os.path.join(os.fsencode(str(root)), b"imgs")
    os.makedirs(d)
    for i, n in enumerate((b"a.png", ODD, b"c.png")):
        _image(os.path.join(d, n), seed=i)
    with open(os.path.join(d, BROKEN), "wb") as f:
        f.write(b"not an image")
    return os.fsdecode(d)


# 1. non-UTF-8 file names
def test_non_utf8_file_names_get_proposals_and_are_reported_by_their_bytes(tmp_path):
    recs = load_image_folder(_odd_folder(tmp_path))
    out = str(tmp_path / "props.pkl")
    summary = generate_proposals(recs, out, proposal_size=64, workers=1, progress=False)
    ids = read_proposal_file(out)["ids"]
    assert sorted(map(os.fsencode, ids)) == sorted([b"a.png", b"c.png", ODD, BROKEN])
    boxes = dict(zip(ids, read_proposal_file(out)["boxes"]))
    assert all(len(boxes[i]) > 0 for i in ("a.png", "c.png", os.fsdecode(ODD)))  # the odd one is used
    assert [os.fsencode(f) for f, _ in summary["errors"]] == [os.path.join(os.fsencode(str(tmp_path)), b"imgs",
                                                                           BROKEN)]
    with open(out + ".errors.txt", "rb") as f:
        assert b"imgs/" + BROKEN + b"\t" in f.read()  # the exact name, as bytes


def test_generate_proposals_tool_prints_non_utf8_names_without_crashing(tmp_path):
    folder = _odd_folder(tmp_path)
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1", PYTHONIOENCODING="utf-8")
    r = subprocess.run([sys.executable, os.path.join(REPO, "tools/generate_proposals.py"), "--image-dir", folder,
                        "--output", str(tmp_path / "p.pkl"), "--workers", "1", "--proposal-size", "64"],
                       env=env, capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-2000:]
    assert b"Traceback" not in r.stderr
    assert b"unreadable image: b'" in r.stdout and b"\\xfe.png'" in r.stdout
    assert b"4 images, 1 unreadable" in r.stdout


class _OneBox(torch.nn.Module):
    """A teacher that finds one box per image: enough to write a pseudo-label json."""

    def forward(self, batch):
        def inst(d):
            return Instances((d["height"], d["width"]), pred_boxes=Boxes(torch.tensor([[2.0, 3.0, 30.0, 40.0]])),
                             scores=torch.tensor([0.9]), pred_classes=torch.tensor([0]))
        return [{"instances": inst(d)} for d in batch]


def _read_mapper(d):
    img = read_image(d["file_name"], format="RGB")
    return {"file_name": d["file_name"], "height": img.shape[0], "width": img.shape[1]}


def test_non_utf8_file_names_round_trip_through_the_pseudo_label_json(tmp_path):
    dicts = load_image_folder(_odd_folder(tmp_path))
    out = str(tmp_path / "pl.json")
    with Records() as log:
        summary = generate_pseudo_labels(_OneBox(), dicts, out, mapper=_read_mapper,
                                         categories=[{"id": 1, "name": "thing"}], thresholds=[0.5],
                                         batch_size=2, progress=False, with_masks=False)
    assert summary["images"] == 3 and summary["non_utf8_names"] == [repr(ODD)]
    assert log.count(repr(ODD)) == 1 and log.count("not UTF-8") == 1
    data = json.load(open(out))
    root = data["info"]["image_root"]
    assert sorted(os.fsencode(i["file_name"]) for i in data["images"]) == sorted([b"a.png", b"c.png", ODD])
    assert all(os.path.isfile(os.path.join(root, i["file_name"])) for i in data["images"])  # same files back
    with open(out + ".errors.txt", "rb") as f:
        assert BROKEN in f.read()


# 2. 16-bit images
def test_16bit_png_reads_as_a_gradient_not_white(tmp_path):
    ramp = np.linspace(0, 65535, 128).round().astype(np.uint16)[None].repeat(8, 0)
    path = str(tmp_path / "g16.png")
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")
    expected = np.rint(ramp / 257.0).astype(np.uint8)
    for fmt in ("RGB", "BGR", None):
        img = read_image(path, format=fmt)
        assert img.dtype == np.uint8 and img.shape[:2] == (8, 128)
        np.testing.assert_array_equal(img.reshape(8, 128, -1)[..., 0], expected)  # None: 2-D "L"
    assert read_image(path, format="L")[0, ::32, 0].tolist() == [0, 64, 129, 193]
    floats = str(tmp_path / "f.tif")
    Image.fromarray(np.linspace(0, 1, 64, dtype=np.float32)[None].repeat(4, 0)).save(floats)
    with pytest.raises(UnreadableImage, match=r"f\.tif: F image with values 0\.0\.\.1\.0, not a 16-bit range"):
        read_image(floats)  # refused by name, not guessed


def test_zero_proposal_warning_points_to_an_errors_file_that_exists(tmp_path):
    good = _image(str(tmp_path / "good.png"))
    flat = str(tmp_path / "flat.png")
    Image.fromarray(np.full((72, 96, 3), 90, np.uint8)).save(flat)  # no box passes SoCo's filter
    dicts = [{"file_name": good, "image_id": 1}, {"file_name": flat, "image_id": 2}]
    out = str(tmp_path / "props.pkl")
    summary = generate_proposals(dicts, out, proposal_size=64, workers=1, progress=False)
    assert summary["errors"] == [] and summary["no_proposals"] == 1
    with Records() as log:
        check_proposal_file(out, dicts, "flat_set")
    assert log.count(f"see {out}.errors.txt") == 1
    assert open(out + ".errors.txt").read() == f"{flat}\tno box passed the filter\n"


# 3. a COCO json with no usable annotation
def _coco(tmp_path, images, annotations, name="ann.json"):
    path = tmp_path / name
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "thing"}]}))
    (tmp_path / "imgs").mkdir(exist_ok=True)
    return str(path), str(tmp_path / "imgs")


def _ann(i, image_id, bbox, crowd=0):
    return {"id": i, "image_id": image_id, "category_id": 1, "bbox": bbox, "area": 1.0, "iscrowd": crowd}


def _train_cfg(name):
    cfg = get_detpre_cfg()
    cfg.DATASETS.TRAIN = (name,)
    return cfg


def test_empty_training_set_names_the_json_and_why_each_annotation_was_dropped(tmp_path, names):
    images = [{"id": k, "file_name": f"{k}.png", "height": 40, "width": 50} for k in (1, 2)]
    json_file, root = _coco(tmp_path, images, [_ann(1, 1, [1, 1, 9, 9], crowd=1)])
    name = names("crowd")
    register_coco(name, json_file, root)
    with pytest.raises(DetpreError) as e:
        train_dataset_dicts(_train_cfg(name))
    msg = str(e.value)
    assert "\n" not in msg and f"COCO json {json_file}" in msg
    assert "2 image(s), 1 annotation(s) of which 1 crowd (iscrowd=1) and 0 degenerate" in msg
    assert "1 image(s) without annotations and 1 with only crowd ones" in msg
    assert "DATALOADER.FILTER_EMPTY_ANNOTATIONS" in msg


def test_json_without_images_and_unregistered_train_set_are_one_line_errors(tmp_path, names):
    json_file, root = _coco(tmp_path, [], [])
    name = names("noimg")
    register_coco(name, json_file, root)
    with pytest.raises(DetpreError, match=re.escape(f"{name} (COCO json {json_file}): no images")):
        train_dataset_dicts(_train_cfg(name))
    with pytest.raises(DetpreError, match=r"'no_such_set', which is not registered"):
        train_dataset_dicts(_train_cfg("no_such_set"))


def test_only_degenerate_boxes_are_warned_about_with_their_count(tmp_path, names):
    json_file, root = _coco(tmp_path, [{"id": 1, "file_name": "a.png", "height": 72, "width": 96}],
                            [_ann(1, 1, [5, 5, 0, 10]), _ann(2, 1, [5, 5, 10, 0])])
    _image(os.path.join(root, "a.png"))
    name = names("degenerate")
    register_coco(name, json_file, root)
    with Records() as log:
        assert len(train_dataset_dicts(_train_cfg(name))) == 1
    assert log.count("has no usable box") == 1 and log.count("2 degenerate (zero width or height)") == 1


# 4. registration, config and output errors: DetpreErrors, one line from the tools
def _cfg_file(tmp_path, text, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_registration_errors_are_detpre_errors_naming_the_key(tmp_path, names):
    cfg = get_detpre_cfg()
    cfg.DATASETS.COCO = [[names("c"), str(tmp_path / "nope.json"), str(tmp_path)]]
    with pytest.raises(DetpreError, match=r"DATASETS\.COCO\[0\]: json_file .*/nope\.json") as e:
        register_from_config(cfg)
    assert isinstance(e.value, FileNotFoundError)  # what callers caught before
    cfg = get_detpre_cfg()
    cfg.DATASETS.VOC = [[names("v"), str(tmp_path), "train"]]
    with pytest.raises(DetpreError, match=r"DATASETS\.VOC\[0\]: .*Annotations not found"):
        register_from_config(cfg)
    cfg = get_detpre_cfg()
    cfg.DATASETS.FOLDER = [[names("f")]]
    with pytest.raises(DetpreError, match=r"DATASETS\.FOLDER\[0\] = .*expected \[name, image_dir\]"):
        register_from_config(cfg)


def _run_tool_main(main, capsys, *args):
    with pytest.raises(SystemExit) as e:
        main(*args)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and err and "Traceback" not in "\n".join(err)
    return err[-1]


def test_generate_tools_print_config_and_registration_errors_as_one_line(tmp_path, capsys, monkeypatch, names):
    props = _tool("generate_proposals")
    no_base = _cfg_file(tmp_path, '_BASE_: "missing/Base.yaml"\n')
    line = _run_tool_main(props.main, capsys, ["--config-file", no_base, "--dataset", "x", "--output", "o.pkl"])
    assert line.startswith(f"detpre: error: config {no_base}: its _BASE_ ")
    assert "missing/Base.yaml does not exist" in line
    bad_coco = _cfg_file(tmp_path, f"DATASETS:\n  COCO: [['{names('t')}', '{tmp_path}/none.json', '{tmp_path}']]\n",
                         "coco.yaml")
    line = _run_tool_main(props.main, capsys, ["--config-file", bad_coco, "--dataset", "x", "--output", "o.pkl"])
    assert line.startswith("detpre: error: DATASETS.COCO[0]: json_file of data set") and "none.json" in line
    line = _run_tool_main(props.main, capsys, ["--dataset", "nowhere_set", "--output", "o.pkl"])
    assert line.startswith("detpre: error: --dataset 'nowhere_set' is not registered")

    labels = _tool("generate_pseudo_labels")
    monkeypatch.setattr(labels, "setup_logger", lambda **kw: None)  # keep this process's loggers as they are
    for argv, text in (([no_base, "--dataset", "x"], "missing/Base.yaml does not exist"),
                       ([bad_coco, "--weights", no_base, "--dataset", "x"], "none.json"),
                       ([os.path.join(REPO, "configs/demo/mask_rcnn_R18_FPN_tiny.yaml"), "--dataset", "x"],
                        "no teacher weights")):
        monkeypatch.setattr(sys, "argv", ["generate_pseudo_labels.py", "--config-file", *argv, "--output", "o.json"])
        line = _run_tool_main(labels.main, capsys)
        assert line.startswith("detpre: error: ") and text in line


def test_locked_read_only_or_full_output_is_one_line_from_generate_proposals(tmp_path, capsys, monkeypatch):
    import detpre.data.proposals.generate as gen

    folder = str(tmp_path / "imgs")
    os.makedirs(folder)
    _image(os.path.join(folder, "a.png"))
    out = str(tmp_path / "p.pkl")
    argv = ["--image-dir", folder, "--output", out, "--workers", "1", "--proposal-size", "64"]
    main = _tool("generate_proposals").main
    with open(out + ".lock", "w") as f:
        json.dump({"pid": 1, "host": socket.gethostname()}, f)  # pid 1 is alive
    line = _run_tool_main(main, capsys, argv)
    assert line.startswith(f"detpre: error: {out} is being written by process 1") and "delete" in line
    os.remove(out + ".lock")

    def read_only(path, what):
        raise PermissionError(errno.EROFS, "Read-only file system", path + ".lock")

    monkeypatch.setattr(gen, "output_lock", read_only)
    line = _run_tool_main(main, capsys, argv)
    assert line == (f"detpre: error: cannot write the proposal file {out}: {out}.lock: Read-only file system; "
                    "fix the folder's permissions or write it elsewhere")
    monkeypatch.undo()

    def full(path, *args):
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(gen, "write_proposal_file", full)
    line = _run_tool_main(main, capsys, argv)
    assert line.startswith(f"detpre: error: cannot write the proposal file {out}: {out}: No space left on device; "
                           "free space there and rerun the same command")
    assert not os.path.exists(out + ".lock")


def test_full_disk_while_pseudo_labelling_names_the_output(tmp_path, monkeypatch):
    import detpre.pseudo_labels.generate as gen

    path = _image(str(tmp_path / "a.png"))

    def full(data, p):
        raise OSError(errno.ENOSPC, "No space left on device", p)

    monkeypatch.setattr(gen, "write_compact_json", full)
    out = str(tmp_path / "pl.json")
    with pytest.raises(DetpreError, match=rf"cannot write the pseudo-label json {out}: .*No space left on device; "
                                          "free space there"):
        generate_pseudo_labels(_OneBox(), [{"file_name": path, "image_id": 1}], out, mapper=_read_mapper,
                               categories=[{"id": 1, "name": "thing"}], thresholds=[0.5], progress=False,
                               with_masks=False)


def test_train_net_prints_a_registration_error_as_one_line(tmp_path):
    cfg = _cfg_file(tmp_path, f'_BASE_: "{REPO}/configs/demo/mask_rcnn_R18_FPN_tiny.yaml"\n'
                              f"DATASETS:\n  VOC: [['_bad_voc', '{tmp_path}/novoc', 'train']]\n")
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, os.path.join(REPO, "tools/train_net.py"), "--config-file", cfg,
                        "OUTPUT_DIR", str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(
        f"detpre: error: DATASETS.VOC[0]: data set '_bad_voc': {tmp_path}/novoc/Annotations not found")


# 5. --eval-only without weights
def test_eval_only_without_weights_warns_in_one_line(tmp_path, capsys):
    from detpre.engine.launch import argument_parser

    warn = _tool("train_net")._warn_random_eval
    config = os.path.join(REPO, "configs/demo/mask_rcnn_R18_FPN_tiny.yaml")
    out = str(tmp_path / "out")
    args = argument_parser().parse_args(["--config-file", config, "--eval-only", "OUTPUT_DIR", out])
    assert warn(args)
    assert capsys.readouterr().err.strip() == (
        "detpre: warning: --eval-only with MODEL.WEIGHTS '' evaluates a randomly initialized model; "
        "pass MODEL.WEIGHTS path/to/model_final.pth to evaluate trained weights")
    assert not warn(argument_parser().parse_args(["--config-file", config, "--eval-only", "MODEL.WEIGHTS", "m.pth"]))
    os.makedirs(out)
    open(os.path.join(out, "model_final.pth"), "wb").close()
    assert not warn(argument_parser().parse_args(["--config-file", config, "--eval-only", "--resume",
                                                  "OUTPUT_DIR", out]))  # --resume loads that checkpoint
    assert capsys.readouterr().err == ""


# 6. a training set smaller than one batch
def test_one_image_training_set_warns_that_batches_repeat_it(tmp_path, names):
    folder = tmp_path / "one"
    folder.mkdir()
    _image(str(folder / "only.png"))
    name = names("one")
    cfg = get_detpre_cfg(os.path.join(REPO, "configs/demo/fastmoco_R18_tiny.yaml"),
                         ["DATASETS.FOLDER", [[name, str(folder)]], "DATASETS.TRAIN", (name,),
                          "SOLVER.IMS_PER_BATCH", 4, "DATASETS.DEMO_ROOT", str(tmp_path / "demo")])
    register_from_config(cfg)
    with Records() as log:
        build_train_loader(cfg)
    assert log.count(f"DATASETS.TRAIN ['{name}'] has 1 image(s), fewer than the 4 of one batch per process "
                     "(SOLVER.IMS_PER_BATCH=4 over 1 process(es))") == 1
    assert not warn_if_smaller_than_batch(cfg, 4)


# 7. COCO file_names leaving image_root
@pytest.mark.parametrize("entry,why", [
    ("../outside/x.png", "climbs with '..' out of"),
    ("ABS", "is an absolute path outside"),
    ("link.png", "is a symlink to a file outside"),
    ("linked_dir/x.png", "lies in a symlinked folder outside"),
])
def test_coco_file_names_outside_image_root_are_refused_unless_allowed(tmp_path, names, entry, why):
    outside, root = tmp_path / "outside", str(tmp_path / "imgs")
    outside.mkdir()
    os.makedirs(root)
    _image(str(outside / "x.png"))
    _image(os.path.join(root, "in.png"))
    os.symlink(outside / "x.png", os.path.join(root, "link.png"))
    os.symlink(outside, os.path.join(root, "linked_dir"))
    entry = str(outside / "x.png") if entry == "ABS" else entry
    images = [{"id": 1, "file_name": "in.png", "height": 72, "width": 96},
              {"id": 2, "file_name": entry, "height": 72, "width": 96},
              {"id": 3, "file_name": os.path.join(root, "in.png"), "height": 72, "width": 96}]  # absolute, inside
    json_file, root = _coco(tmp_path, images, [])
    cfg = get_detpre_cfg()
    cfg.DATASETS.DEMO_ROOT = str(tmp_path / "demo")
    cfg.DATASETS.COCO = [[names("strict"), json_file, root]]
    register_from_config(cfg)
    with pytest.raises(DetpreError) as e:
        DatasetCatalog.get(cfg.DATASETS.COCO[0][0])
    assert str(e.value) == (f"COCO json {json_file}: images[1] (id 2) file_name {entry!r} {why} image_root {root}; "
                            "fix the json or image_root, or set DATASETS.ALLOW_OUTSIDE_ROOT True if that json is "
                            "trusted to name files anywhere")
    cfg.DATASETS.ALLOW_OUTSIDE_ROOT = True
    cfg.DATASETS.COCO = [[names("allowed"), json_file, root]]
    register_from_config(cfg)
    assert len(DatasetCatalog.get(cfg.DATASETS.COCO[0][0])) == 3


# 8. seeds of the demo configs
def test_every_trained_demo_config_has_a_seed_that_the_command_line_overrides():
    folder = os.path.join(REPO, "configs/demo")
    trained = [f for f in sorted(os.listdir(folder)) if f.endswith(".yaml") and not f.startswith("Base")]
    assert "mask_rcnn_R18_FPN_tiny.yaml" in trained
    for f in trained:
        assert get_detpre_cfg(os.path.join(folder, f)).SEED >= 0, f
        assert get_detpre_cfg(os.path.join(folder, f), ["SEED", 7]).SEED == 7, f  # the runner's per-run seed


def test_missing_config_or_base_is_one_error_naming_the_file_that_refers_to_it(tmp_path):
    from detpre.errors import DetpreFileNotFoundError

    (tmp_path / "a.yaml").write_text('_BASE_: "gone.yaml"\nSEED: 1\n')
    (tmp_path / "b.yaml").write_text('_BASE_: "a.yaml"\n')
    with pytest.raises(DetpreFileNotFoundError, match=r"config .*a\.yaml: its _BASE_ .*gone\.yaml does not exist"):
        get_detpre_cfg(str(tmp_path / "b.yaml"))
    with pytest.raises(DetpreFileNotFoundError, match=r"--config-file .*none\.yaml does not exist"):
        get_detpre_cfg(str(tmp_path / "none.yaml"))


def test_detectron2s_own_mapper_reads_16bit_images_through_detpre(tmp_path):
    """DatasetMapper (fine-tuning, evaluation) calls detection_utils.read_image, which would clip
    a 16-bit image at 255; detpre._compat gives it detpre's reader (8-bit images unchanged)."""
    from detectron2.data import DatasetMapper, detection_utils

    ramp = np.linspace(0, 65535, 64).round().astype(np.uint16)[None].repeat(8, 0)
    path = str(tmp_path / "g16.png")
    Image.fromarray(ramp).save(path)
    rgb8 = str(tmp_path / "rgb8.png")
    Image.fromarray(np.arange(8 * 64 * 3, dtype=np.uint8).reshape(8, 64, 3)).save(rgb8)
    cfg = get_detpre_cfg()
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 8, 1000
    mapper = DatasetMapper(cfg, is_train=False)
    image = mapper({"file_name": path, "height": 8, "width": 64, "image_id": 0})["image"]
    expected = torch.from_numpy(np.rint(ramp / 257.0).astype(np.uint8))
    assert torch.equal(image[0], expected) and torch.equal(image[1], expected)  # a ramp, not white
    assert np.array_equal(detection_utils.read_image(rgb8, "BGR"), np.asarray(Image.open(rgb8))[..., ::-1])
