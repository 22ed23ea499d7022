"""Box AP with and without the classes (detpre.evaluation.ap_breakdown), on data sets made by hand."""
import json
import math

import pytest
from _catalog import names_freed

from detpre.evaluation.ap_breakdown import STATS, ap_breakdown
from detpre.evaluation.image_bootstrap import load_coco


def _gt(tmp_path, objects):
    """A COCO json of one 100x100 image per object (category id, [x, y, w, h])."""
    images = [{"id": i + 1, "file_name": f"{i}.jpg", "height": 100, "width": 100} for i in range(len(objects))]
    anns = [{"id": i + 1, "image_id": i + 1, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
            for i, (c, b) in enumerate(objects)]
    cats = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return str(path)


def _results(tmp_path, dets):
    path = tmp_path / "results.json"
    path.write_text(json.dumps([{"image_id": i, "category_id": c, "bbox": b, "score": s} for i, c, b, s in dets]))
    return str(path)


OBJECTS = [(1, [10, 10, 50, 50]), (2, [20, 20, 50, 50])]  # medium objects (area 2500)


def test_swapped_classes_score_zero_with_classes_and_full_without(tmp_path):
    gt = _gt(tmp_path, OBJECTS)
    r = ap_breakdown(load_coco(gt), _results(tmp_path, [(1, 2, OBJECTS[0][1], 0.9), (2, 1, OBJECTS[1][1], 0.8)]))
    assert r["AP"] == pytest.approx(0.0) and r["agnostic AP"] == pytest.approx(100.0)
    assert r["agnostic AR100"] == pytest.approx(100.0)
    assert math.isnan(r["APs"]) and math.isnan(r["APl"])  # no small or large object
    assert r["agnostic APm"] == pytest.approx(100.0)


def test_a_loose_box_counts_at_iou_50_not_75(tmp_path):
    gt = _gt(tmp_path, OBJECTS)
    loose = [10, 10, 50, 36]  # IoU 0.72 with the first object
    r = ap_breakdown(load_coco(gt), _results(tmp_path, [(1, 1, loose, 0.9), (2, 2, OBJECTS[1][1], 0.8)]))
    # class 1: found at IoU thresholds 0.5-0.7 (5 of COCO's 10), class 2 at all 10
    assert r["AP50"] == pytest.approx(100.0) and r["AP75"] == pytest.approx(50.0)
    assert r["AP"] == pytest.approx(100.0 * (5 / 10 + 1) / 2)
    # one class pooled, ranked together: at IoU 0.75 the loose box (0.9) is a false positive ranked
    # above the true one, so precision is 1/2 up to recall 1/2: 51 of COCO's 101 recall points
    assert r["agnostic AP50"] == pytest.approx(100.0)
    assert r["agnostic AP75"] == pytest.approx(100.0 * 0.5 * 51 / 101)


def test_no_detection_and_a_bad_file(tmp_path):
    gt = _gt(tmp_path, OBJECTS)
    r = ap_breakdown(load_coco(gt), _results(tmp_path, []))
    assert r["AP"] == 0.0 and r["agnostic AP"] == 0.0
    assert math.isnan(r["APs"]) and math.isnan(r["agnostic APl"])  # no ground truth of that size
    bad = tmp_path / "cut.json"
    bad.write_text('[{"image_id": 1')
    with pytest.raises(ValueError, match="cut.json: not a COCO results file"):
        ap_breakdown(load_coco(gt), str(bad))


def test_a_duplicate_under_another_label_is_a_false_positive_without_classes(tmp_path):
    """detectron2 writes one box per class: a second, lower-scored label on an object is a false
    positive in class-agnostic scoring (the object matches once), and leaves AR100 alone."""
    gt = _gt(tmp_path, OBJECTS)
    dets = [(1, 1, OBJECTS[0][1], 0.9), (2, 2, OBJECTS[1][1], 0.8), (1, 2, OBJECTS[0][1], 0.7)]
    r = ap_breakdown(load_coco(gt), _results(tmp_path, dets))
    assert r["AP"] == pytest.approx(100.0)  # class 2's extra box ranks below its true one
    assert r["agnostic AR100"] == pytest.approx(100.0)
    assert r["agnostic AP50"] == pytest.approx(100.0)  # both objects found before the duplicate


def test_the_tool_prints_each_group_and_its_difference(tmp_path, capsys):
    import importlib.util
    import os

    gt = _gt(tmp_path, OBJECTS)
    runs = {}
    for name, dets in (("good", [(1, 1, OBJECTS[0][1], 0.9), (2, 2, OBJECTS[1][1], 0.8)]),
                       ("swapped", [(1, 2, OBJECTS[0][1], 0.9), (2, 1, OBJECTS[1][1], 0.8)])):
        run = tmp_path / name
        (run / "inference" / "toy_val").mkdir(parents=True)
        (run / "config.yaml").write_text("DATASETS:\n  TEST: ('toy_val',)\n")
        (run / "inference" / "toy_val" / "coco_instances_results.json").write_text(
            json.dumps([{"image_id": i, "category_id": c, "bbox": b, "score": s} for i, c, b, s in dets]))
        runs[name] = str(run)
    from detectron2.data import DatasetCatalog, MetadataCatalog

    path = os.path.join(os.path.dirname(__file__), "..", "..", "tools", "ap_breakdown.py")
    spec = importlib.util.spec_from_file_location("ap_breakdown_tool", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    with names_freed(["toy_val"]):
        DatasetCatalog.register("toy_val", lambda: [])
        MetadataCatalog.get("toy_val").set(json_file=gt)
        assert tool.main(["--group", f"good={runs['good']}", "--group", f"swapped={runs['swapped']}"]) == 0
    out = capsys.readouterr().out
    diff = next(line for line in out.splitlines() if "swapped - good" in line)
    cells = [c.strip() for c in diff.strip("|").split("|")]
    assert cells[2] == "-100.00"  # AP: every label wrong
    assert cells[2 + len(STATS)] == "+0.00"  # class-agnostic AP: the same boxes
    with pytest.raises(SystemExit, match="give NAME=DIR"):
        tool.main(["--group", "soco=,"])
