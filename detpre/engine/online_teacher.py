"""
Online self-training (``MODEL.SELF_TRAINING.MODE: online``), as Unbiased Teacher (Liu et al.,
ICLR 2021) trains a detector from labeled + unlabeled images:

1. burn-in: for ``BURN_IN_ITERS`` iterations the student (the trained detector) learns from the
   labeled images alone, exactly as the supervised run would (same loader, same batches);
2. at iteration ``BURN_IN_ITERS`` the teacher becomes a copy of the student; from then on, after
   every step, ``teacher <- m * teacher + (1 - m) * student`` (``EMA_MOMENTUM``; weights and
   BN statistics), and every iteration adds an unlabeled batch: the teacher (eval mode, no
   gradient) detects on each image's weak view, the boxes scoring >= ``SCORE_THRESHOLD`` (per
   class: ``CLASS_THRESHOLDS``) are the targets of the student's strong view of it, and
   ``UNSUP_LOSS_WEIGHT`` x (RPN objectness + RoI classification loss) of that pass is added to
   the supervised loss. Box regression is not trained on pseudo-boxes (Unbiased Teacher: a box's
   score says nothing of its localisation) unless ``PSEUDO_BOX_REGRESSION``; masks never are.
   ``PSEUDO_LOSSES`` names the trained terms instead (e.g. RPN and box regression only, for a
   teacher that finds objects but confuses their classes).

The pieces, detectron2-style: ``OnlineTeacherTrainer`` (detpre's ``Trainer``: the two-stream
``OnlineLoader``, the ``OnlineTeacherStep``), the ``EMATeacher`` it holds (a checkpointable: every
checkpoint carries the teacher under ``"teacher"``, so ``--resume`` continues it exactly), the
``OnlineTeacherEMA`` hook (the burn-in switch and the EMA update, before the checkpointer) and
``detpre.pseudo_labels.online`` (pseudo-labels from the teacher's detections and their health
signals). The student stays a plain detectron2 detector (``model_final.pth``'s ``"model"``).
Both are evaluated (``bbox/AP`` = student, ``teacher/bbox/AP``) at TEST.EVAL_PERIOD and at the end,
and exported at the end as ``model_final_student.pth`` / ``model_final_teacher.pth``
(``{"model": state dict}``: MODEL.WEIGHTS of the same detectron2 config).
"""
import contextlib
import logging
import os
import time

import torch
from detectron2.config import configurable
from detectron2.engine import HookBase, hooks
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage
from torch import nn

from detpre import _compat
from detpre.data.online_teacher import STRONG_AUGMENTS, build_online_loader
from detpre.errors import DetpreError
from detpre.modeling.momentum import MomentumTarget
from detpre.pseudo_labels.coco import resolve_thresholds
from detpre.pseudo_labels.online import (
    OnlinePseudoLabeler,
    PseudoLabelHealth,
    detection_heads_only,
    threshold_description,
)
from detpre.pseudo_labels.teacher import num_classes_of
from detpre.registry import HOOK_REGISTRY, TRAINER_REGISTRY
from detpre.utils.io import atomic_open

from .amp import AMPStep, MixedPrecision
from .hooks import unwrap_model
from .pseudo_losses import check_loss_names, weigh_losses
from .rng import TrainingRNG
from .trainer import Trainer

__all__ = ["EMATeacher", "OnlineTeacherEMA", "OnlineTeacherStep", "OnlineTeacherTrainer", "is_online",
           "split_unsup_losses", "trained_unsup_losses", "batch_norms",
           "running_stats_kept", "EXPORT_NAMES"]

logger = logging.getLogger(__name__)

EXPORT_NAMES = {"student": "model_final_student.pth", "teacher": "model_final_teacher.pth"}


def is_online(cfg):
    mode = str(cfg.MODEL.SELF_TRAINING.MODE).lower()
    if mode not in ("offline", "online"):
        raise DetpreError(f"MODEL.SELF_TRAINING.MODE={cfg.MODEL.SELF_TRAINING.MODE!r}: use 'offline' or 'online'")
    return mode == "online"


