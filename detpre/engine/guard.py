"""
What keeps a run's OUTPUT_DIR whole while it trains:

- ``lock_output_dir``: one run writes a folder at a time (``tools/train_net.py`` takes it before
  detectron2 writes config.yaml; ``Trainer.train`` takes it too, for trainers run from Python);
- ``StopOnInterrupt``: on Ctrl-C the step in progress finishes, then ``Trainer.train`` saves a
  checkpoint of it and prints the command that resumes. An exception mid-step would leave a state
  of no iteration (the optimizer stepped, the LR schedule not); a second Ctrl-C still stops at once.
"""
import contextlib
import signal
import threading
import time

from detectron2.engine import HookBase
from detectron2.utils import comm

from detpre.utils.io import output_dir_lock

__all__ = ["lock_output_dir", "TrainingInterrupted", "StopRequested", "StopOnInterrupt"]


def lock_output_dir(path, what="training"):
    """
    Hold ``path/detpre.lock`` while a run writes ``path`` (main process only; re-entrant in one
    thread): a second run on the same OUTPUT_DIR stops with one line naming the first (pid, host,
    lock file) instead of replacing its checkpoints and config.yaml and mixing its metrics.json.
    A lock of a dead process of this host is taken over.
    """
    if not path or not comm.is_main_process():
        return contextlib.nullcontext()
    return output_dir_lock(path, what)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on Ctrl-C after a checkpoint of its last finished iteration was saved."""


class StopRequested(BaseException):
    """Raised by ``StopOnInterrupt`` at the end of a step; not an ``Exception``, so detectron2
    does not log it as a failure."""


class StopOnInterrupt(HookBase):
    """
    The trainer's last hook: from ``before_train`` to the last step, SIGINT only sets a flag, read
    at the end of each step (with several processes every ``SYNC_PERIOD`` steps, where they agree on
it, so all stop after the same step); then
    ``StopRequested``. The last step ignores it (its after-train checkpoint and evaluation run;
    Ctrl-C is back to normal there). Only the main thread can handle signals: elsewhere a no-op
    (the flag is read all the same). Data loader workers fork after ``before_train``: they inherit
    the handler and keep loading the step's batches.
    """

    # a SIGINT this soon after the first is the same Ctrl-C: torchrun and torch's spawn forward the
    # terminal's SIGINT to processes that already got it from the terminal
    SAME_CTRL_C_S = 1.0
    # processes agree on a stop every this many steps (one gather each time) when there are several
    SYNC_PERIOD = 10

    def __init__(self):
        self.requested = False
        self._first = 0.0
        self._previous, self._installed = None, False

    def _handle(self, signum, frame):
        if not self.requested:
            self.requested, self._first = True, time.monotonic()
        elif time.monotonic() - self._first > self.SAME_CTRL_C_S:  # a second Ctrl-C: stop now
            self._restore()
            raise KeyboardInterrupt

    def _restore(self):
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False

    def before_train(self):
        self.requested = False
        # a process started with SIGINT ignored (a background job of a script) keeps ignoring it
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) not in (signal.SIG_IGN, None):
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True

    def after_step(self):
        if self.trainer.iter >= self.trainer.max_iter - 1:
            self._restore()
            return
        stop = self.requested
        if comm.get_world_size() > 1:  # agreed every SYNC_PERIOD steps: a gather costs a sync point
            if (self.trainer.iter + 1) % self.SYNC_PERIOD:
                return
            stop = any(comm.all_gather(stop))
        if stop:
            self._restore()
            raise StopRequested()

    def after_train(self):
        self._restore()
