"""
Hooks for what happens between steps. Each is registered in ``HOOK_REGISTRY`` and named by the
meta-architecture that needs it (``required_hooks``, see ``detpre.method``) or in ``DETPRE.HOOKS``;
``Trainer.build_hooks`` builds it as ``Hook(cfg, trainer)``.
"""
from detectron2.config import configurable
from detectron2.engine import HookBase
from torch.nn.parallel import DistributedDataParallel

from detpre.modeling.momentum import MomentumTarget, momentum_at
from detpre.registry import HOOK_REGISTRY

__all__ = ["MomentumUpdate", "ERFRefresh", "unwrap_model"]


def unwrap_model(model):
    return model.module if isinstance(model, DistributedDataParallel) else model


@HOOK_REGISTRY.register()
class MomentumUpdate(HookBase):
    """
    After every optimizer step, move ``model.target`` (a ``MomentumTarget``) towards the online
    weights with BYOL's cosine momentum schedule. The momentum is a function of the iteration,
    so ``--resume`` restores it exactly (the target weights are in the model checkpoint).
    """

    @configurable
    def __init__(self, *, base, end, max_iter, schedule="cosine"):
        self.base, self.end, self.max_iter, self.schedule = base, end, max_iter, schedule

    @classmethod
    def from_config(cls, cfg, trainer=None):
        return {
            "base": cfg.MODEL.EMA.BASE,
            "end": cfg.MODEL.EMA.END,
            "max_iter": cfg.SOLVER.MAX_ITER,
            "schedule": cfg.MODEL.EMA.SCHEDULE,
        }

    def momentum(self, it):
        return momentum_at(it, self.max_iter, self.base, self.end, self.schedule)

    def before_train(self):
        target = getattr(unwrap_model(self.trainer.model), "target", None)
        if not isinstance(target, MomentumTarget):
            raise TypeError(
                "DETPRE.HOOKS has MomentumUpdate but the model has no `target` MomentumTarget; "
                "remove the hook or use a momentum meta-architecture (SoCo, FastMoCo)."
            )
        if self.trainer.iter == self.trainer.start_iter == 0:
            # a fresh run: MODEL.WEIGHTS filled only the online network; start the target equal
            # to it, as BYOL/MoCo do, unless it is a network of its own (Fast-MoCo's
            # TARGET_INIT "random"); a resumed run keeps its checkpointed target
            target.start(unwrap_model(self.trainer.model))

    def after_step(self):
        # the step just taken was iteration `iter`; the schedule uses the count done so far
        m = self.momentum(self.trainer.iter + 1)
        model = unwrap_model(self.trainer.model)
        model.target.update(model, m)
        self.trainer.storage.put_scalar("momentum", m, smoothing_hint=False)


@HOOK_REGISTRY.register()
class ERFRefresh(HookBase):
    """
    Montage pre-training: every ``period`` iterations (from iteration 0) ask the model to
    re-measure its effective receptive field on that step's montages (``JigsawPretrain``).
    The ERF in use is a model buffer, so a resumed run continues with the same one.
    """

    @configurable
    def __init__(self, *, period):
        if period <= 0:
            raise ValueError(f"MODEL.JIGSAW.ERF_PERIOD={period}: must be positive")
        self.period = int(period)

    @classmethod
    def from_config(cls, cfg, trainer=None):
        return {"period": cfg.MODEL.JIGSAW.ERF_PERIOD}

    def before_train(self):
        if not hasattr(unwrap_model(self.trainer.model), "request_erf_refresh"):
            raise TypeError("DETPRE.HOOKS has ERFRefresh but the model cannot refresh an ERF; "
                            "use MODEL.META_ARCHITECTURE JigsawPretrain or remove the hook.")

    def before_step(self):
        if self.trainer.iter % self.period == 0:
            unwrap_model(self.trainer.model).request_erf_refresh()