class _Holder(nn.Module):
    """The student under the one path ``MomentumTarget`` copies: ``detector``."""

    def __init__(self, detector):
        super().__init__()
        self.detector = detector


class EMATeacher:
    """
    The teacher: a full copy of the student detector (``model``, eval mode, no gradient), moved
    by ``MomentumTarget``'s EMA (``t <- m * t + (1 - m) * s`` over all parameters) plus the same
    EMA of the floating-point buffers (BN running statistics; integer ones are copied), as
    Unbiased Teacher averages the whole state dict. ``state_dict`` is the detector's (the
    checkpoint's ``"teacher"``).
    """

    def __init__(self, student):
        self._ema = MomentumTarget(_Holder(student), ("detector",))
        self.model = self._ema.detector.eval()

    def copy_from(self, student):
        """teacher = student (weights and buffers)."""
        self._ema.copy_from(_Holder(student))

    @torch.no_grad()
    def update(self, student, momentum):
        self._ema.update(_Holder(student), momentum)
        floats_t, floats_s = [], []
        for t, s in zip(self.model.buffers(), student.buffers()):
            if t.is_floating_point():
                floats_t.append(t)
                floats_s.append(s.detach())
            else:
                t.copy_(s)
        if floats_t:
            torch._foreach_lerp_(floats_t, floats_s, 1.0 - momentum)

    def state_dict(self):
        return self.model.state_dict()

    def load_state_dict(self, state):
        self.model.load_state_dict(state)


@HOOK_REGISTRY.register()
class OnlineTeacherEMA(HookBase):
    """
    The teacher's schedule (``trainer.teacher``, an ``EMATeacher``): a fresh run starts it as the
    initial student (MODEL.WEIGHTS); at iteration ``burn_in`` (before its step) it becomes the
    student; after every step from then on it moves by the EMA with ``momentum``. A resumed run
    has it from the checkpoint (it is saved after this hook's update).
    """

    @configurable
    def __init__(self, *, burn_in, momentum):
        if not 0.0 <= momentum <= 1.0:
            raise DetpreError(f"MODEL.SELF_TRAINING.EMA_MOMENTUM={momentum}: must be in [0, 1]")
        if burn_in < 0:
            raise DetpreError(f"MODEL.SELF_TRAINING.BURN_IN_ITERS={burn_in}: must be >= 0")
        self.burn_in, self.momentum = int(burn_in), float(momentum)

    @classmethod
    def from_config(cls, cfg, trainer=None):
        st = cfg.MODEL.SELF_TRAINING
        return {"burn_in": st.BURN_IN_ITERS, "momentum": st.EMA_MOMENTUM}

    def _teacher(self):
        teacher = getattr(self.trainer, "teacher", None)
        if not isinstance(teacher, EMATeacher):
            raise TypeError("the OnlineTeacherEMA hook needs the online self-training trainer "
                            "(MODEL.SELF_TRAINING.MODE online)")
        return teacher

    def before_train(self):
        teacher = self._teacher()
        if self.trainer.iter == self.trainer.start_iter == 0:
            teacher.copy_from(unwrap_model(self.trainer.model))

    def before_step(self):
        if self.trainer.iter == self.burn_in:
            self._teacher().copy_from(unwrap_model(self.trainer.model))
            logger.info("online self-training: burn-in done at iteration %d; teacher = student, EMA "
                        "momentum %g from now on", self.burn_in, self.momentum)

    def after_step(self):
        if self.trainer.iter >= self.burn_in:
            self._teacher().update(unwrap_model(self.trainer.model), self.momentum)
            self.trainer.storage.put_scalar("teacher/ema_momentum", self.momentum, smoothing_hint=False)


def trained_unsup_losses(losses, regression, names=()):
    """The names of the unlabeled pass's trained losses: ``names`` (PSEUDO_LOSSES), or without them
    Unbiased Teacher's: the classification terms, and box regression (``*_loc``, ``*box_reg*``)
    with ``regression``."""
    if names:
        check_loss_names(losses, names)
        return set(names)
    return {k for k in losses if regression or not (k.endswith("_loc") or "box_reg" in k)}


