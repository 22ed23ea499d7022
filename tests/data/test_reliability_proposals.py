"""Proposal files tied to their data set; one writer per output (proposals, pseudo-labels, jigsaw)."""
import json
import os
import pickle
import socket
import subprocess

import numpy as np
import pytest
from _reliability_data import Records, random_images, truncate

from detpre.data.jigsaw import ensure_samples
from detpre.data.proposals import ProposalFilter, generate_proposals, read_proposal_file
from detpre.data.proposals.proposal_file import check_proposal_file
from detpre.errors import DetpreError
from detpre.utils.io import OutputLocked, output_lock

FAST = dict(proposal_filter=ProposalFilter.disabled(5), proposal_size=32, workers=1, progress=False)


def _records(folder, n=3, seed=0):
    return [{"file_name": p, "image_id": 10 + i} for i, p in enumerate(random_images(folder, n, seed=seed))]


def test_proposal_file_is_checked_against_its_data_set(tmp_path):
    recs = _records(tmp_path / "a")
    truncate(recs[2]["file_name"])  # unreadable when generated: zero proposals
    out = str(tmp_path / "props.pkl")
    generate_proposals(recs, out, **FAST)
    with Records() as rec:
        assert check_proposal_file(out, recs, "set_a") == {"num_images": 3, "zero_proposals": 1}
    assert rec.count("1 of 3 images of set_a have no proposals")
    # same ids and file names, other images (another folder): refused, naming the file and the fix
    other = _records(tmp_path / "b", seed=1)
    truncate(other[0]["file_name"], keep=0.9)
    with pytest.raises(DetpreError, match=r"props.pkl was made for other images than set_b's.*"
                                          r"image id 10 is im0.jpg .*generate_proposals.py --dataset set_b"):
        check_proposal_file(out, other, "set_b")
    more = recs + [{"file_name": recs[0]["file_name"], "image_id": 99}]
    with pytest.raises(DetpreError, match=r"no proposals for 1 of 4 images of set_c \(image ids \[99\]\)"):
        check_proposal_file(out, more, "set_c")
    with pytest.raises(DetpreError, match=r"nope.pkl .*does not exist; make it with tools/generate_proposals.py"):
        check_proposal_file(str(tmp_path / "nope.pkl"), recs, "set_a")


def _live_lock(path):
    """A lock on ``path`` held by another live process; returns that process."""
    proc = subprocess.Popen(["sleep", "60"])
    with open(path + ".lock", "w") as f:
        json.dump({"pid": proc.pid, "host": socket.gethostname()}, f)
    return proc


def test_second_writer_stops_and_a_dead_writers_lock_is_taken_over(tmp_path):
    recs = _records(tmp_path / "a", n=2)
    out = str(tmp_path / "props.pkl")
    proc = _live_lock(out)
    try:
        with pytest.raises(OutputLocked, match=rf"props.pkl is being written by process {proc.pid}"):
            generate_proposals(recs, out, **FAST)
        assert not os.path.exists(out) and not os.path.exists(out + ".parts")
    finally:
        proc.kill()
        proc.wait()
    generate_proposals(recs, out, **FAST)  # the owner is dead: its lock is stale
    assert read_proposal_file(out)["ids"] == [10, 11] and not os.path.exists(out + ".lock")
    with output_lock(str(tmp_path / "x")):
        with pytest.raises(OutputLocked):  # even this process cannot take it twice
            with output_lock(str(tmp_path / "x")):
                pass


def test_pseudo_labels_and_jigsaw_samples_are_locked_too(tmp_path):
    from detpre.pseudo_labels import generate_pseudo_labels

    out = str(tmp_path / "pl.json")
    samples = str(tmp_path / "samples.json")
    procs = [_live_lock(out), _live_lock(samples)]
    try:
        with pytest.raises(OutputLocked, match="pl.json is being written"):
            generate_pseudo_labels(None, [{"file_name": "x.jpg"}], out, mapper=None,
                                   categories=[{"id": 1, "name": "a"}], thresholds=[0.5])
        with pytest.raises(OutputLocked, match="samples.json is being written"):
            ensure_samples(samples, {"datasets": ["whatever"]})
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_a_store_without_its_spec_is_never_reused(tmp_path):
    recs = _records(tmp_path / "a", n=2)
    out = str(tmp_path / "props.pkl")
    os.makedirs(out + ".parts")
    fake = {"ids": [10, 11], "boxes": [np.ones((50, 4), np.float32)] * 2, "errors": []}
    with open(os.path.join(out + ".parts", "chunk_0000000.pkl"), "wb") as f:
        pickle.dump(fake, f)  # left by a writer that died before spec.json
    with Records() as rec:
        generate_proposals(recs, out, **FAST)
    assert rec.count("has no spec.json")
    assert all(len(b) <= 5 for b in read_proposal_file(out)["boxes"])
