#!/usr/bin/env python
"""
Self-training benchmark: per round, the student against a control trained from the same start for
the same iterations, batch and augmentation on labeled images only (so only the pseudo-labels
differ), S seeds each, paired by seed; plus the pseudo-labels' precision / recall and the teacher's
AP on the unlabeled images against their evaluation-only ground truth (the demo has one).

``--mode online``: the student is trained online (an EMA teacher pseudo-labels each unlabeled
batch, MODEL.SELF_TRAINING.MODE online; default student config
configs/demo/self_training_online_benchmark_student.yaml), the control on the labeled images alone;
the EMA teachers are scored against the same controls. ``make demo-self-training`` runs it with 20
labeled images:

    python tools/benchmark_self_training.py --mode online --seeds 0,1,2,3 --jobs 2 \
        --teacher-config configs/demo/self_training_20_labels_teacher.yaml \
        --student-config configs/demo/self_training_online_20_labels_student.yaml \
        --output-dir output/demo/self_training_20_labels

Offline (the default; Noisy Student rounds, default student config
configs/demo/self_training_benchmark_student.yaml):

    python tools/benchmark_self_training.py --seeds 0,1,2 --rounds 1 --jobs 2 \
        --output-dir output/demo/benchmark_self_training

Finished steps are skipped, killed ones resume; results go to
<output-dir>/benchmark_self_training.json and the threshold -> precision / recall curve to
<output-dir>/pseudo_label_curve.png. ``--smoke``: a few iterations, one seed, 8 unlabeled images.
"""
import argparse
import os

import detpre  # noqa: F401  (registers every component)
from detpre.jobs.report import plot_pseudo_label_curves, self_training_margin, self_training_table
from detpre.jobs.self_training_benchmark import RESULT_FILE, run_self_training_benchmark

# scored on train's 60 images (val's 300 take a minute a run for an untrained detector)
SMOKE_OPTS = ["SOLVER.MAX_ITER", "3", "SOLVER.WARMUP_ITERS", "1", "SOLVER.STEPS", "()",
              "SOLVER.CHECKPOINT_PERIOD", "3", "DATASETS.TEST", "('detpre_demo_train',)"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher-config", default="configs/demo/self_training_benchmark_teacher.yaml")
    ap.add_argument("--student-config", default=None,
                    help="default: configs/demo/self_training_benchmark_student.yaml "
                         "(--mode online: configs/demo/self_training_online_benchmark_student.yaml)")
    ap.add_argument("--mode", choices=("offline", "online"), default="offline",
                    help="offline: pseudo-label files per round (default); online: an EMA teacher labels each batch")
    ap.add_argument("--output-dir", default="output/benchmark_self_training")
    ap.add_argument("--seeds", default="0,1,2", help="student / control seeds, paired")
    ap.add_argument("--rounds", type=int, default=1, help="round r's teacher is round r-1's student (same seed)")
    ap.add_argument("--jobs", type=int, default=2, help="trainings at once (one thread each when > 1)")
    ap.add_argument("--unlabeled", default=None,
                    help="registered unlabeled data set (default MODEL.SELF_TRAINING.UNLABELED_DATASET)")
    ap.add_argument("--groundtruth", default=None,
                    help="COCO json of the unlabeled images, for pseudo-label quality only "
                         "(default: the data set's evaluation-only ground truth, the demo's)")
    ap.add_argument("--unlabeled-limit", type=int, default=0, help="label only the first N unlabeled images")
    ap.add_argument("--threshold", type=float, default=None,
                    help="pseudo-label score threshold (default MODEL.SELF_TRAINING.SCORE_THRESHOLD)")
    ap.add_argument("--teacher-opts", nargs="*", default=[], help="KEY VALUE overrides of the teacher")
    ap.add_argument("--student-opts", nargs="*", default=[], help="KEY VALUE overrides of students and controls")
    ap.add_argument("--smoke", action="store_true", help="a few iterations, one seed, 8 unlabeled images (CI)")
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    student_config = args.student_config or (
        "configs/demo/self_training_online_benchmark_student.yaml" if args.mode == "online"
        else "configs/demo/self_training_benchmark_student.yaml")
    teacher_opts, student_opts, limit = args.teacher_opts, args.student_opts, args.unlabeled_limit
    if args.smoke:
        seeds, limit = seeds[:1], limit or 8
        teacher_opts, student_opts = SMOKE_OPTS + teacher_opts, SMOKE_OPTS + student_opts
    if args.threshold is not None:
        student_opts = [*student_opts, "MODEL.SELF_TRAINING.SCORE_THRESHOLD", str(args.threshold)]
    result = run_self_training_benchmark(
        args.teacher_config, student_config, args.output_dir, seeds=seeds, rounds=args.rounds, jobs=args.jobs,
        teacher_opts=teacher_opts, student_opts=student_opts, unlabeled_dataset=args.unlabeled,
        unlabeled_limit=limit, groundtruth=args.groundtruth,
        label_kwargs={"score_threshold": args.threshold} if args.threshold is not None else None, mode=args.mode)
    print(f"\nSelf-training, {len(seeds)} paired seed(s), pseudo-label threshold {result['threshold']}:")
    print(self_training_table(result))
    print("\n" + self_training_margin(result))
    for row in result["rounds"]:
        if "online_teacher" in row:  # --mode online: the EMA teachers and their pseudo-boxes
            t, n = row["online_teacher"]["box AP"], row["pseudo_boxes_per_image"]
            print(f"round {row['round']}: EMA teacher box AP {t['mean']:.2f} ± {t['std']:.2f}; the students' "
                  f"last pseudo-boxes per unlabeled image {n['mean']:.2f} ± {n['std']:.2f}")
    plot = plot_pseudo_label_curves(result, os.path.join(args.output_dir, "pseudo_label_curve.png"))
    print(f"\nresults: {os.path.join(args.output_dir, RESULT_FILE)}, pseudo-label curve: {plot}")
    return 0


if __name__ == "__main__":
    main()
