"""
``Trainer``: detectron2's DefaultTrainer with its parts picked from detpre's config keys. What it
overrides, and why:

- ``build_train_loader`` / ``build_test_loader`` / ``build_optimizer`` / ``build_lr_scheduler`` /
  ``build_evaluator`` / ``build_hooks``: detpre's registries (the method's declared mapper and
  hooks, LARS, the cosine schedule, re-ID evaluators, a writer that also reports every ~20 s);
- ``build_step``: the inner step, once, in ``__init__``: detectron2's SimpleTrainer, in
  ``AMPStep`` when SOLVER.AMP is on (any device); subclasses build theirs on top of it;
- ``__init__``: ``DetpreCheckpointer`` (atomic saves, safe loads, a --resume past a broken file)
  carrying the run info tools read, and ``auto_scale_workers`` with detpre's iteration keys;
- ``resume_or_load``: the data stream continues where the checkpointed run stopped;
- ``train``: OUTPUT_DIR's lock and Ctrl-C (checkpoint, then the resume command);
- ``state_dict`` / ``load_state_dict``: the optimizer's state too (v0.6 saves none).
"""
import os
import shlex
import sys
import weakref

from detectron2.engine import DefaultTrainer, hooks
from detectron2.utils import comm

from detpre.checkpoint import DetpreCheckpointer, is_finished
from detpre.data.build import build_test_loader, build_train_loader
from detpre.data.transforms.batched_views import maybe_gpu_augment
from detpre.evaluation import build_evaluator
from detpre.method import declared_hooks
from detpre.registry import HOOK_REGISTRY
from detpre.solver import build_lr_scheduler, build_optimizer

from .amp import AMPStep, MixedPrecision
from .guard import StopOnInterrupt, StopRequested, TrainingInterrupted, lock_output_dir
from .writer import TimedPeriodicWriter

__all__ = ["Trainer"]


class _RunInfo:
    """Checkpointed next to the model so tools know which detpre architecture wrote a file."""

    def __init__(self, cfg):
        self.info = {"meta_architecture": cfg.MODEL.META_ARCHITECTURE, "config": cfg.dump()}

    def state_dict(self):
        return dict(self.info)

    def load_state_dict(self, state):
        pass


def _without_amp(cfg):
    if not cfg.SOLVER.AMP.ENABLED:
        return cfg
    cfg = cfg.clone()
    frozen = cfg.is_frozen()
    cfg.defrost()
    cfg.SOLVER.AMP.ENABLED = False
    if frozen:
        cfg.freeze()
    return cfg


