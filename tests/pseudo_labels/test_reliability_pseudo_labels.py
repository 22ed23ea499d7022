"""Pseudo-labelling goes on past a corrupt image; a rerun after the fix recomputes only its chunk."""
import json
import os
import shutil

import torch
from _self_training_data import tiny_cfg, write_images
from detectron2.modeling import build_model

from detpre.pseudo_labels import label_images


def test_corrupt_image_is_recorded_and_rerun_after_fix_keeps_finished_chunks(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_cfg()
    model = build_model(cfg).eval()
    dicts = write_images(tmp_path / "imgs", 6, seed=1)
    kw = dict(model=model, score_threshold=0.05, batch_size=2, chunk_size=2, progress=False)
    clean = str(tmp_path / "clean.json")
    label_images(cfg, dicts, clean, **kw)

    bad = dicts[3]["file_name"]
    shutil.copy(bad, tmp_path / "good_copy.png")
    with open(bad, "wb") as f:
        f.write(b"\x89PNG broken")
    out = str(tmp_path / "pl.json")
    summary = label_images(cfg, dicts, out, **kw)  # goes on
    assert [e[0] for e in summary["errors"]] == [bad]
    data = json.load(open(out))
    assert len(data["images"]) == 5 and "img_003.png" not in {i["file_name"] for i in data["images"]}
    assert bad in open(out + ".errors.txt").read()

    shutil.copy(tmp_path / "good_copy.png", bad)  # the fix
    seen = []
    h = model.register_forward_pre_hook(lambda m, args: seen.append(len(args[0])))
    try:
        summary = label_images(cfg, dicts, out, **kw)
    finally:
        h.remove()
    assert seen == [2]  # only the chunk of the fixed image ran again
    assert summary["errors"] == [] and not os.path.exists(out + ".errors.txt")
    assert open(out).read() == open(clean).read()
    assert not os.path.exists(out + ".parts")
