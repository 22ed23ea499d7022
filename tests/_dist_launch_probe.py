"""Started by tests/engine/test_distributed_launch.py (as srun would, or with --num-gpus to spawn):
``launch`` joins the processes; each writes what detectron2's comm sees to OUTPUT_DIR."""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detpre.engine.launch import argument_parser, launch  # noqa: E402


def report(args):
    import torch
    import torch.distributed as dist
    from detectron2.utils import comm

    total = torch.tensor([comm.get_rank() + 1.0])
    dist.all_reduce(total)
    out = {"rank": comm.get_rank(), "world": comm.get_world_size(),
           "local_rank": comm.get_local_rank(), "local_size": comm.get_local_size(),
           "backend": str(dist.get_backend()), "sum": total.item()}
    with open(os.path.join(args.opts[1], f"rank{comm.get_rank()}.json"), "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    launch(report, argument_parser().parse_args())
