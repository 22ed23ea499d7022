#!/usr/bin/env python
"""
Self-training (Noisy Student, as in "Rethinking Pre-training and Self-training"), R rounds:
teacher -> pseudo-labels -> student, the student teaching the next round. On the demo:

    python tools/self_train.py --teacher-config configs/demo/mask_rcnn_R18_FPN_tiny.yaml \
        --student-config configs/demo/self_training_mask_rcnn_R18_FPN_tiny.yaml \
        --output output/demo/self_training --rounds 1

Re-running continues a killed run. Prints teacher and student AP, and per round the teacher's AP,
its pseudo-labels' precision / recall (where the unlabeled set has an evaluation-only ground truth,
as the demo's has), the student's AP and, with ``--control``, the AP of a control trained like the
student on labeled images only (tools/benchmark_self_training.py repeats that over seeds).
"""
import argparse
import os
import sys

from detectron2.utils.logger import setup_logger

import detpre  # noqa: F401  (registers every component)
from detpre.engine.guard import lock_output_dir
from detpre.jobs.report import self_train_rounds_table
from detpre.jobs.self_training import format_rows, self_train
from detpre.utils.io import OutputLocked, write_json_atomic


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher-config", required=True)
    p.add_argument("--student-config", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--teacher-weights", default=None, help="skip teacher training, use these weights")
    p.add_argument("--unlabeled", default=None,
                   help="registered unlabeled data set (default MODEL.SELF_TRAINING.UNLABELED_DATASET)")
    p.add_argument("--student-from-teacher", action="store_true",
                   help="initialize each student with its teacher's weights "
                        "(default: the student config's MODEL.WEIGHTS)")
    p.add_argument("--threshold", type=float, default=None)
    p.add_argument("--tta", action="store_true")
    p.add_argument("--control", action="store_true",
                   help="also train each round's control: the student's run with labeled images in both streams")
    p.add_argument("--teacher-opts", nargs="*", default=[])
    p.add_argument("--student-opts", nargs="*", default=[])
    a = p.parse_args()
    os.makedirs(a.output, exist_ok=True)
    try:  # one job per --output: a second one stops with one line naming the first
        with lock_output_dir(a.output, "self-training"):
            _run(a)
    except OutputLocked as e:
        sys.exit(f"detpre: error: {e}")


def _run(a):
    setup_logger(os.path.join(a.output, "log.txt"), name="detpre")
    setup_logger(os.path.join(a.output, "log.txt"), name="detectron2", abbrev_name="d2")
    rows = self_train(a.teacher_config, a.student_config, a.output, rounds=a.rounds,
                      teacher_weights=a.teacher_weights, unlabeled_dataset=a.unlabeled,
                      teacher_opts=a.teacher_opts, student_opts=a.student_opts,
                      student_from_teacher=a.student_from_teacher,
                      label_kwargs={"score_threshold": a.threshold, "tta": a.tta}, control=a.control)
    print("\n" + format_rows(rows))
    print("\n" + self_train_rounds_table(rows))
    write_json_atomic(os.path.join(a.output, "results.json"), rows, indent=1)


if __name__ == "__main__":
    main()
