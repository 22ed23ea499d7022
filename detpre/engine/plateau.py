"""
Fine-tuning to a plateau (``TEST.PLATEAU``): evaluate a *selection* split every PERIOD iterations,
keep the best checkpoint, stop when the metric has not risen by MIN_DELTA for PATIENCE evaluations
(or at SOLVER.MAX_ITER, the cap), and score the best weights on the *report* split (DATASETS.TEST).

- ``plateau_decision``: the rule, on a list of values (one per evaluation);
- ``PlateauStop``: the hook. After every PERIOD-th iteration and the last one it evaluates
  TEST.PLATEAU.DATASET with the trainer's own test loader and evaluator, writes
  ``OUTPUT_DIR/plateau.json`` (atomically: the history of (iterations trained, value), the best
  evaluation, where it stopped) and, on a new best, saves ``model_best.pth`` with the trainer's
  checkpointer (a full, resumable checkpoint: it becomes ``last_checkpoint``, so a run killed after
  it resumes from it, and the plateau state in it always matches the weights beside it). When the
  rule says stop, or at the cap, it loads the best weights back into the model, so
  ``model_final.pth`` is the best evaluation's model in both cases and the end-of-training
  evaluation (detectron2's EvalHook on DATASETS.TEST) scores it. Its state (the history) is part
  of every checkpoint (``state_dict``): ``--resume`` continues with the plateau state of the
  checkpoint it loads, and ends as an uninterrupted run does;
- ``PlateauTrainer``: ``Trainer`` with the hook, chosen by ``tools/train_net.py`` when
  TEST.PLATEAU.ENABLED (``TRAINER_REGISTRY``); it keeps only the newest periodic checkpoint and
  checkpoints torch's generators. A plateau-stopped run saves ``model_final.pth`` before it stops,
  so it is finished (``detpre.checkpoint.is_finished``), runs the end-of-training evaluation, and
  returns like a run that reached MAX_ITER; ``--resume`` of it trains nothing.
"""
import itertools
import logging
import math
import os
from typing import Optional, Sequence, Tuple

from detectron2.engine import HookBase, hooks
from detectron2.evaluation import inference_on_dataset, verify_results
from detectron2.evaluation.testing import flatten_results_dict
from detectron2.utils import comm

from detpre._compat import replace_data_loader_iter
from detpre.checkpoint import read_checkpoint
from detpre.errors import DetpreError
from detpre.registry import TRAINER_REGISTRY
from detpre.utils.io import read_json, write_json_atomic

from .hooks import unwrap_model
from .internals import inner_trainer
from .rng import TrainingRNG, training_rngs_untouched
from .trainer import Trainer

__all__ = ["plateau_decision", "PlateauStop", "PlateauTrainer", "PlateauReached", "check_plateau_config",
           "read_plateau", "PLATEAU_FILE", "BEST_CHECKPOINT"]

PLATEAU_FILE = "plateau.json"
BEST_CHECKPOINT = "model_best.pth"
logger = logging.getLogger(__name__)


def _number(v) -> float:
    """A value as the rule compares it: a missing or NaN one (no detections) below every number."""
    try:
        v = float(v)
    except (TypeError, ValueError):
        return -math.inf
    return -math.inf if math.isnan(v) else v


def _json_value(v) -> Optional[float]:
    v = _number(v)
    return None if v == -math.inf else v


def plateau_decision(values: Sequence[Optional[float]], patience: int,
                     min_delta: float = 0.0) -> Tuple[Optional[int], Optional[int]]:
    """
    ``(best, stop)``: indices into ``values`` (one per evaluation, in order; None / NaN = no value,
    e.g. nothing detected yet) of the best evaluation (the highest value up to ``stop``, the first
    of equals) and of the evaluation after which training stops, or None while it goes on. An
    evaluation *improves* when its value exceeds the best before it by more than ``min_delta``
    (the first with a value always does); training stops at the ``patience``-th evaluation in a row
    after one that improved that does not: never before there is a value. ``best`` is None only
    for no values. E.g. ``[1, 3, 3.05, 2, 2]`` with patience 3, min_delta 0.1: best 2 (3.05 is
    the highest), stop 4 (evaluations 2, 3 and 4 do not improve on 3 by more than 0.1).
    """
    if patience < 1:
        raise ValueError(f"patience {patience}: must be at least 1")
    best = improved = None
    top = -math.inf
    for k, raw in enumerate(values):
        v = _number(raw)
        if v > -math.inf and (improved is None or v > top + min_delta):
            improved = k
        if best is None or v > top:
            best, top = k, v
        if improved is not None and k - improved >= patience:
            return best, k
    return best, None


