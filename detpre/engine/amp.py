"""
Mixed precision for every detpre training loop.

``SOLVER.AMP.ENABLED`` runs each forward pass and loss under ``torch.autocast`` on MODEL.DEVICE's
device type with ``SOLVER.AMP.DTYPE``: ``"float16"`` with a GradScaler (loss scaling, as
detectron2's AMPTrainer), or ``"bfloat16"`` (fp32's exponent range: no scaler needed). Weights,
optimizer state and momentum targets stay fp32. CPU autocast supports bfloat16 only.

Unlike detectron2 v0.6's AMPTrainer (CUDA-only, fp16-only), ``AMPStep`` runs on any device; it
keeps AMPTrainer's checkpoint layout (``"grad_scaler"``).
"""
import time

import torch
from detectron2.engine import SimpleTrainer

__all__ = ["AMP_DTYPES", "AMPStep", "MixedPrecision"]

AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


class MixedPrecision:
    """autocast + (for float16) loss scaling; a no-op when not ``enabled``."""

    def __init__(self, device_type="cuda", dtype="float16", enabled=True):
        if dtype not in AMP_DTYPES:
            raise ValueError(f"SOLVER.AMP.DTYPE must be one of {sorted(AMP_DTYPES)}, got {dtype!r}")
        if enabled and device_type == "cpu" and dtype != "bfloat16":
            raise ValueError("CPU autocast supports SOLVER.AMP.DTYPE 'bfloat16' only, got "
                             f"{dtype!r}")
        self.device_type, self.dtype, self.enabled = device_type, AMP_DTYPES[dtype], bool(enabled)
        use_scaler = self.enabled and self.dtype == torch.float16
        self.scaler = torch.amp.GradScaler(device_type) if use_scaler else None

    @classmethod
    def from_config(cls, cfg):
        return cls(torch.device(cfg.MODEL.DEVICE).type, cfg.SOLVER.AMP.DTYPE, cfg.SOLVER.AMP.ENABLED)

    def autocast(self):
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.enabled)

    def backward(self, loss):
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, optimizer):
        """``optimizer.step()``; with a scaler, on unscaled gradients and skipped on inf/nan."""
        if self.scaler is None:
            optimizer.step()
        else:
            self.scaler.step(optimizer)
            self.scaler.update()

    def state_dict(self):
        return {"grad_scaler": self.scaler.state_dict()} if self.scaler is not None else {}

    def load_state_dict(self, state):
        if self.scaler is not None and "grad_scaler" in state:
            self.scaler.load_state_dict(state["grad_scaler"])


class AMPStep(SimpleTrainer):
    """detectron2's SimpleTrainer step with forward + loss under ``precision``."""

    def __init__(self, model, data_loader, optimizer, precision):
        super().__init__(model, data_loader, optimizer)
        self.precision = precision

    def next_batch(self):
        """The next batch and the seconds spent waiting for it (detectron2's ``data_time``)."""
        assert self.model.training, f"[{type(self).__name__}] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        return data, time.perf_counter() - start

    def run_step(self):
        data, data_time = self.next_batch()
        with self.precision.autocast():
            loss_dict = self.model(data)
            if isinstance(loss_dict, torch.Tensor):
                losses, loss_dict = loss_dict, {"total_loss": loss_dict}
            else:
                losses = sum(loss_dict.values())
        self.optimizer.zero_grad()
        self.precision.backward(losses)
        self._write_metrics(loss_dict, data_time)
        self.precision.step(self.optimizer)

    def state_dict(self):
        ret = super().state_dict()
        ret.update(self.precision.state_dict())
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        self.precision.load_state_dict(state_dict)
