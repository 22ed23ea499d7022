"""The transfer table shows only what was measured: no ``nan`` columns (mask AP of a Faster R-CNN),
no probe numbers where the probe cannot tell backbones apart, and the seeds and evaluation images
its intervals rest on, with a warning when the images are few."""
import math

from test_backbone_probe import _cfg, _dataset

from detpre.evaluation.backbone_probe import MIN_PROBE_CROPS, evaluate_backbone
from detpre.jobs.report import margin_sentence, transfer_table
from detpre.jobs.transfer import _summary

ONE_CLASS = "one class in the probe's crops (every query gets it)"


def _result(seeds=(0, 1, 2), mask=False, num_images=8, probe=None):
    """``run_transfer``'s result for random init and soco, as benchmark_transfer.json has it."""
    probe = probe or {"knn_top1": 100.0, "linear_top1": 100.0, "num_classes": 1, "cannot_discriminate": ONE_CLASS}
    aps = {"random init": [1.0, 2.0, 3.0, 2.5], "soco": [3.0, 4.5, 5.0, 4.0]}
    runs = {k: [{"bbox/AP": a, "bbox/AP50": 2 * a, **({"segm/AP": a / 2} if mask else {})} for a in v[:len(seeds)]]
            for k, v in aps.items()}
    rows = [{"init": k, "pretrain": None if k == "random init" else {"train_s": 10.0, "iters": 2, "images_per_s": 1.0},
             "probe": dict(probe), "finetune": runs[k], "summary": _summary(runs[k], runs["random init"])}
            for k in runs]
    for label in ("box AP",) + (("mask AP",) if mask else ()):
        d = rows[1]["summary"][label]["vs_random"]
        low, high = d["low"] - 1, d["high"] + 1
        rows[1]["summary"][label]["vs_random_images"] = {
            **d, "low": low, "high": high, "excludes_zero": bool(low > 0 or high < 0), "num_images": num_images}
    return {"seeds": list(seeds), "rows": rows}


def test_one_class_faster_rcnn_on_few_images_shows_what_was_measured():
    text = transfer_table(_result())
    lines = text.splitlines()
    table = "\n".join(ln for ln in lines if ln.startswith("|"))
    assert "nan" not in text.lower()
    assert "mask AP" not in table and "kNN top-1" not in table and "linear top-1" not in table
    assert "not shown: mask AP: no run reported it (the detector has no mask head)" in lines
    assert f"not shown: kNN / linear top-1: {ONE_CLASS}" in lines
    assert lines[0] == ("95% intervals over 3 paired seeds; seeds + images: over the seeds and the 8 evaluation "
                        "images (a bootstrap)")
    assert lines[1].startswith("warning: only 8 evaluation images (< 50)")
    assert "box AP" in table and "Δ box AP [95% CI, seeds + images]" in table
    assert "mask AP" not in margin_sentence(_result()) and "few images" in margin_sentence(_result())
    # 2 pretraining iterations log no iteration time: no seconds, no img/s
    result = _result()
    result["rows"][1]["pretrain"] = {"wall_s": 9.0, "iters": 2, "s_per_iter": math.nan, "train_s": math.nan,
                                     "images_per_s": math.nan}
    text = transfer_table(result)
    assert "nan" not in text.lower() and "| 2 it " in text and "img/s" not in text.splitlines()[-3]
    assert "not shown: pretraining seconds and img/s: no iteration time logged (too few iterations)" in text


def test_enough_images_and_classes_keep_every_column_without_warning():
    probe = {"knn_top1": 40.0, "linear_top1": 50.0, "num_classes": 3, "cannot_discriminate": None}
    text = transfer_table(_result(mask=True, num_images=300, probe=probe))
    assert "not shown" not in text and "warning" not in text and "n/a" not in text
    assert "40.0" in text and "Δ mask AP [95% CI, seeds + images]" in text
    assert text.splitlines()[0].endswith("the 300 evaluation images (a bootstrap)")


