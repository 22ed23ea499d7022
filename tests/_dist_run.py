"""
Driver of tests/engine/test_distributed_training.py, started by ``torchrun``: registers the ``DistProbe``
hook, then runs the jobs of the json file given as the only argument, each job being
train_net.py's command line: one job runs ``tools/train_net.py`` unchanged (as ``__main__``),
several run train_net.py's ``launch`` once and detpre's ``main`` per job.

``DistProbe`` (listed in DETPRE.HOOKS by the test) records, in every process, the file names of
each batch the trainer consumed and, at the end, the model's parameters and hybrid memory, to
``OUTPUT_DIR/probe_<rank>_<start iter>.pt``. With ``DETPRE_TEST_KILL_AT=k`` in the environment
every process SIGKILLs itself before iteration k (after the checkpoints written before it).
"""
import json
import os
import runpy
import signal
import sys

import torch
from detectron2.engine import HookBase
from detectron2.utils import comm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from detpre.engine.hooks import unwrap_model  # noqa: E402
from detpre.registry import HOOK_REGISTRY  # noqa: E402


class _Recorder:
    def __init__(self, it, files):
        self.it, self.files = it, files

    def __next__(self):
        batch = next(self.it)
        self.files.append([os.path.basename(d["file_name"]) for d in batch])
        return batch


@HOOK_REGISTRY.register()
class DistProbe(HookBase):
    def __init__(self, cfg, trainer=None):
        self.out, self.files = cfg.OUTPUT_DIR, []
        self.kill_at = int(os.environ.get("DETPRE_TEST_KILL_AT", "-1"))

    def before_train(self):
        self.start = self.trainer.iter
        step = self.trainer._trainer
        step._data_loader_iter = _Recorder(step._data_loader_iter, self.files)

    def _save(self):
        model = unwrap_model(self.trainer.model)
        state = {k: v.detach().clone() for k, v in model.named_parameters()}
        state.update({k: v.clone() for k, v in model.state_dict().items() if k.startswith("memory.")})
        torch.save({"rank": comm.get_rank(), "world": comm.get_world_size(),
                    "local_rank": comm.get_local_rank(), "local_size": comm.get_local_size(),
                    "start": self.start, "end": self.trainer.iter, "files": self.files,
                    "state": state, "ims_per_batch": self.trainer.cfg.SOLVER.IMS_PER_BATCH,
                    "initial_lr": self.trainer.optimizer.param_groups[0]["initial_lr"],
                    "ddp": type(self.trainer.model).__name__},
                   os.path.join(self.out, f"probe_{comm.get_rank()}_{self.start}.pt"))

    def before_step(self):
        if self.trainer.iter == self.kill_at:
            comm.synchronize()  # rank 0 has written the checkpoints of the earlier iterations
            self._save()
            comm.synchronize()
            os.kill(os.getpid(), signal.SIGKILL)

    def after_train(self):
        self._save()


def _run_jobs(jobs):
    """Every job's ``main`` in this one process group (a process group destroyed and created
    again under torchrun can pick up the first one's stale rendezvous keys)."""
    from detpre.engine import main
    from detpre.engine.launch import argument_parser

    for job in jobs:
        if "kill_at" in job:
            os.environ["DETPRE_TEST_KILL_AT"] = str(job["kill_at"])
        main(argument_parser().parse_args(job["argv"]))
        comm.synchronize()


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        jobs = json.load(f)
    os.chdir(REPO)
    if len(jobs) == 1:  # tools/train_net.py itself, unchanged
        if "kill_at" in jobs[0]:
            os.environ["DETPRE_TEST_KILL_AT"] = str(jobs[0]["kill_at"])
        sys.argv = ["tools/train_net.py"] + jobs[0]["argv"]
        runpy.run_path(os.path.join(REPO, "tools", "train_net.py"), run_name="__main__")
    else:  # the same launch (environment detection, process groups), then main per job
        from detpre.engine.launch import argument_parser, launch

        launch(lambda args: _run_jobs(jobs), argument_parser().parse_args(jobs[0]["argv"]))
