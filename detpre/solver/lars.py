"""
LARS (You et al., 2017) as the self-supervised recipes use it (BYOL, MoCo v3, SoCo).

Each parameter group says whether it is adapted (``lars_adapt``); biases and normalization
parameters are usually put in a group with ``lars_adapt=False`` and ``weight_decay=0``.
"""
import torch


class LARS(torch.optim.Optimizer):
    """
    SGD with momentum where an adapted parameter's step is scaled by the trust ratio
    ``eta * ||p|| / ||grad + wd * p||`` (1 when either norm is 0).
    """

    def __init__(self, params, lr, momentum=0.9, weight_decay=0.0, eta=0.001, lars_adapt=True):
        if lr < 0 or momentum < 0 or weight_decay < 0 or eta <= 0:
            raise ValueError(f"invalid LARS hyper-parameters: lr={lr} momentum={momentum} "
                             f"weight_decay={weight_decay} eta={eta}")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta,
                        lars_adapt=lars_adapt)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d_p = p.grad
                if group["weight_decay"] != 0:
                    d_p = d_p.add(p, alpha=group["weight_decay"])
                if group["lars_adapt"]:
                    p_norm = torch.linalg.vector_norm(p)
                    u_norm = torch.linalg.vector_norm(d_p)
                    trust = torch.where(
                        (p_norm > 0) & (u_norm > 0),
                        group["eta"] * p_norm / u_norm.clamp(min=1e-12),
                        torch.ones_like(p_norm),
                    )
                    d_p = d_p.mul(trust)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.mul_(group["momentum"]).add_(d_p)
                p.add_(buf, alpha=-group["lr"])
        return loss