def split_unsup_losses(losses, weight, regression, names=()):
    """The optimized unlabeled-batch losses: the trained ones (``trained_unsup_losses``) x
    ``weight``, the rest x 0 (kept in the graph so every parameter has a gradient, as
    DistributedDataParallel needs)."""
    return weigh_losses(losses, trained_unsup_losses(losses, regression, names), weight)


def batch_norms(model):
    """The batch norm layers of ``model`` that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@contextlib.contextmanager
def running_stats_kept(bns):
    """The batch norm layers ``bns`` normalize with the batch's statistics as in training, but
    leave their running statistics (what evaluation and the EMA teacher use) as they were: the
    strong views of unlabeled images (colour jitter, grayscale, cutout) are not the images the
    detector will see, and a supervised control never mixes them in. Done with a momentum of 0 for
    the pass (the running buffers are inputs of the backward, so they cannot be rewritten before it)."""
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in bns]
    try:
        for m in bns:
            m.momentum = 0.0  # running <- 1 * running + 0 * batch, exactly
        yield
    finally:
        for m, (momentum, tracked) in zip(bns, saved):
            m.momentum = momentum
            m.num_batches_tracked.copy_(tracked)  # read by a cumulative (momentum None) average only


class OnlineTeacherStep(AMPStep):
    """One iteration: the supervised loss on the labeled items; from ``burn_in`` on, also the
    weighted pseudo-label loss of the student's strong views (its own forward/backward)."""

    def __init__(self, model, data_loader, optimizer, *, teacher, labeler, health, burn_in, unsup_weight,
                 regression=False, pseudo_losses=(), keep_bn_stats=False, precision=None):
        super().__init__(model, data_loader, optimizer, precision or MixedPrecision(enabled=False))
        self.teacher, self.labeler, self.health = teacher, labeler, health
        self.burn_in, self.unsup_weight, self.regression = int(burn_in), float(unsup_weight), bool(regression)
        self.pseudo_losses = tuple(pseudo_losses)
        # the layers whose running statistics the strong views leave alone (none: they update them)
        self.kept_bns = batch_norms(unwrap_model(model)) if keep_bn_stats else []

    def run_step(self):
        online = self.iter >= self.burn_in
        # the data (whose loaders draw seeds when they start) never moves the training RNG, so a
        # resumed run's RPN / RoI sampling continues as the uninterrupted run's (``TrainingRNG``)
        with torch.random.fork_rng(devices=[]):
            batch, data_time = self.next_batch()
            if online:
                start = time.perf_counter()
                unlabeled = batch.unlabeled()
                data_time += time.perf_counter() - start
        amp = self.precision
        self.optimizer.zero_grad()
        with amp.autocast():
            loss_sup = self.model(list(batch))
            total_sup = sum(loss_sup.values())
        amp.backward(total_sup)  # one backward per forward: DDP-safe, frees memory early
        metrics = {k: v.detach() for k, v in loss_sup.items()}
        if online:
            with amp.autocast():
                inputs, stats = self.labeler(self.teacher.model, unlabeled)
            student = unwrap_model(self.model)
            with amp.autocast(), detection_heads_only(student), running_stats_kept(self.kept_bns):
                raw = self.model(inputs)
                trained = trained_unsup_losses(raw, self.regression, self.pseudo_losses)  # optimized and logged
                loss_unsup = weigh_losses(raw, trained, self.unsup_weight)
                total_unsup = sum(loss_unsup.values())
                if comm.get_world_size() > 1:  # the mask head had no part in this pass: a zero gradient
                    total_unsup = total_unsup + 0.0 * sum(p.view(-1)[0] for p in student.parameters()
                                                          if p.requires_grad)
            amp.backward(total_unsup)
            metrics.update({f"unsup_{k}": v.detach() for k, v in loss_unsup.items() if k in trained})
            self.health.record(stats, self.iter, get_event_storage())
        _compat.write_metrics(metrics, data_time, self.iter)  # total_loss = the optimized objective
        amp.step(self.optimizer)