def _metric(results, metric: str) -> float:
    """``"task/name"`` of an evaluation's nested results (NaN when absent: nothing detected)."""
    flat = flatten_results_dict(results or {})
    if metric in flat:
        return float(flat[metric])
    tails = [v for k, v in flat.items() if k.endswith("/" + metric)]  # several test sets: keyed by name first
    return float(tails[0]) if len(tails) == 1 else math.nan


def check_plateau_config(cfg) -> None:
    """TEST.PLATEAU's keys make sense together: a selection split that is neither trained on nor
    reported, a positive PERIOD and PATIENCE, a "task/metric" METRIC; else a ``DetpreError``."""
    p = cfg.TEST.PLATEAU
    if not p.DATASET:
        raise DetpreError("TEST.PLATEAU.ENABLED needs TEST.PLATEAU.DATASET: the selection split its evaluations "
                          "pick the best checkpoint on (e.g. detpre_demo_select)")
    if p.DATASET in cfg.DATASETS.TRAIN or p.DATASET in cfg.DATASETS.TEST:
        raise DetpreError(f"TEST.PLATEAU.DATASET {p.DATASET!r} is also in DATASETS.TRAIN / DATASETS.TEST: the "
                          "selection split must be one of its own, else the reported AP is picked on itself")
    if p.PERIOD < 1 or p.PATIENCE < 1:
        raise DetpreError(f"TEST.PLATEAU.PERIOD {p.PERIOD} / PATIENCE {p.PATIENCE}: both must be at least 1")
    if "/" not in p.METRIC:
        raise DetpreError(f"TEST.PLATEAU.METRIC {p.METRIC!r}: expected task/metric, e.g. bbox/AP or segm/AP")


def _shared_images(cfg):
    """File names in both the selection split and a split of DATASETS.TRAIN / DATASETS.TEST."""
    from detectron2.data import DatasetCatalog

    def names(d):
        return {os.path.realpath(r["file_name"]) for r in DatasetCatalog.get(d)}

    select = names(cfg.TEST.PLATEAU.DATASET)
    return {d: len(select & names(d)) for d in (*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST)
            if select & names(d)}


class PlateauReached(BaseException):
    """Raised by ``PlateauStop`` after the step where the rule said stop, once ``model_final.pth``
    is saved; ``PlateauTrainer.train`` returns on it. Not an ``Exception``: detectron2's loop does
    not log it as a failure, and no ``except Exception`` takes it for one."""


