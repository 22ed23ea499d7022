"""
The two pieces of a detectron2 v0.6 ``DefaultTrainer`` that detpre needs and that v0.6 keeps
private without an accessor. Read them only through these functions, so an upgrade of
detectron2 changes one file.
"""

__all__ = ["inner_trainer", "trainer_hooks"]


def inner_trainer(trainer):
    """The ``SimpleTrainer`` / ``AMPTrainer`` a ``DefaultTrainer`` delegates ``run_step`` to
    (it owns the data loader and the optimizer step); ``DefaultTrainer._trainer`` in v0.6."""
    return trainer._trainer


def trainer_hooks(trainer):
    """The registered hooks in the order ``TrainerBase`` calls them (``TrainerBase._hooks``)."""
    return list(trainer._hooks)
