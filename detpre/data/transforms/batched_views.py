"""
The photometric part of the BYOL / MoCo v3 / SoCo views (colour jitter, grayscale, Gaussian
blur, solarization), batched on the training device: ``INPUT.SOCO.GPU_AUGMENT`` /
``INPUT.TWO_VIEW.GPU_AUGMENT``. The mapper then only crops, resizes and flips (CPU), and
``BatchedViewAugment`` applies, after the batch reaches the device, the same operations in the
same order with the same parameter ranges and probabilities as ``views.py``'s ``Random*``
augmentations, each sample drawing its own parameters. Pixels match ``views.py``'s transforms
for equal parameters up to rounding (the hue shift is continuous here, 1/256 of a turn on CPU;
the blur kernel is truncated at 3 sigma of the batch's largest sigma).

Randomness comes from a generator seeded per batch by (SEED, rank, iteration), so a resumed
run draws what the uninterrupted one drew.
"""
import math

import torch
import torch.nn.functional as F

from .views import BYOL_VIEW1, BYOL_VIEW2, TWO_VIEW_RECIPES

__all__ = ["BatchedViewAugment", "GPUAugmentLoader", "apply_params", "gpu_view_recipes",
           "maybe_gpu_augment", "sample_params"]

_GRAY = (0.299, 0.587, 0.114)  # RGB weights, as views.py


def sample_params(recipe, n, generator=None, device="cpu", sigma_scale=1.0):
    """Per-sample parameters of one view recipe (a ``BYOL_VIEW1``-style dict) for ``n`` images."""
    def u(lo=0.0, hi=1.0):
        return torch.rand(n, generator=generator, device=device) * (hi - lo) + lo

    b, c, s, h = recipe.get("color_strength", (0.4, 0.4, 0.2, 0.1))
    return {
        "color": u() < recipe["color"],
        "brightness": u(max(0.0, 1 - b), 1 + b), "contrast": u(max(0.0, 1 - c), 1 + c),
        "saturation": u(max(0.0, 1 - s), 1 + s), "hue": u(-h, h),
        "order": torch.argsort(torch.rand(n, 4, generator=generator, device=device), dim=1),
        "gray": u() < recipe["gray"],
        "blur": u() < recipe["blur"], "sigma": u(0.1, 2.0) * sigma_scale,
        "solarize": u() < recipe["solarize"],
    }


def _gray(x):
    w = x.new_tensor(_GRAY).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def _rgb_to_hsv(x):
    r, g, b = x.unbind(1)
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    delta = maxc - minc
    v = maxc
    s = torch.where(maxc > 0, delta / maxc.clamp(min=1e-8), torch.zeros_like(maxc))
    d = delta.clamp(min=1e-8)
    hr = ((g - b) / d) % 6
    hg = (b - r) / d + 2
    hb = (r - g) / d + 4
    h = torch.where(maxc == r, hr, torch.where(maxc == g, hg, hb))
    h = torch.where(delta > 0, h / 6.0, torch.zeros_like(h))
    return torch.stack([h, s, v], 1)


def _hsv_to_rgb(x):
    h, s, v = x.unbind(1)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.long() % 6
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = torch.zeros_like(x)
    for k, (r, g, b) in enumerate(choices):
        m = (i == k).unsqueeze(1)
        out = torch.where(m, torch.stack([r, g, b], 1), out)
    return out


def _adjust(x, op, p):
    """One colour-jitter op on float RGB in [0, 255]; ``p`` the per-sample parameters."""
    if op == 0:
        return x * p["brightness"].view(-1, 1, 1, 1)
    if op == 1:
        mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
        return (x - mean) * p["contrast"].view(-1, 1, 1, 1) + mean
    if op == 2:
        g = _gray(x)
        return (x - g) * p["saturation"].view(-1, 1, 1, 1) + g
    hsv = _rgb_to_hsv(x / 255.0)
    hsv = torch.cat([(hsv[:, :1] + p["hue"].view(-1, 1, 1, 1)) % 1.0, hsv[:, 1:]], 1)
    return _hsv_to_rgb(hsv) * 255.0


