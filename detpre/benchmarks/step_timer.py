"""
``StepTimer``: where the time of a training iteration goes, measured on the real trainer.

It runs detectron2's own loop (``TrainerBase.train``: ``before_train``, then per iteration
``before_step`` / ``run_step`` / ``after_step`` of the trainer, hence of every hook in order,
the LR scheduler and the checkpointer included, with ``trainer.iter`` advanced by the loop),
only stopping after a given number of iterations instead of ``max_iter``. Each hook's
``before_step`` + ``after_step`` is timed in place, ``run_step`` around the trainer's call, and
data loading is the ``data_time`` the step itself records. AMP, DDP, gradient clipping and
the method's hooks are therefore measured as they train.
"""
import math
import time
from typing import Any, Dict, Iterator

import torch
from detectron2.utils.events import EventStorage

from detpre.engine.internals import trainer_hooks

__all__ = ["StepTimer", "DATA", "STEP"]

DATA, STEP = "data loading", "forward+backward+step"


def _unique_names(hooks):
    names, seen = [], {}
    for h in hooks:
        n = type(h).__name__
        seen[n] = seen.get(n, 0) + 1
        names.append(n if seen[n] == 1 else f"{n}#{seen[n]}")
    return names


class StepTimer:
    """Times ``trainer`` (a ``DefaultTrainer``, e.g. detpre's ``Trainer``) from its ``start_iter``."""

    def __init__(self, trainer) -> None:
        self.trainer = trainer
        self.hooks = trainer_hooks(trainer)
        self.hook_names = _unique_names(self.hooks)
        self.device = next(trainer.model.parameters()).device
        self.before_train_s = math.nan

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _timed(self, fn, record, key):
        def timed(*args, **kwargs):
            self._sync()
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._sync()
                record[key] = record.get(key, 0.0) + time.perf_counter() - t0
        return timed

    def _patch(self, record):
        """Time each hook's per-step calls in place (instance attributes shadow the methods)."""
        for h, name in zip(self.hooks, self.hook_names):
            for stage in ("before_step", "after_step"):
                setattr(h, stage, self._timed(getattr(h, stage), record, name))

    def _unpatch(self):
        for h in self.hooks:
            for stage in ("before_step", "after_step"):
                h.__dict__.pop(stage, None)

    @staticmethod
    def _latest(storage, key):
        try:
            return float(storage.history(key).latest())
        except KeyError:  # written by the main process only
            return math.nan

    def steps(self, iters: int) -> Iterator[Dict[str, Any]]:
        """
        Generator: ``TrainerBase.train``'s loop over at most ``iters`` iterations, yielding after
        each one ``{"parts": {DATA: s, STEP: s, <hook>: s, ...}, "total_loss": loss}``.
        The storage is entered around each phase only, so two timers can be stepped in turn.
        """
        t = self.trainer
        t.iter = t.start_iter  # as TrainerBase.train
        stop = min(t.start_iter + int(iters), t.max_iter)
        t.storage = storage = EventStorage(t.start_iter)
        record = {}
        self._patch(record)
        try:
            with storage:
                s = time.perf_counter()
                t.before_train()
                self.before_train_s = time.perf_counter() - s
            for t.iter in range(t.start_iter, stop):
                record.clear()
                with storage:
                    t.before_step()
                    self._sync()
                    s = time.perf_counter()
                    t.run_step()
                    self._sync()
                    step_s = time.perf_counter() - s
                    t.after_step()
                data = self._latest(storage, "data_time")
                parts = {DATA: data, STEP: step_s - (0.0 if math.isnan(data) else data)}
                parts.update((n, record.get(n, 0.0)) for n in self.hook_names)
                yield {"parts": parts, "total_loss": self._latest(storage, "total_loss")}
            t.iter += 1
        finally:
            self._unpatch()
            with storage:
                t.after_train()

    def run(self, iters):
        """All rows of ``steps(iters)``."""
        return list(self.steps(iters))
