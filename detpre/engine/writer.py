"""
``TimedPeriodicWriter``: detectron2's PeriodicWriter (every ``period`` iterations) that also
writes when ``seconds`` have passed since the last write, so a slow run (a CPU pretraining at
2 s/iteration) still shows its iteration, loss and ETA every ~20 s.
"""
import time

from detectron2.engine import hooks

__all__ = ["TimedPeriodicWriter"]


class TimedPeriodicWriter(hooks.PeriodicWriter):
    def __init__(self, writers, period=20, seconds=20.0, clock=time.monotonic):
        super().__init__(writers, period)
        self._seconds, self._clock = float(seconds), clock
        self._last = None

    def before_train(self):
        self._last = self._clock()

    def after_step(self):
        it = self.trainer.iter
        due = (it + 1) % self._period == 0 or it == self.trainer.max_iter - 1
        if due or (self._seconds > 0 and self._clock() - self._last >= self._seconds):
            for writer in self._writers:
                writer.write()
            self._last = self._clock()
