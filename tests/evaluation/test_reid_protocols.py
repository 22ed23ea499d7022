"""Each data set's evaluation protocol against hand-computed results."""
import _reid_miniatures as mini
import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog

from detpre.data.datasets.reid import register_reid
from detpre.evaluation.reid import ReIDEvaluator, reid_metrics, vehicleid_metrics, vehicleid_trials

# VehicleID toy: identity 1 = images {0, 1}, identity 2 = images {2, 3}. Image 0 is nearer to
# identity 2 than to image 1; every other image is nearest its own identity. A trial's gallery
# holds one image of each id; queries are the other two:
#   query 0 (gallery has 1): identity-2 image ranks first, image 1 second -> AP 1/2, top-1 miss
#   query 1 (gallery has 0): image 0 first -> AP 1, hit;  queries 2, 3: their twin first -> hit
# so a trial with image 1 in the gallery scores mAP 75, top-1 50; otherwise 100, 100.
X = np.array([0.0, -0.5, 0.3, 0.35])  # 1-D features realising these distances
PIDS = [1, 1, 2, 2]
DIST = np.abs(X[:, None] - X[None, :])


def _expected(trials):
    k = sum(1 in g for _, g in trials) / len(trials)  # share of trials with image 1 in gallery
    return 100 - 25 * k, 100 - 50 * k


def test_vehicleid_trials_one_gallery_image_per_identity():
    pids = [4, 4, 4, 9, 9, 7]
    trials = vehicleid_trials(pids, trials=10, seed=3)
    assert len(trials) == 10
    for q, g in trials:
        assert sorted(np.asarray(pids)[g].tolist()) == [4, 7, 9]  # one per identity
        assert sorted(q.tolist() + g.tolist()) == list(range(6))  # the rest are queries
    assert len({tuple(g) for _, g in trials}) > 1  # trials draw different galleries
    again = vehicleid_trials(pids, trials=10, seed=3)
    assert all((a[1] == b[1]).all() for a, b in zip(trials, again))  # fixed seeds


def test_vehicleid_metrics_hand_computed():
    trials = vehicleid_trials(PIDS, trials=10, seed=0)
    mAP, top1 = _expected(trials)
    res, n = vehicleid_metrics(DIST, PIDS, trials=10, seed=0, topk=(1, 2))
    assert n == 2
    assert res["mAP"] == pytest.approx(mAP) and res["top-1"] == pytest.approx(top1)
    assert res["top-2"] == pytest.approx(100.0)
    assert 0 < sum(1 in g for _, g in trials) < 10  # both cases occur: the average is tested
    # a single trial with image 1 drawn for the gallery: exactly the hand-worked case
    seed = next(s for s in range(50) if 1 in vehicleid_trials(PIDS, 1, s)[0][1])
    res, _ = vehicleid_metrics(DIST, PIDS, trials=1, seed=seed, topk=(1,))
    assert res == {"mAP": pytest.approx(75.0), "top-1": pytest.approx(50.0)}


def test_evaluator_vehicleid_protocol_from_metadata():
    name = "proto_toy_vehicleid_test_800"
    if name not in MetadataCatalog.list():
        MetadataCatalog.get(name).set(reid_protocol="vehicleid", evaluator_type="reid")
    ev = ReIDEvaluator(name, topk=(1, 2), distributed=False)
    assert ev.protocol == "vehicleid"
    inputs = [{"reid_split": "test", "pid": p, "camid": 0, "index": i} for i, p in enumerate(PIDS)]
    outputs = [{"feature": torch.tensor([x])} for x in X]
    order = [2, 0, 3, 1]  # arrival order (e.g. gathered from processes) must not matter
    ev.process([inputs[i] for i in order], [outputs[i] for i in order])
    res = ev.evaluate()["reid"]
    mAP, top1 = _expected(vehicleid_trials(PIDS, 10, 0))
    assert res["mAP"] == pytest.approx(mAP) and res["top-1"] == pytest.approx(top1)
    with pytest.raises(ValueError, match="unknown reid_protocol"):
        ReIDEvaluator("x", protocol="cuhk03")


def test_market_protocol_without_cameras_counts_every_gallery_entry():
    dist = [[0.1, 0.2, 0.3]]
    # same id + same camera at rank 1: excluded with cameras, a hit without
    res, _ = reid_metrics(dist, [1], [1, 2, 1], [1], [1, 2, 2], topk=(1,))
    assert res["mAP"] == pytest.approx(50.0) and res["top-1"] == 0.0
    res, _ = reid_metrics(dist, [1], [1, 2, 1], topk=(1,))
    assert res["mAP"] == pytest.approx(100 * (1 + 2 / 3) / 2) and res["top-1"] == 100.0
    with pytest.raises(ValueError, match="both"):
        reid_metrics(dist, [1], [1, 2, 1], [1], None)


def test_veri776_protocol_end_to_end(tmp_path):
    """Cameras parsed from VeRi names drive the exclusion: the query 0002_c002 and the gallery
    0002_c002 are the same vehicle and camera, so that nearest entry is left out; the
    0005 vehicle ranks next, the 0002 vehicle seen by camera 3 last -> AP 1/2, top-1 miss."""
    register_reid("proto_veri", mini.veri(tmp_path / "veri"), "veri776")
    dicts = DatasetCatalog.get("proto_veri_test")
    assert [(d["pid"], d["camid"]) for d in dicts] == [(2, 2), (2, 2), (2, 3), (5, 2)]
    ev = ReIDEvaluator("proto_veri_test", topk=(1, 2), distributed=False)
    assert ev.protocol == "market"
    feats = [0.0, 0.01, 0.5, 0.2]  # query, then gallery in name_test.txt order
    ev.process(dicts, [{"feature": torch.tensor([f])} for f in feats])
    res = ev.evaluate()["reid"]
    assert res == {"mAP": pytest.approx(50.0), "top-1": 0.0, "top-2": pytest.approx(100.0)}


def test_blockwise_ranking_matches_full_matrix():
    """The evaluator ranks MSMT17-sized galleries block by block: same result as one matrix."""
    rng = np.random.RandomState(0)
    qf, gf = torch.randn(300, 4), torch.randn(40, 4)
    qp, gp = rng.randint(0, 5, 300), rng.randint(0, 5, 40)
    qc, gc = rng.randint(0, 3, 300), rng.randint(0, 3, 40)
    full, n = reid_metrics(torch.cdist(qf.double(), gf.double()).pow(2).numpy(), qp, gp, qc, gc)
    ev = ReIDEvaluator("proto_block", distributed=False, protocol="market")
    ev.process([{"reid_split": "query", "pid": p, "camid": c} for p, c in zip(qp, qc)] +
               [{"reid_split": "gallery", "pid": p, "camid": c} for p, c in zip(gp, gc)],
               [{"feature": f} for f in torch.cat([qf, gf])])
    assert n > 256 and ev.evaluate()["reid"] == pytest.approx(full)
