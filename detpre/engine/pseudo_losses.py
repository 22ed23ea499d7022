"""The losses pseudo-labels train (``MODEL.SELF_TRAINING.PSEUDO_LOSSES``), offline and online."""
from detpre.errors import DetpreError

__all__ = ["check_loss_names", "select_losses", "weigh_losses"]


def check_loss_names(losses, names):
    """A clear error when ``names`` holds a loss the model did not compute."""
    unknown = sorted(set(names) - set(losses))
    if unknown:
        raise DetpreError(f"MODEL.SELF_TRAINING.PSEUDO_LOSSES names {unknown}, which this model does not "
                          f"compute; its losses are {sorted(losses)}")


def weigh_losses(losses, trained, weight=1.0):
    """``losses`` in ``trained`` x ``weight``, the rest x 0 (kept in the graph, so DDP sees every
    parameter used)."""
    return {k: v * (weight if k in trained else 0.0) for k, v in losses.items()}


def select_losses(losses, names):
    """``losses`` with those not in ``names`` x 0 (kept in the graph, so DDP sees every parameter
    used); ``names`` empty = all of them."""
    if not names:
        return dict(losses)
    check_loss_names(losses, names)
    return weigh_losses(losses, set(names))
