#!/usr/bin/env python
"""
Submit ``tools/train_net.py`` to Slurm with submitit (``pip install submitit``): one task per GPU
on every node; each task finds its rank from ``SLURM_*`` (detpre/engine/launch.py). A preempted or
timed-out job is requeued and continues from its last checkpoint (``--resume``).

    python tools/submit_slurm.py --nodes 2 --gpus-per-node 8 --partition gpu --time 4320 \\
        --job-dir output/slurm/soco -- --config-file configs/soco/soco_R50_FPN_100ep.yaml \\
        OUTPUT_DIR output/soco/soco_R50_FPN_100ep

Everything after ``--`` is train_net.py's command line. Without submitit, the same job as an
``sbatch`` script (README, "Starting a run"):

    #SBATCH --nodes=2 --ntasks-per-node=8 --gpus-per-node=8 --cpus-per-task=10
    srun python tools/train_net.py --config-file ... --resume
"""
import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    train_argv = []
    if "--" in argv:
        cut = argv.index("--")
        argv, train_argv = argv[:cut], argv[cut + 1:]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--cpus-per-task", type=int, default=10)
    p.add_argument("--mem-gb", type=int, default=0, help="per node; 0 = Slurm's default")
    p.add_argument("--time", type=int, default=72 * 60, help="minutes")
    p.add_argument("--partition", default="")
    p.add_argument("--account", default="")
    p.add_argument("--constraint", default="")
    p.add_argument("--qos", default="")
    p.add_argument("--job-name", default="detpre")
    p.add_argument("--job-dir", default="output/slurm/%j", help="submitit's logs and pickles")
    args = p.parse_args(argv)
    if not train_argv:
        p.error("give train_net.py's arguments after `--`, e.g. -- --config-file <yaml>")
    args.train_argv = train_argv
    return args


class Train:
    """What every task runs (picklable, so submitit can requeue it)."""

    def __init__(self, train_argv):
        self.train_argv = list(train_argv)

    def __call__(self):
        os.chdir(REPO)
        sys.path.insert(0, REPO)
        import detpre  # noqa: F401  (registers every component)
        from detpre.engine import main
        from detpre.engine.launch import argument_parser, launch

        launch(main, argument_parser().parse_args(self.train_argv))

    def checkpoint(self):
        """submitit calls this on preemption / timeout: requeue the run with --resume."""
        import submitit

        argv = self.train_argv if "--resume" in self.train_argv else ["--resume"] + self.train_argv
        return submitit.helpers.DelayedSubmission(Train(argv))


def executor_parameters(args):
    """submitit's Slurm parameters: one task (and one GPU) per GPU of each node."""
    params = {"nodes": args.nodes, "tasks_per_node": args.gpus_per_node,
              "gpus_per_node": args.gpus_per_node, "cpus_per_task": args.cpus_per_task,
              "timeout_min": args.time, "name": args.job_name}
    if args.mem_gb:
        params["mem_gb"] = args.mem_gb
    extra = {"slurm_" + k: getattr(args, k) for k in ("partition", "account", "constraint", "qos")
             if getattr(args, k)}
    params.update(extra)
    return params


def main(argv=None):
    args = parse_args(argv)
    try:
        import submitit
    except ImportError:
        sys.exit("tools/submit_slurm.py needs submitit (`pip install submitit`); or write an sbatch "
                 "script that runs `srun python tools/train_net.py ...` (README, \"Starting a run\")")
    executor = submitit.AutoExecutor(folder=args.job_dir, slurm_max_num_timeout=20)
    executor.update_parameters(**executor_parameters(args))
    job = executor.submit(Train(args.train_argv))
    print(f"submitted job {job.job_id}: {args.nodes} node(s) x {args.gpus_per_node} GPU(s); "
          f"logs in {args.job_dir.replace('%j', str(job.job_id))}")
    return job


if __name__ == "__main__":
    main()