def _blur(x, sigma):
    """Per-sample Gaussian blur (reflect-101 border, as cv2's default)."""
    n, c, h, w = x.shape
    radius = min(max(1, math.ceil(3 * float(sigma.max()))), h - 1, w - 1)
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-(t[None] ** 2) / (2 * sigma[:, None].to(x.dtype) ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (n*c, K)
    y = F.pad(x.reshape(1, n * c, h, w), (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k[:, None, None, :], groups=n * c)
    y = F.conv2d(y, k[:, None, :, None], groups=n * c)
    return y.reshape(n, c, h, w)


def apply_params(x, p, image_format="BGR"):
    """
    ``x`` (N, 3, H, W) uint8 or float in [0, 255] (``image_format`` channel order), ``p`` from
    ``sample_params``: colour jitter (random op order), grayscale, blur, solarize, each where
    its flag is set. Returns uint8, rounded after each step as the uint8 CPU path is.
    """
    bgr = image_format == "BGR"
    x = x.float()
    if bgr:
        x = x.flip(1)
    if bool(p["color"].any()):
        sel = p["color"].nonzero()[:, 0]
        q = {k: p[k][sel] for k in ("brightness", "contrast", "saturation", "hue", "order")}
        y = x[sel]
        for pos in range(4):  # each sample's pos-th op, computed only on the samples doing it
            for op in range(4):
                m = q["order"][:, pos] == op
                if op == 3:
                    m = m & (q["hue"] != 0)
                idx = m.nonzero()[:, 0]
                if idx.numel():
                    y = y.index_copy(0, idx, _adjust(y[idx], op, {k: v[idx] for k, v in q.items()}))
            y = y.clamp(0, 255)
        x = x.index_copy(0, sel, y.round())
    if bool(p["gray"].any()):
        x = torch.where(p["gray"].view(-1, 1, 1, 1), _gray(x).round().clamp(0, 255).expand_as(x), x)
    if bool(p["blur"].any()):
        sel = p["blur"].nonzero()[:, 0]
        x = x.index_copy(0, sel, _blur(x[sel], p["sigma"][sel]).round().clamp(0, 255))
    if bool(p["solarize"].any()):
        x = torch.where(p["solarize"].view(-1, 1, 1, 1) & (x >= 128), 255 - x, x)
    if bgr:
        x = x.flip(1)
    return x.to(torch.uint8)


def gpu_view_recipes(cfg):
    """(recipes per view index, sigma scale) for the config's mapper, or None when the config's
    GPU_AUGMENT switch is off."""
    mapper = cfg.DATALOADER.MAPPER
    if mapper == "SoCoMapper" and cfg.INPUT.SOCO.GPU_AUGMENT:
        n = 4 if cfg.INPUT.SOCO.EXTRA_VIEW_SIZE else 3
        return [BYOL_VIEW1] + [BYOL_VIEW2] * (n - 1), cfg.INPUT.SOCO.SIGMA_SCALE
    if mapper == "TwoViewMapper" and cfg.INPUT.TWO_VIEW.GPU_AUGMENT:
        return list(TWO_VIEW_RECIPES[cfg.INPUT.TWO_VIEW.AUGMENT]), cfg.INPUT.TWO_VIEW.SIGMA_SCALE
    return None


class BatchedViewAugment:
    """Applies view ``v``'s recipe to ``d["views"][v]`` of every dict of a batch, on ``device``."""

    def __init__(self, recipes, device, sigma_scale=1.0, image_format="BGR", seed=0):
        self.recipes, self.device = list(recipes), torch.device(device)
        self.sigma_scale, self.image_format, self.seed = sigma_scale, image_format, int(seed)

    def __call__(self, batch, iteration):
        g = torch.Generator(device=self.device)
        g.manual_seed((self.seed * 1_000_003 + iteration) % (2**63))
        for v, recipe in enumerate(self.recipes):
            views = [d["views"][v] for d in batch]
            if len({tuple(t.shape) for t in views}) != 1:
                raise ValueError(f"GPU_AUGMENT: view {v} has different sizes within the batch")
            x = torch.stack(views).to(self.device, non_blocking=True)
            p = sample_params(recipe, len(batch), g, self.device, self.sigma_scale)
            out = apply_params(x, p, self.image_format)
            for d, o in zip(batch, out):
                d["views"][v] = o
        return batch


class GPUAugmentLoader:
    """A train loader whose batches get ``BatchedViewAugment`` after reaching the device; the
    rest (``set_start_iter``, ``state_dict``, ...) is the wrapped loader's."""

    def __init__(self, loader, augment):
        self.loader, self.augment, self.iteration = loader, augment, 0

    def set_start_iter(self, start_iter):
        self.iteration = int(start_iter)
        if hasattr(self.loader, "set_start_iter"):
            self.loader.set_start_iter(start_iter)

    def __iter__(self):
        for batch in self.loader:
            yield self.augment(batch, self.iteration)
            self.iteration += 1

    def __getattr__(self, name):
        return getattr(self.loader, name)


def maybe_gpu_augment(cfg, loader):
    """``loader`` wrapped in ``GPUAugmentLoader`` when the config's GPU_AUGMENT switch is on."""
    found = gpu_view_recipes(cfg)
    if found is None:
        return loader
    from detectron2.utils import comm

    recipes, sigma_scale = found
    seed = cfg.SEED if cfg.SEED >= 0 else int(torch.initial_seed() % (2**31))
    augment = BatchedViewAugment(recipes, cfg.MODEL.DEVICE, sigma_scale, cfg.INPUT.FORMAT,
                                 seed=seed * 4099 + comm.get_rank())
    return GPUAugmentLoader(loader, augment)