class Trainer(DefaultTrainer):
    # detpre's schedule keys counted in iterations: scaled with MAX_ITER by auto_scale_workers
    ITERATION_KEYS = ("MODEL.SPCL.CLUSTER_PERIOD", "MODEL.JIGSAW.ERF_PERIOD",
                      "MODEL.SELF_TRAINING.REFRESH_PERIOD", "MODEL.SELF_TRAINING.LOSS_NORM_WARMUP",
                      "DETPRE.COLLAPSE.PERIOD")

    def __init__(self, cfg):
        # DefaultTrainer calls DefaultTrainer.auto_scale_workers, which misses detpre's keys;
        # on the scaled config its own call is a no-op (REFERENCE_WORLD_SIZE = world size)
        cfg = self.auto_scale_workers(cfg, comm.get_world_size())
        # DefaultTrainer builds the plain SimpleTrainer, which AMPStep then wraps: detectron2's
        # AMPTrainer is CUDA- and float16-only and makes the deprecated torch.cuda.amp.GradScaler
        super().__init__(_without_amp(cfg))
        self.cfg = cfg
        self._trainer = self.build_step(cfg, self._trainer)
        # atomic saves, a --resume that skips a corrupt latest checkpoint, checked MODEL.WEIGHTS
        self.checkpointer = DetpreCheckpointer(
            self._trainer.model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self),
            weights_strict=cfg.MODEL.WEIGHTS_STRICT, detpre=_RunInfo(cfg))
        for h in self._hooks:
            if isinstance(h, hooks.PeriodicCheckpointer):
                h.checkpointer = self.checkpointer

    def build_step(self, cfg, base):
        """The step that runs one iteration, from DefaultTrainer's SimpleTrainer ``base`` (its model,
        loader and optimizer): ``base``, or ``AMPStep`` around them when SOLVER.AMP is on.
        Subclasses that train otherwise (self-training) build their step from this one's."""
        if not cfg.SOLVER.AMP.ENABLED:
            return base
        return AMPStep(base.model, base.data_loader, base.optimizer, MixedPrecision.from_config(cfg))

    @classmethod
    def auto_scale_workers(cls, cfg, num_workers):
        """
        detectron2's linear scaling rule for ``SOLVER.REFERENCE_WORLD_SIZE`` R != 0: on W
        processes the per-process batch stays ``IMS_PER_BATCH / R``, so the total batch and
        ``BASE_LR`` (SGD, LARS, Adam alike) are multiplied by W / R, and every iteration count
        (MAX_ITER, WARMUP_ITERS, STEPS, CHECKPOINT_PERIOD, EVAL_PERIOD and detpre's
        ``ITERATION_KEYS``) divided by it, so the run still sees the same number of epochs.
        """
        reference = cfg.SOLVER.REFERENCE_WORLD_SIZE
        scaled = DefaultTrainer.auto_scale_workers(cfg, num_workers)
        if scaled is cfg:
            return cfg
        frozen = scaled.is_frozen()
        scaled.defrost()
        for key in cls.ITERATION_KEYS:
            *path, leaf = key.split(".")
            node = scaled
            for name in path:
                node = node.get(name) if node is not None else None
            if node is None or leaf not in node or node[leaf] <= 0:
                continue
            node[leaf] = max(1, round(node[leaf] * reference / num_workers))
        if frozen:
            scaled.freeze()
        return scaled

    def resume_or_load(self, resume=True):
        super().resume_or_load(resume=resume)
        # continue the data stream where the checkpointed run stopped
        loader = self._trainer.data_loader
        if hasattr(loader, "set_start_iter"):
            loader.set_start_iter(self.start_iter)

    def train(self):
        """
        detectron2's loop, holding OUTPUT_DIR's lock (``guard.lock_output_dir``). On Ctrl-C the
        step in progress finishes, its checkpoint is saved (main process) and the command that
        resumes printed as one line; then ``TrainingInterrupted`` (``tools/train_net.py`` exits 130).
        """
        if getattr(self, "_stop_hook", None) is None:
            self._stop_hook = StopOnInterrupt()
            self.register_hooks([self._stop_hook])  # last: after the step's checkpoint and writes
        with lock_output_dir(self.cfg.OUTPUT_DIR):
            try:
                ret = super().train()
            except StopRequested:
                done = self.iter  # every hook of this iteration ran
                if comm.is_main_process():
                    self.checkpointer.save(f"model_{done:07d}", iteration=done)
                    path = os.path.join(self.cfg.OUTPUT_DIR, f"model_{done:07d}.pth")
                    # a trainer of tools/train_net.py knows its command; a job (self_train.py) resumes when rerun
                    cmd = getattr(self, "resume_command", None) or shlex.join([sys.executable, *sys.argv])
                    print(f"detpre: interrupted after iteration {done + 1}/{self.max_iter}; saved {path}; "
                          f"resume with: {cmd}", file=sys.stderr, flush=True)
                raise TrainingInterrupted() from None
            if self.start_iter >= self.max_iter and comm.is_main_process() and \
                    not is_finished(self.cfg.OUTPUT_DIR):
                # resumed from the last periodic checkpoint of a run killed while writing
                # model_final.pth: nothing left to train, but "finished" needs that file
                self.iter = self.max_iter - 1
                self.checkpointer.save("model_final", iteration=self.iter)
        return ret

    # detectron2 v0.6's DefaultTrainer checkpoints no optimizer state (later versions do): without
    # this, --resume restarts SGD/LARS momentum and the resumed run drifts from the uninterrupted one.
    def state_dict(self):
        ret = super().state_dict()
        ret["_trainer"] = self._trainer.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if "_trainer" in state_dict:
            self._trainer.load_state_dict(state_dict["_trainer"])

    @classmethod
    def build_train_loader(cls, cfg):
        return maybe_gpu_augment(cfg, build_train_loader(cfg))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_test_loader(cfg, dataset_name)

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        # detectron2's, plus "WarmupThenCosineLR" and fixed-LR groups (detpre.solver.lr_scheduler)
        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return build_evaluator(cfg, dataset_name, output_folder)

    def build_hooks(self):
        ret = super().build_hooks()
        # progress a person can follow: also write every ~20 s, not only every 20 iterations
        ret = [TimedPeriodicWriter(h._writers, h._period) if type(h) is hooks.PeriodicWriter else h for h in ret]
        # DETPRE.HOOKS plus what the meta-architecture declares (detpre.method)
        extra = [HOOK_REGISTRY.get(name)(self.cfg, self) for name in declared_hooks(self.cfg)]
        # before checkpointing, so a saved checkpoint includes this step's extra updates
        at = next((i for i, h in enumerate(ret) if isinstance(h, hooks.PeriodicCheckpointer)),
                  len(ret))
        return ret[:at] + extra + ret[at:]
