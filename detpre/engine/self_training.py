"""
Student training of self-training (Zoph et al., "Rethinking Pre-training and Self-training",
NeurIPS 2020): every step sees a batch mixing human-labeled and pseudo-labeled images (the
two-stream loader) and optimizes the paper's normalized loss

    L = 1 / (1 + a) * (L_h + a * (avg(L_h) / avg(L_p)) * L_p)

where L_h, L_p are the total detection losses of the human- and pseudo-labeled images of the
step, avg(.) their moving averages over training and ``a`` the pseudo-label loss weight
(MODEL.SELF_TRAINING.PSEUDO_LOSS_WEIGHT). The ratio of averages rescales the pseudo loss to the human
loss's magnitude, so the balance between the streams is set by ``a`` alone, whatever the
threshold/augmentation do to the pseudo loss's scale. With LOSS_NORM off, L = L_h + a * L_p.

The two streams go through the (unchanged) detector in two forward/backward passes, so the
model and its checkpoint stay a plain detectron2 detector.
"""

import torch
import torch.distributed as dist
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

from detpre._compat import write_metrics
from detpre.data.self_training import build_self_training_loader
from detpre.registry import TRAINER_REGISTRY

from . import (
    online_teacher,  # noqa: F401  (registers OnlineTeacherTrainer: MODE online)
    self_training_hooks,  # noqa: F401  (registers the PseudoLabel hook)
)
from .amp import AMPStep, MixedPrecision
from .pseudo_losses import select_losses
from .trainer import Trainer

__all__ = ["LossNormalizer", "SelfTrainingStep", "SelfTrainingTrainer"]


class LossNormalizer:
    """
    The stream weights (w_h, w_p) of the paper's loss normalization; checkpointable.

    The averages are the running mean of the first ``1 / (1 - momentum)`` steps, then the EMA
    (momentum ``min(m, 1 - 1/t)`` at step t), so no single early step dominates them; and for
    the first ``warmup`` steps the ratio avg(L_h) / avg(L_p) is taken as 1 (w_p = a / (1 + a)).
    Started from the first step alone, a near-zero first pseudo loss (an image with hardly any
    pseudo box) made that step's pseudo weight ~1e11.
    """

    def __init__(self, alpha=1.0, momentum=0.99, enabled=True, eps=1e-12, warmup=0):
        if alpha < 0 or not 0 <= momentum < 1 or warmup < 0:
            raise ValueError(f"pseudo loss weight {alpha} must be >= 0, momentum {momentum} in "
                             f"[0, 1) and warm-up {warmup} >= 0")
        self.alpha, self.momentum, self.enabled, self.eps = float(alpha), float(momentum), enabled, eps
        self.warmup = int(warmup)
        self.avg_h = self.avg_p = None
        self.steps = 0

    def update(self, loss_h, loss_p):
        """Fold this step's total losses into the moving averages."""
        loss_h, loss_p = float(loss_h), float(loss_p)
        self.steps += 1
        m = min(self.momentum, 1.0 - 1.0 / self.steps)  # 0 at the first step: avg = value
        if self.avg_h is None:
            self.avg_h = self.avg_p = 0.0
        self.avg_h = m * self.avg_h + (1 - m) * loss_h
        self.avg_p = m * self.avg_p + (1 - m) * loss_p

    @property
    def ratio(self):
        """avg(L_h) / avg(L_p) as the pseudo weight uses it (1 during the warm-up)."""
        if self.avg_h is None:
            raise RuntimeError("LossNormalizer.pseudo_weight before any update()")
        if self.steps <= self.warmup:
            return 1.0
        return self.avg_h / max(self.avg_p, self.eps)

    @property
    def human_weight(self):
        return 1.0 / (1.0 + self.alpha) if self.enabled else 1.0

    @property
    def pseudo_weight(self):
        if not self.enabled:
            return self.alpha
        return self.alpha / (1.0 + self.alpha) * self.ratio

    def state_dict(self):
        return {"avg_h": self.avg_h, "avg_p": self.avg_p, "steps": self.steps}

    def load_state_dict(self, state):
        self.avg_h, self.avg_p = state["avg_h"], state["avg_p"]
        # checkpoints from before the step count: past any warm-up
        default = 0 if self.avg_h is None else max(self.warmup + 1, round(1 / (1 - self.momentum)))
        self.steps = int(state.get("steps", default))


