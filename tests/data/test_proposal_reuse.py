"""A proposal file is reused only for the images and settings it was made with, and it reaches
the data set as detectron2 would load it, without detectron2's pickle.load."""
import pickle

import numpy as np
import pytest
from _reliability_data import random_images
from detectron2.data.build import load_proposals_into_dataset
from detectron2.structures import BoxMode

from detpre.data.proposals import ProposalFilter, generate_proposals, read_proposal_file
from detpre.data.proposals.proposal_file import check_proposal_file, load_proposals_into_dicts
from detpre.errors import DetpreError

FAST = dict(proposal_filter=ProposalFilter.disabled(5), proposal_size=32, workers=1, progress=False)


def _records(folder, n=3):
    return [{"file_name": p, "image_id": 10 + i} for i, p in enumerate(random_images(folder, n, seed=0))]


def test_a_resaved_image_of_the_same_size_is_caught_by_its_content(tmp_path):
    recs = _records(tmp_path / "a")
    out = str(tmp_path / "props.pkl")
    generate_proposals(recs, out, **FAST)
    check_proposal_file(out, recs, "set_a")  # the very images: fine
    path = recs[1]["file_name"]
    raw = bytearray(open(path, "rb").read())
    raw[len(raw) // 2] ^= 0xFF  # other content, same size and name
    open(path, "wb").write(bytes(raw))
    with pytest.raises(DetpreError, match=r"image id 11 is im1\.jpg \(\d+ bytes\) here but was im1\.jpg "
                                          r"\(\d+ bytes, other content\)"):
        check_proposal_file(out, recs, "set_a")


def test_rerun_with_other_settings_is_refused_unless_overwritten(tmp_path):
    recs = _records(tmp_path / "a")
    out = str(tmp_path / "props.pkl")
    first = generate_proposals(recs, out, **FAST)
    assert not first["skipped"]
    assert generate_proposals(recs, out, **FAST)["skipped"]  # same settings: reused
    other = dict(FAST, proposal_size=48)
    with pytest.raises(DetpreError, match=r"props\.pkl exists but was made with other settings .*"
                                          r"pass --overwrite to regenerate it"):
        generate_proposals(recs, out, **other)
    assert not generate_proposals(recs, out, overwrite=True, **other)["skipped"]
    assert generate_proposals(recs, out, **other)["skipped"]


def test_proposals_reach_the_records_as_detectron2_loads_them(tmp_path):
    recs = _records(tmp_path / "a")
    out = str(tmp_path / "props.pkl")
    generate_proposals(recs, out, **FAST)
    data = read_proposal_file(out)
    data["objectness_logits"] = [np.random.RandomState(i).rand(len(b)).astype(np.float32)
                                 for i, b in enumerate(data["boxes"])]  # an order to sort by
    data["bbox_mode"] = BoxMode.XYWH_ABS
    theirs = str(tmp_path / "theirs.pkl")
    with open(theirs, "wb") as f:
        pickle.dump(data, f)
    ours = load_proposals_into_dicts([dict(r) for r in recs], data)
    reference = load_proposals_into_dataset([dict(r) for r in recs], theirs)
    for a, b in zip(ours, reference):
        assert a["proposal_bbox_mode"] == b["proposal_bbox_mode"] == BoxMode.XYWH_ABS
        np.testing.assert_array_equal(a["proposal_boxes"], b["proposal_boxes"])
        np.testing.assert_array_equal(a["proposal_objectness_logits"], b["proposal_objectness_logits"])
    assert len(ours) == 3 and all(len(r["proposal_boxes"]) > 0 for r in ours)