def test_one_seed_prints_differences_without_intervals():
    result = _result(seeds=(0,), num_images=300)
    text, sentence = transfer_table(result), margin_sentence(result)
    assert "nan" not in text.lower() and "nan" not in sentence.lower()
    assert text.splitlines()[0].startswith("one seed; 300 evaluation images: each Δ is one pair of runs")
    assert "seeds + images" not in text.splitlines()[-3] and "not shown: seeds + images: one seed" in text
    assert "warning" not in text and "| +2.00 " in text
    assert "soco: box AP +2.00 over random init on one seed" in sentence


def test_a_row_without_an_interval_over_images_reads_na_with_the_reason():
    result = _result(num_images=300)
    result["rows"].append({**result["rows"][1], "init": "jigsaw",
                           "summary": {k: {kk: vv for kk, vv in v.items() if kk != "vs_random_images"}
                                       for k, v in result["rows"][1]["summary"].items()}})
    text = transfer_table(result)
    jigsaw = next(ln for ln in text.splitlines() if ln.startswith("| jigsaw"))
    assert "n/a" in jigsaw and "n/a: seeds + images: no interval over the evaluation images" in text


def test_the_probe_says_when_it_cannot_discriminate(tmp_path):
    cfg = _cfg()
    two = _dataset(tmp_path, n_images=MIN_PROBE_CROPS // 2)  # two crops per image
    assert evaluate_backbone(cfg, "", two, two, crop_size=32, linear=False)["cannot_discriminate"] is None
    few = evaluate_backbone(cfg, "", two[:3], two, crop_size=32, linear=False)
    assert few["cannot_discriminate"].startswith("too few crops (6 train, 50 test")
    one = [{**d, "annotations": [{**a, "category_id": 0} for a in d["annotations"]]} for d in two]
    res = evaluate_backbone(cfg, "", one, one, crop_size=32, linear=False)
    assert res["cannot_discriminate"] == ONE_CLASS and not math.isnan(res["knn_top1"])


def test_a_method_trained_on_the_judged_labels_is_shown_against_its_equal_compute_control():
    """Box pretraining's row gets a Δ to random init given its pretraining + fine-tuning iterations,
    the control's row says what it is, and the margin lines name both comparisons."""
    result = _result(num_images=300, probe={"knn_top1": 40.0, "linear_top1": 50.0, "num_classes": 3})
    random_runs, soco = result["rows"][0]["finetune"], result["rows"][1]
    control_runs = [{"bbox/AP": a} for a in (2.5, 4.0, 4.5)]
    control = {"init": "random init 460 it", "pretrain": None, "probe": result["rows"][0]["probe"],
               "finetune": control_runs, "control_for": ["agnostic"], "finetune_iters": 460,
               "summary": _summary(control_runs, random_runs)}
    agnostic = {**soco, "init": "agnostic", "control": "random init 460 it",
                "summary": _summary(soco["finetune"], random_runs, control_runs)}
    result["rows"] = [result["rows"][0], control, agnostic]
    d = agnostic["summary"]["box AP"]["vs_control"]
    assert d["mean"] == math.fsum([3.0 - 2.5, 4.5 - 4.0, 5.0 - 4.5]) / 3  # paired by seed: +0.5 each
    text = transfer_table(result)
    assert ("random init 460 it: random init fine-tuned 460 iterations, the pretraining + fine-tuning iterations "
            "of agnostic (trained on the labels it is judged on)") in text
    row = next(ln for ln in text.splitlines() if ln.startswith("| agnostic"))
    assert "+0.50" in row and "Δ box AP vs same-total control" in text
    lines = margin_sentence(result).splitlines()
    assert lines[0].startswith("agnostic: box AP +2.17 over random init, 95% interval")
    assert lines[1].startswith("agnostic: box AP +0.50 over random init 460 it (random init given the same total "
                               "iterations)")
    assert lines[1].endswith("-> better than random init 460 it beyond the seed noise.")  # +0.5 on every seed
    assert lines[2].startswith("random init 460 it: box AP +1.67 over random init (what the extra iterations alone")


def test_without_a_control_the_control_columns_are_left_out():
    text = transfer_table(_result(num_images=300))
    assert "same-total control" not in text.split("\n| init")[1].splitlines()[0]
