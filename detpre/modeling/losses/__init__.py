"""One file per self-supervised loss (lightly-style), each tested against a reference."""
from .byol import BYOLLoss, byol_loss  # noqa: F401
from .infonce import InfoNCELoss, infonce_loss  # noqa: F401
from .soft_label_ce import SoftLabelCrossEntropy, soft_label_cross_entropy  # noqa: F401
