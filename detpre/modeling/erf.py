"""
Effective receptive fields (ERF) and the ERF-adaptive soft labels of montage pre-training.

The ERF of an output location is ``|d (sum over channels of the output there) / d input|``
summed over input channels and averaged over a batch, normalized to sum 1 (Luo et al., 2016).
Computing it for every location of every montage at every step would cost one backward per
location; instead ``ERFTable`` keeps the ERF of ONE reference location, measured on the current
model over a canvas twice the montage's side (so it is never cut by the canvas border), and
gets any other location's ERF by translating it by whole feature strides. A convolutional
network is translation-equivariant up to border effects, so this is exact away from the
image border; at the border the translated ERF is cut to the image and renormalized, which is
where a real border location's ERF lies too. Region shares are then box sums of the integral
image of the reference ERF: four lookups per (location, region), cheap enough for every step.
"""
import torch
from torch import nn

__all__ = [
    "effective_receptive_field", "grid_centres", "location_regions", "apply_floor", "soft_labels",
    "ERFTable",
]


def effective_receptive_field(fn, x, index=None):
    """
    ERF of output location ``index`` (default: the centre) of ``fn`` (input B x C x H x W ->
    feature map B x C' x h x w) on input ``x``. Returns (H x W map summing to 1, (j, k)).
    Parameters get no gradient (only the input's is taken).
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        out = fn(x)
        j, k = index if index is not None else (out.shape[-2] // 2, out.shape[-1] // 2)
        (grad,) = torch.autograd.grad(out[:, :, j, k].sum(), x)
    erf = grad.abs().sum(dim=1).mean(dim=0).double()
    total = erf.sum()
    if not torch.isfinite(total) or total <= 0:
        raise FloatingPointError(f"ERF of location {(j, k)} is zero or not finite (sum={total})")
    return erf / total, (int(j), int(k))


def grid_centres(n, stride):
    """Geometric centres ``(i + 0.5) * stride`` of ``n`` feature locations (pixels)."""
    return (torch.arange(n, dtype=torch.float64) + 0.5) * stride


def location_regions(regions, cy, cx):
    """
    Index of the region (B x R x 4 XYXY, pixels) holding each feature location's centre
    (rows at ``cy`` (h,), columns at ``cx`` (w,), pixels): B x h x w; -1 where none holds it.
    """
    cy, cx = cy.double()[None, None, :, None], cx.double()[None, None, None, :]
    r = regions.double()[:, :, :, None, None]
    inside = ((r[:, :, 0] <= cx) & (cx < r[:, :, 2]) & (r[:, :, 1] <= cy) & (cy < r[:, :, 3]))
    # first region holding the centre (cells tile the montage, so exactly one)
    first = inside.double().argmax(dim=1)
    return torch.where(inside.any(dim=1), first, torch.full_like(first, -1))


def apply_floor(shares, own, tau):
    """
    ``shares`` (..., R) summing to 1; where the own region's share (index ``own``, ...) is below
    ``tau`` it becomes ``tau`` and the others are scaled to sum ``1 - tau``. ``own`` = -1: as is.
    """
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"tau={tau}: must be in [0, 1]")
    valid = own >= 0
    idx = own.clamp_min(0)[..., None]
    mine = shares.gather(-1, idx)
    low = (mine < tau) & valid[..., None]
    others = shares * ((1.0 - tau) / (1.0 - mine).clamp_min(1e-12))
    out = torch.where(low, others, shares)
    return out.scatter(-1, idx, torch.where(low, torch.full_like(mine, tau), mine))


def soft_labels(weights, labels, num_outputs):
    """Σᵢ wᵢ yᵢ: ``weights`` (B x h x w x R), ``labels`` (B x R) -> B x h x w x num_outputs."""
    onehot = nn.functional.one_hot(labels, num_outputs).to(weights.dtype)
    return torch.einsum("bhwr,brc->bhwc", weights, onehot)


class ERFTable(nn.Module):
    """
    The reference location's ERF on a ``canvas x canvas`` input, kept as an integral image in
    buffers (so checkpoints, and resumed runs, hold the ERF in use), and the region shares of
    every location of a montage derived from it by translation.
    """

    def __init__(self, canvas, stride):
        super().__init__()
        self.canvas, self.stride = int(canvas), int(stride)
        self.register_buffer("integral", torch.zeros(self.canvas + 1, self.canvas + 1,
                                                     dtype=torch.float64))
        self.register_buffer("ref_index", torch.zeros(2, dtype=torch.int64))
        # the reference ERF's centre of mass (y, x), continuous pixel coordinates of the canvas
        self.register_buffer("centre", torch.zeros(2, dtype=torch.float64))
        self.register_buffer("num_refreshes", torch.zeros((), dtype=torch.int64))

    @property
    def ready(self):
        return bool(self.num_refreshes > 0)

    @torch.no_grad()
    def set_erf(self, erf, ref_index):
        if tuple(erf.shape) != (self.canvas, self.canvas):
            raise ValueError(f"ERF map {tuple(erf.shape)} != canvas {self.canvas}")
        integral = torch.zeros_like(self.integral)
        integral[1:, 1:] = erf.double().cumsum(0).cumsum(1)
        self.integral.copy_(integral)
        self.ref_index.copy_(torch.as_tensor(ref_index, dtype=torch.int64))
        e = erf.double() / erf.double().sum()
        pix = torch.arange(self.canvas, dtype=torch.float64) + 0.5
        self.centre.copy_(torch.stack([(e.sum(1) * pix).sum(), (e.sum(0) * pix).sum()]))
        self.num_refreshes += 1

    def _box_sum(self, y0, y1, x0, x1):
        c = self.canvas
        y0, y1, x0, x1 = (t.clamp(0, c) for t in (y0, y1, x0, x1))
        integral = self.integral
        return integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]

    def location_centres(self, feat_hw, image_hw=None):
        """
        Where each location's ERF is centred in the montage: the reference centre moved by whole
        strides, (cy (h,), cx (w,)). For a ResNet this is about ``i * stride`` (its padded
        stride-2 convs centre output i on input 2i), not the block centre ``(i + 0.5) * stride``.
        With ``image_hw`` the centres are clamped to the montage's pixel centres
        ``[0.5, H - 0.5]``: a border row's centre can fall just outside the image (e.g. -0.3),
        and it must still belong to the region at that border, or its location gets no loss.
        """
        self._check_ready()
        jr, kr = (int(v) for v in self.ref_index)
        s = self.stride
        cy = self.centre[0] - (jr - torch.arange(feat_hw[0], dtype=torch.float64)) * s
        cx = self.centre[1] - (kr - torch.arange(feat_hw[1], dtype=torch.float64)) * s
        if image_hw is not None:
            cy = cy.clamp(0.5, image_hw[0] - 0.5)
            cx = cx.clamp(0.5, image_hw[1] - 0.5)
        return cy, cx

    def _check_ready(self):
        if not self.ready:
            raise RuntimeError("ERFTable has no ERF yet: call set_erf (JigsawPretrain does on "
                               "its first training step, then the ERFRefresh hook)")

    def region_shares(self, regions, feat_hw, image_hw):
        """
        Share of each region (B x R x 4 XYXY, integer pixels) in each location's ERF cut to the
        ``image_hw`` montage: B x h x w x R, float64. Rows sum to 1 when the regions tile the
        image; a location whose ERF misses the image entirely gets all zeros.
        """
        self._check_ready()
        h, w = feat_hw
        s = self.stride
        jr, kr = (int(v) for v in self.ref_index)
        # location (j, k)'s ERF = the reference ERF shifted by ((j - jr) s, (k - kr) s): a pixel
        # u of the montage sits at u + (jr - j) s in the reference frame
        dy = ((jr - torch.arange(h)) * s)[None, None, :, None]
        dx = ((kr - torch.arange(w)) * s)[None, None, None, :]
        r = regions.round().long()[:, :, :, None, None]
        num = self._box_sum(r[:, :, 1] + dy, r[:, :, 3] + dy, r[:, :, 0] + dx, r[:, :, 2] + dx)
        H, W = image_hw
        den = self._box_sum(dy, dy + H, dx, dx + W)
        shares = torch.where(den > 0, num / den.clamp_min(1e-300), torch.zeros_like(num))
        return shares.permute(0, 2, 3, 1)

    def location_weights(self, regions, feat_hw, image_hw, tau):
        """
        Region weights wᵢ of every location with the floor ``tau`` on the region holding the
        location's ERF centre: B x h x w x R.
        """
        shares = self.region_shares(regions, feat_hw, image_hw)
        own = location_regions(regions, *self.location_centres(feat_hw, image_hw))
        # an ERF that misses the image (only possible for a degenerate ERF): all on the own region
        empty = shares.sum(-1) <= 0
        if empty.any():
            hard = nn.functional.one_hot(own.clamp_min(0), shares.shape[-1]).to(shares.dtype)
            shares = torch.where(empty[..., None], hard, shares)
        return apply_floor(shares, own, tau)