class PlateauStop(HookBase):
    """The hook of ``PlateauTrainer`` (module docstring). ``history``: ``[{"iteration": n, "value":
    v}]``, ``n`` the iterations trained when evaluated (1-based: 100 = after 100 steps)."""

    def __init__(self, cfg):
        p = cfg.TEST.PLATEAU
        self.cfg = cfg
        self.period, self.patience, self.min_delta = int(p.PERIOD), int(p.PATIENCE), float(p.MIN_DELTA)
        self.dataset, self.metric = p.DATASET, p.METRIC
        self.output_dir = cfg.OUTPUT_DIR
        self.history = []
        self.stopped_at = None
        self.final = None  # the end-of-training evaluation (DATASETS.TEST), set by PlateauTrainer

    # ---- state -------------------------------------------------------------------------------
    def state_dict(self):
        return {"history": [dict(h) for h in self.history], "stopped_at": self.stopped_at}

    def load_state_dict(self, state):
        self.history = [dict(h) for h in state.get("history", [])]
        self.stopped_at = state.get("stopped_at")

    def decision(self):
        return plateau_decision([h["value"] for h in self.history], self.patience, self.min_delta)

    def summary(self):
        """What ``plateau.json`` holds."""
        best, _ = self.decision()
        clean = [{"iteration": h["iteration"], "value": _json_value(h["value"])} for h in self.history]
        return {"dataset": self.dataset, "metric": self.metric, "period": self.period, "patience": self.patience,
                "min_delta": self.min_delta, "max_iter": int(self.cfg.SOLVER.MAX_ITER), "history": clean,
                "best": clean[best] if best is not None else None, "stopped_at": self.stopped_at,
                "best_checkpoint": BEST_CHECKPOINT if best is not None else None,
                "final": self.final, "final_dataset": list(self.cfg.DATASETS.TEST)}

    def write(self):
        if comm.is_main_process() and self.output_dir:
            write_json_atomic(os.path.join(self.output_dir, PLATEAU_FILE), self.summary(), indent=1)

    # ---- the loop ------------------------------------------------------------------------------
    def before_train(self):
        t = self.trainer
        if t.start_iter > 0:
            self._check_best_file()
            comm.synchronize()
        self.write()  # the state this run starts from (a resumed one: its checkpoint's, nothing later)
        if self.stopped_at is not None or t.start_iter >= t.max_iter:
            self._restore_best()  # nothing left to train: model_final.pth gets the best weights

    def after_step(self):
        t = self.trainer
        done = t.iter + 1
        last = done >= t.max_iter
        if done % self.period and not last:
            return
        self.history.append({"iteration": done, "value": self._evaluate()})
        best, stop = self.decision()
        if best == len(self.history) - 1:
            t.checkpointer.save(BEST_CHECKPOINT[:-4], iteration=t.iter)  # with this state: resumable
            comm.synchronize()
        if stop is not None:
            self.stopped_at = done
        if stop is None and not last:
            self.write()
            return
        self._restore_best()
        self.write()  # before model_final.pth: a kill between the two replays to the same stop
        if last:  # the PeriodicCheckpointer after this hook saves model_final.pth
            return
        t.checkpointer.save("model_final", iteration=t.iter)
        comm.synchronize()
        b = self.history[best]
        logger.info("Plateau: %s on %s has not risen by more than %g for %d evaluations; stopping after "
                    "iteration %d of %d, best %.3f after %d iterations (model_final.pth holds those weights)",
                    self.metric, self.dataset, self.min_delta, self.patience, done, t.max_iter,
                    _number(b["value"]), b["iteration"])
        t.max_iter = done  # so the end-of-training evaluation (EvalHook.after_train) runs
        raise PlateauReached()

    # ---- parts ---------------------------------------------------------------------------------
    def _evaluate(self):
        t = self.trainer  # a weakref proxy: its class's builders through it
        loader = t.build_test_loader(self.cfg, self.dataset)
        evaluator = t.build_evaluator(self.cfg, self.dataset, output_folder="")  # "": no files
        with training_rngs_untouched():
            results = inference_on_dataset(t.model, loader, evaluator)
        value = comm.all_gather(_metric(results, self.metric) if comm.is_main_process() else None)[0]
        t.storage.put_scalar(f"plateau/{self.metric}", value, smoothing_hint=False)
        logger.info("Plateau: %s on %s after %d iterations: %.3f", self.metric, self.dataset, t.iter + 1, value)
        return value

    def _best_path(self):
        return os.path.join(self.output_dir, BEST_CHECKPOINT)

    def _best_iteration(self):
        best, _ = self.decision()
        return None if best is None else self.history[best]["iteration"] - 1  # the trainer's 0-based count

    def _restore_best(self):
        want = self._best_iteration()
        if want is None:
            return
        model = unwrap_model(self.trainer.model)
        if comm.is_main_process():  # it saved the file: OUTPUT_DIR need not be shared between machines
            data = read_checkpoint(self._best_path())
            if data.get("iteration") != want:
                logger.warning("Plateau: %s holds the weights after iteration %s, not those of the best "
                               "evaluation (%d); restoring them anyway", self._best_path(), data.get("iteration"),
                               want)
            model.load_state_dict(data["model"])
        if comm.get_world_size() > 1:  # every process continues from the main process's weights
            import torch.distributed as dist

            for t in model.state_dict().values():
                dist.broadcast(t, src=0)

    def _check_best_file(self):
        """A resumed run: ``model_best.pth`` must hold the best evaluation of the state it resumed
        with. It can hold a later one only if the run was killed between saving it and tagging it
        as the last checkpoint (or that tag's file was unreadable): then the weights just loaded are
        the best ones if the best evaluation is the resumed checkpoint's; else the replayed
        iterations reach the later evaluation again and overwrite it (training is deterministic)."""
        want = self._best_iteration()
        if want is None or not comm.is_main_process():
            return
        path = self._best_path()
        got = read_checkpoint(path).get("iteration") if os.path.isfile(path) else None
        if got == want:
            return
        if want == self.trainer.start_iter - 1:
            self.trainer.checkpointer.save(BEST_CHECKPOINT[:-4], iteration=want)
        else:
            logger.warning("Plateau: %s holds iteration %s, the resumed state's best is %d; the replayed "
                           "evaluations rewrite it", path, got, want)


