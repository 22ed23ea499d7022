"""User mistakes give one clear line: unknown config key, unwritable OUTPUT_DIR, missing proposal file."""
import os
import subprocess
import sys

import pytest
from _reliability_data import REPO, random_images, register_list, tiny_cfg

from detpre.config import get_detpre_cfg
from detpre.data.build import train_dataset_dicts
from detpre.engine.defaults import check_output_dir
from detpre.errors import DetpreError


def test_unknown_config_key_suggests_the_closest(tmp_path):
    with pytest.raises(DetpreError, match=r"unknown config key INPUT.SOCO.NUM_PROPOSAL \(in the command "
                                          r"line\); did you mean INPUT.SOCO.NUM_PROPOSALS\?"):
        get_detpre_cfg(opts=["INPUT.SOCO.NUM_PROPOSAL", 3])
    cfg_file = tmp_path / "typo.yaml"
    cfg_file.write_text("SOLVER:\n  MAX_ITERS: 3\n")
    with pytest.raises(DetpreError, match=r"SOLVER.MAX_ITERS \(in .*typo.yaml\); did you mean SOLVER.MAX_ITER\?"):
        get_detpre_cfg(str(cfg_file))


def test_unwritable_output_dir(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(DetpreError, match=r"OUTPUT_DIR=.*a_file/out is not writable"):
        check_output_dir(str(blocker / "out"))


def test_missing_proposal_file_names_it(tmp_path):
    paths = random_images(tmp_path / "imgs", 2)
    register_list("_rel_props_set", [{"file_name": p, "image_id": i, "height": 48, "width": 56}
                                     for i, p in enumerate(paths)])
    missing = str(tmp_path / "props.pkl")
    cfg = tiny_cfg("soco_R18_FPN_tiny.yaml", tmp_path / "out", "DATASETS.TRAIN", ("_rel_props_set",),
                   "DATASETS.PROPOSAL_FILES_TRAIN", (missing,))
    with pytest.raises(DetpreError, match=rf"proposal file {missing} .* does not exist; make it with "
                                          r"tools/generate_proposals.py --dataset _rel_props_set"):
        train_dataset_dicts(cfg)


def test_train_net_prints_one_line_not_a_traceback(tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    cmd = [sys.executable, os.path.join(REPO, "tools/train_net.py"), "--config-file",
           os.path.join(REPO, "configs/demo/mask_rcnn_R18_FPN_tiny.yaml"),
           "OUTPUT_DIR", str(tmp_path / "out"), "SOLVER.MAX_ITERS", "3"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        "detpre: error: unknown config key SOLVER.MAX_ITERS (in the command line); "
        "did you mean SOLVER.MAX_ITER?")
