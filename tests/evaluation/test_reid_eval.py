"""Re-ID mAP / CMC against a hand-worked example (Market protocol)."""
import pytest
import torch

from detpre.evaluation.reid import ReIDEvaluator, reid_metrics
from detpre.registry import EVALUATOR_REGISTRY

G_PIDS = [1, 2, 1, 3, 1]
G_CAMS = [1, 2, 2, 1, 3]


def test_metrics_hand_worked():
    dist = [[0.1, 0.2, 0.3, 0.4, 0.5],   # q0 (id 1, cam 1): g0 same id+cam -> ignored;
            [0.9, 0.1, 0.5, 0.6, 0.7],   #   hits at ranks 2, 4 -> AP (1/2 + 2/4) / 2 = 0.5
            [0.1, 0.2, 0.3, 0.4, 0.5],   # q1 (id 2, cam 1): hit at rank 1 -> AP 1
            [0.5, 0.4, 0.3, 0.2, 0.1]]   # q2 (id 9): no match -> skipped; q3 (id 3, cam 1): only
    dist.append([0.3, 0.3, 0.3, 0.1, 0.3])  # match is same camera -> skipped
    res, n = reid_metrics(dist, [1, 2, 9, 9, 3], G_PIDS, [1, 1, 1, 1, 1], G_CAMS, topk=(1, 2, 5))
    assert n == 2
    assert res["mAP"] == pytest.approx(75.0)
    assert res["top-1"] == pytest.approx(50.0)
    assert res["top-2"] == pytest.approx(100.0) and res["top-5"] == pytest.approx(100.0)


def test_ties_keep_gallery_order_and_no_valid_query():
    res, n = reid_metrics([[0.0, 0.0]], [1], [2, 1], [1], [2, 2], topk=(1,))
    assert n == 1 and res["top-1"] == 0.0 and res["mAP"] == pytest.approx(50.0)
    res, n = reid_metrics([[0.0]], [1], [1], [1], [1], topk=(1,))
    assert n == 0 and res["mAP"] == 0.0


def test_evaluator_collects_and_ranks():
    ev = EVALUATOR_REGISTRY.get("reid")(None, "toy", None)
    assert isinstance(ev, ReIDEvaluator)
    ev.distributed = False
    ev.reset()
    inputs = [{"reid_split": "query", "pid": 1, "camid": 1}]
    inputs += [{"reid_split": "gallery", "pid": p, "camid": c} for p, c in zip(G_PIDS, G_CAMS)]
    feats = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]  # distance order = gallery order, as q0 above
    ev.process(inputs, [{"feature": torch.tensor([f])} for f in feats])
    res = ev.evaluate()["reid"]
    assert res["mAP"] == pytest.approx(50.0) and res["top-1"] == 0.0 and res["top-5"] == 100.0
    ev.reset()
    ev.process(inputs[1:], [{"feature": torch.tensor([f])} for f in feats[1:]])
    with pytest.raises(ValueError, match="query"):
        ev.evaluate()