@TRAINER_REGISTRY.register()
class PlateauTrainer(Trainer):
    """``Trainer`` that fine-tunes to a plateau (module docstring); chosen when TEST.PLATEAU.ENABLED."""

    ITERATION_KEYS = Trainer.ITERATION_KEYS + ("TEST.PLATEAU.PERIOD",)

    @classmethod
    def applies_to(cls, cfg):
        return bool(cfg.TEST.PLATEAU.ENABLED)

    def __init__(self, cfg):
        check_plateau_config(cfg)
        super().__init__(cfg)
        # torch's generators in every checkpoint: a run resumed from one draws the RPN / RoI sampling the
        # uninterrupted run drew, so it reaches the same evaluations, plateau and best weights
        self.checkpointer.checkpointables["rng"] = TrainingRNG()
        shared = _shared_images(self.cfg)
        if shared:
            raise DetpreError(f"TEST.PLATEAU.DATASET {self.cfg.TEST.PLATEAU.DATASET!r} shares images with "
                              + ", ".join(f"{d} ({n})" for d, n in shared.items())
                              + ": the selection split must have images of its own")

    def build_hooks(self):
        ret = super().build_hooks()
        for h in ret:
            if isinstance(h, hooks.PeriodicCheckpointer):
                # a resume needs the newest checkpoint only; model_best.pth and model_final.pth are kept
                # (~100 MB each for the demo's Mask R-CNN: a comparison of dozens of runs fills a disk)
                h.max_to_keep = 1
        self.plateau = PlateauStop(self.cfg)
        # before the checkpointer (model_final.pth gets the restored weights) and the evaluation
        at = next(i for i, h in enumerate(ret) if isinstance(h, (hooks.PeriodicCheckpointer, hooks.EvalHook)))
        return ret[:at] + [self.plateau] + ret[at:]

    def _start_resumed_loader(self):
        """A resumed run: fetch its first batch now, with the global RNGs as they were after. The
        train loader's DataLoader is made at its first ``next()`` (``detpre.data.build.ResumableLoader``)
        and draws its base seed from torch's generator, once per run: the uninterrupted run drew it
        before its first step (the checkpointed RNG state is after it), so a resumed run that drew
        again would sample its RPN / RoI boxes one draw off. The batch is the same whenever it is
        read (each sample's augmentation is seeded by its position in the stream)."""
        step = inner_trainer(self)
        it = step._data_loader_iter
        with training_rngs_untouched():
            first = next(it)
        replace_data_loader_iter(step, itertools.chain([first], it))

    def train(self):
        if self.plateau.stopped_at is not None:  # --resume of a run that stopped: nothing to train
            self.max_iter = self.start_iter
        if 0 < self.start_iter < self.max_iter:
            self._start_resumed_loader()
        try:
            super().train()
        except PlateauReached:
            pass
        results = getattr(self, "_last_eval_results", None)
        if results is not None and comm.is_main_process():
            self.plateau.final = {k: float(v) for k, v in flatten_results_dict(results).items()}
            self.plateau.write()
            if len(self.cfg.TEST.EXPECTED_RESULTS):
                verify_results(self.cfg, results)
        return results


def read_plateau(out_dir: str):
    """``out_dir/plateau.json`` (``PlateauStop.summary``), or None."""
    return read_json(os.path.join(out_dir, PLATEAU_FILE))