@TRAINER_REGISTRY.register()
class OnlineTeacherTrainer(Trainer):
    """detpre's ``Trainer`` for ``MODEL.SELF_TRAINING.MODE: online`` (see the module docstring)."""

    ITERATION_KEYS = Trainer.ITERATION_KEYS + ("MODEL.SELF_TRAINING.BURN_IN_ITERS",
                                               "MODEL.SELF_TRAINING.EMPTY_WARN_ITERS")

    @classmethod
    def applies_to(cls, cfg):
        return is_online(cfg)

    @classmethod
    def check_config(cls, cfg):
        """Online-mode keys that cannot work, as one-line errors (before anything is built)."""
        st = cfg.MODEL.SELF_TRAINING
        if not is_online(cfg):
            raise DetpreError("OnlineTeacherTrainer needs MODEL.SELF_TRAINING.MODE: online")
        if cfg.MODEL.META_ARCHITECTURE not in ("GeneralizedRCNN", "RetinaNet"):
            raise DetpreError(f"MODEL.SELF_TRAINING.MODE online trains a detectron2 detector (GeneralizedRCNN "
                              f"or RetinaNet), not MODEL.META_ARCHITECTURE={cfg.MODEL.META_ARCHITECTURE}")
        if str(st.STRONG_AUGMENT) not in STRONG_AUGMENTS and str(st.STRONG_AUGMENT).upper() not in STRONG_AUGMENTS:
            raise DetpreError(f"MODEL.SELF_TRAINING.STRONG_AUGMENT={st.STRONG_AUGMENT!r}: use one of "
                              f"{list(STRONG_AUGMENTS)}")
        if st.UNSUP_LOSS_WEIGHT < 0:
            raise DetpreError(f"MODEL.SELF_TRAINING.UNSUP_LOSS_WEIGHT={st.UNSUP_LOSS_WEIGHT}: must be >= 0")
        if list(st.PSEUDO_LOSSES) and st.PSEUDO_BOX_REGRESSION:
            raise DetpreError(f"MODEL.SELF_TRAINING.PSEUDO_LOSSES={list(st.PSEUDO_LOSSES)} names the pseudo-boxes' "
                              "losses itself: set PSEUDO_BOX_REGRESSION False (or PSEUDO_LOSSES [] for Unbiased "
                              "Teacher's terms)")
        try:
            thresholds = resolve_thresholds(st.SCORE_THRESHOLD, st.CLASS_THRESHOLDS, num_classes_of(cfg))
        except ValueError as e:
            raise DetpreError(f"{threshold_description(st.SCORE_THRESHOLD, st.CLASS_THRESHOLDS)}: {e}") from None
        test = (cfg.MODEL.RETINANET.SCORE_THRESH_TEST if cfg.MODEL.META_ARCHITECTURE == "RetinaNet"
                else cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST)
        if thresholds.min() < test:
            key = ("MODEL.RETINANET.SCORE_THRESH_TEST" if cfg.MODEL.META_ARCHITECTURE == "RetinaNet"
                   else "MODEL.ROI_HEADS.SCORE_THRESH_TEST")
            raise DetpreError(f"{threshold_description(st.SCORE_THRESHOLD, st.CLASS_THRESHOLDS)} is below {key}="
                              f"{test}: the teacher drops those boxes before they are thresholded; lower {key}")
        if st.BURN_IN_ITERS >= cfg.SOLVER.MAX_ITER:
            logger.warning("MODEL.SELF_TRAINING.BURN_IN_ITERS=%d >= SOLVER.MAX_ITER=%d: the whole run is burn-in "
                           "(supervised only); the teacher is never trained", st.BURN_IN_ITERS, cfg.SOLVER.MAX_ITER)
        return thresholds

    def __init__(self, cfg):
        self._thresholds = self.check_config(cfg)
        super().__init__(cfg)
        self.checkpointer.checkpointables["teacher"] = self.teacher
        self.checkpointer.checkpointables["pseudo_label_health"] = self.pseudo_health
        self.checkpointer.checkpointables["rng"] = TrainingRNG()

    def build_step(self, cfg, base):
        """``OnlineTeacherStep`` on the plain (or AMP) step: the EMA teacher, its pseudo-labels and
        their health signals; ``cfg`` is scaled by auto_scale_workers."""
        base = super().build_step(cfg, base)
        st = cfg.MODEL.SELF_TRAINING
        self.burn_in = int(st.BURN_IN_ITERS)
        self.teacher = EMATeacher(unwrap_model(base.model))
        key = threshold_description(st.SCORE_THRESHOLD, st.CLASS_THRESHOLDS)
        self.pseudo_health = PseudoLabelHealth(st.EMPTY_WARN_ITERS, key)
        return OnlineTeacherStep(
            base.model, base.data_loader, base.optimizer, teacher=self.teacher,
            labeler=OnlinePseudoLabeler(self._thresholds), health=self.pseudo_health, burn_in=self.burn_in,
            unsup_weight=st.UNSUP_LOSS_WEIGHT, regression=st.PSEUDO_BOX_REGRESSION,
            pseudo_losses=st.PSEUDO_LOSSES, keep_bn_stats=not st.STRONG_VIEW_BN_STATS,
            precision=getattr(base, "precision", None))

    @classmethod
    def build_train_loader(cls, cfg):
        return build_online_loader(cfg)

    def build_hooks(self):
        ret = super().build_hooks()
        # the EMA before the checkpointer (a checkpoint holds this step's teacher) and before the
        # evaluations; on every process at the same place
        at = next(i for i, h in enumerate(ret) if isinstance(h, (hooks.PeriodicCheckpointer, hooks.EvalHook)))
        ret.insert(at, OnlineTeacherEMA(self.cfg, self))
        ev = max(i for i, h in enumerate(ret) if isinstance(h, hooks.EvalHook))
        ret.insert(ev + 1, hooks.EvalHook(self.cfg.TEST.EVAL_PERIOD, self._evaluate_teacher))
        return ret

    def _evaluate_teacher(self):
        """{"teacher": results} (``teacher/bbox/AP``, ...); nothing before the teacher has started."""
        if self.iter < self.burn_in:
            logger.info("teacher not evaluated at iteration %d: it starts at MODEL.SELF_TRAINING.BURN_IN_ITERS=%d",
                        self.iter + 1, self.burn_in)
            return {}
        cfg = self.cfg
        try:
            evaluators = [self.build_evaluator(cfg, name, os.path.join(cfg.OUTPUT_DIR, "inference_teacher", name))
                          for name in cfg.DATASETS.TEST]
        except NotImplementedError as e:  # no evaluator for a test set: the student's evaluation said so too
            logger.warning("teacher not evaluated: %s", e)
            return {}
        res = self.test(cfg, self.teacher.model, evaluators=evaluators)
        self._last_eval_results_teacher = res
        return {"teacher": res} if res else {}

    def train(self):
        ret = super().train()
        if comm.is_main_process() and self.iter >= self.max_iter - 1:
            self.export()
        return ret

    def export(self):
        """``model_final_student.pth`` / ``model_final_teacher.pth`` in OUTPUT_DIR: ``{"model": state
        dict}`` of each, loadable as MODEL.WEIGHTS by the same detectron2 config."""
        paths = {}
        models = {"student": unwrap_model(self.model), "teacher": self.teacher.model}
        for role, model in models.items():
            path = os.path.join(self.cfg.OUTPUT_DIR, EXPORT_NAMES[role])
            state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            with atomic_open(path, "wb") as f:
                torch.save({"model": state, "iteration": int(self.iter), "role": role}, f)
            paths[role] = path
        logger.info("online self-training: exported the student to %s and the teacher to %s",
                    paths["student"], paths["teacher"])
        return paths