def _mean_over_workers(values):
    t = torch.tensor(values, dtype=torch.float64)
    if comm.get_world_size() > 1:
        t = t.to(comm.get_local_rank() if torch.cuda.is_available() else "cpu")
        dist.all_reduce(t)
        t = t.cpu() / comm.get_world_size()
    return t.tolist()


class SelfTrainingStep(AMPStep):
    """A training step that splits the batch by ``"stream"`` and weights the two losses; under
    ``precision`` (SOLVER.AMP; default off)."""

    def __init__(self, model, data_loader, optimizer, normalizer, precision=None, pseudo_losses=()):
        super().__init__(model, data_loader, optimizer, precision or MixedPrecision(enabled=False))
        self.normalizer = normalizer
        self.pseudo_losses = tuple(pseudo_losses)  # () = all

    def _pseudo_terms(self, losses):
        return select_losses(losses, self.pseudo_losses)

    def run_step(self):
        data, data_time = self.next_batch()
        labeled = [d for d in data if d.get("stream", "labeled") == "labeled"]
        pseudo = [d for d in data if d.get("stream") == "pseudo"]
        if not labeled or not pseudo:
            raise ValueError("a self-training batch needs labeled and pseudo-labeled images "
                             "(use detpre.data.self_training.build_self_training_loader)")

        self.optimizer.zero_grad()
        amp = self.precision
        with amp.autocast():
            loss_h = self.model(labeled)
            total_h = sum(loss_h.values())
        w_h = self.normalizer.human_weight
        amp.backward(w_h * total_h)  # one backward per forward: DDP-safe, frees memory early
        with amp.autocast():
            loss_p = self._pseudo_terms(self.model(pseudo))
            total_p = sum(loss_p.values())
        self.normalizer.update(*_mean_over_workers([total_h.item(), total_p.item()]))
        w_p = self.normalizer.pseudo_weight
        amp.backward(w_p * total_p)

        metrics = {k: v.detach() * w_h for k, v in loss_h.items()}
        metrics.update({f"pseudo_{k}": v.detach() * w_p for k, v in loss_p.items()})
        write_metrics(metrics, data_time, self.iter)  # total_loss = the optimized objective
        if comm.is_main_process():
            get_event_storage().put_scalars(
                st_loss_labeled=total_h.item(), st_loss_pseudo=total_p.item(),
                st_weight_pseudo=w_p, st_avg_ratio=self.normalizer.avg_h / max(self.normalizer.avg_p, 1e-12),
                smoothing_hint=False)
        amp.step(self.optimizer)



@TRAINER_REGISTRY.register()
class SelfTrainingTrainer(Trainer):
    """detpre's ``Trainer`` for the student: two-stream loader + ``SelfTrainingStep``."""

    @classmethod
    def applies_to(cls, cfg):
        # MODE online is OnlineTeacherTrainer's (detpre.engine.online_teacher)
        return bool(cfg.MODEL.SELF_TRAINING.ENABLED) and str(cfg.MODEL.SELF_TRAINING.MODE).lower() != "online"

    def __init__(self, cfg):
        if not cfg.MODEL.SELF_TRAINING.ENABLED:
            raise ValueError("SelfTrainingTrainer needs MODEL.SELF_TRAINING.ENABLED: True")
        super().__init__(cfg)
        self.checkpointer.checkpointables["self_training"] = self.loss_normalizer

    def build_step(self, cfg, base):
        """``SelfTrainingStep`` (two streams, normalized losses) on the plain (or AMP) step; ``cfg``
        is scaled by auto_scale_workers."""
        base = super().build_step(cfg, base)
        st = cfg.MODEL.SELF_TRAINING
        self.loss_normalizer = LossNormalizer(st.PSEUDO_LOSS_WEIGHT, st.LOSS_NORM_MOMENTUM, st.LOSS_NORM,
                                              warmup=st.LOSS_NORM_WARMUP)
        return SelfTrainingStep(base.model, base.data_loader, base.optimizer, self.loss_normalizer,
                                getattr(base, "precision", None), st.PSEUDO_LOSSES)

    @classmethod
    def build_train_loader(cls, cfg):
        return build_self_training_loader(cfg)

