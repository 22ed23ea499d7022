"""Batched (GPU) photometric views: the same operations, ranges and probabilities as the CPU
mapper's, per-sample randomness, and pixels equal to views.py's transforms for equal parameters.
Run on the CPU here; the same code runs on CUDA tensors."""
import numpy as np
import pytest
import torch

from detpre.config import get_detpre_cfg
from detpre.data.transforms.batched_views import (
    BatchedViewAugment,
    GPUAugmentLoader,
    apply_params,
    gpu_view_recipes,
    maybe_gpu_augment,
    sample_params,
)
from detpre.data.transforms.views import (
    BYOL_VIEW1,
    BYOL_VIEW2,
    MOCOV2_VIEW,
    ColorJitterTransform,
    GaussianBlurTransform,
    GrayscaleTransform,
    RandomColorJitter,
    RandomGaussianBlur,
    SolarizeTransform,
    build_view_augmentations,
)

N = 3000


def _cpu_draws(recipe, n, sigma_scale=1.0, seed=0):
    """The CPU augmentations' own draws: which op fired and its parameters."""
    np.random.seed(seed)
    augs = build_view_augmentations(**recipe, sigma_scale=sigma_scale)[1:]  # without the flip
    img = np.zeros((4, 4, 3), np.uint8)
    rows = {k: [] for k in ("color", "gray", "blur", "solarize", "brightness", "contrast",
                            "saturation", "hue", "sigma", "first_op")}
    for _ in range(n):
        t = [a.get_transform(img) for a in augs]
        rows["color"].append(isinstance(t[0], ColorJitterTransform))
        rows["gray"].append(isinstance(t[1], GrayscaleTransform))
        rows["blur"].append(isinstance(t[2], GaussianBlurTransform))
        rows["solarize"].append(isinstance(t[3], SolarizeTransform))
        if rows["color"][-1]:
            for k in ("brightness", "contrast", "saturation", "hue"):
                rows[k].append(getattr(t[0], k))
            rows["first_op"].append(t[0].order[0])
        if rows["blur"][-1]:
            rows["sigma"].append(t[2].sigma)
    return {k: np.asarray(v, dtype=float) for k, v in rows.items()}


def _gpu_draws(recipe, n, sigma_scale=1.0, seed=0):
    p = sample_params(recipe, n, torch.Generator().manual_seed(seed), sigma_scale=sigma_scale)
    c, b = p["color"].numpy(), p["blur"].numpy()
    out = {k: p[k].numpy().astype(float) for k in ("color", "gray", "blur", "solarize")}
    for k in ("brightness", "contrast", "saturation", "hue"):
        out[k] = p[k].numpy()[c].astype(float)
    out["first_op"] = p["order"][:, 0].numpy()[c].astype(float)
    out["sigma"] = p["sigma"].numpy()[b].astype(float)
    return out


@pytest.mark.parametrize("recipe,sigma_scale", [(BYOL_VIEW1, 1.0), (BYOL_VIEW2, 0.5), (MOCOV2_VIEW, 1.0)])
def test_same_distribution_of_operations_as_the_cpu_mapper(recipe, sigma_scale):
    cpu, gpu = _cpu_draws(recipe, N, sigma_scale), _gpu_draws(recipe, N, sigma_scale)
    for k in ("color", "gray", "blur", "solarize"):  # probabilities: binomial 5 sigma
        p = recipe[k]
        tol = 5 * np.sqrt(max(p * (1 - p), 1e-4) / N) + 1e-9
        assert abs(cpu[k].mean() - p) < tol and abs(gpu[k].mean() - p) < tol, k
    b, c, s, h = recipe.get("color_strength", (0.4, 0.4, 0.2, 0.1))
    ranges = {"brightness": (1 - b, 1 + b), "contrast": (1 - c, 1 + c),
              "saturation": (1 - s, 1 + s), "hue": (-h, h),
              "sigma": (0.1 * sigma_scale, 2.0 * sigma_scale)}
    for k, (lo, hi) in ranges.items():
        if len(cpu[k]) < 50:
            continue
        for d in (cpu, gpu):  # uniform on [lo, hi]: inside, filling it, mean in the middle
            assert d[k].min() >= lo - 1e-6 and d[k].max() <= hi + 1e-6, k
            assert d[k].min() < lo + 0.05 * (hi - lo) and d[k].max() > hi - 0.05 * (hi - lo), k
            assert abs(d[k].mean() - (lo + hi) / 2) < 5 * (hi - lo) / np.sqrt(12 * len(d[k])), k
    # the jitter order is a uniform random permutation: each op first a quarter of the time
    for d in (cpu, gpu):
        freq = np.bincount(d["first_op"].astype(int), minlength=4) / len(d["first_op"])
        assert np.all(np.abs(freq - 0.25) < 0.05), freq


def _image(seed=0, size=24):
    rng = np.random.RandomState(seed)
    img = rng.randint(0, 256, (size, size, 3)).astype(np.uint8)
    img[4:12, 6:18] = rng.randint(0, 256, 3)  # flat patches, edges
    return img


def _one(op_params, **flags):
    base = {k: torch.tensor([False]) for k in ("color", "gray", "blur", "solarize")}
    base.update({k: torch.tensor([v]) for k, v in flags.items()})
    base.update({"brightness": torch.tensor([1.0]), "contrast": torch.tensor([1.0]),
                 "saturation": torch.tensor([1.0]), "hue": torch.tensor([0.0]),
                 "order": torch.tensor([[0, 1, 2, 3]]), "sigma": torch.tensor([1.0])})
    base.update({k: torch.tensor([v]) for k, v in op_params.items()})
    return base


def _gpu_apply(img, p, fmt="BGR"):
    return apply_params(torch.from_numpy(img.transpose(2, 0, 1))[None], p, fmt)[0].numpy().transpose(1, 2, 0)


@pytest.mark.parametrize("fmt", ["BGR", "RGB"])
def test_pixels_match_the_cpu_transforms_for_equal_parameters(fmt):
    img = _image()
    diff = lambda a, b: np.abs(a.astype(int) - b.astype(int))
    # colour jitter without hue, every op order: rounding only
    for order in ([0, 1, 2, 3], [2, 0, 3, 1], [3, 2, 1, 0]):
        cpu = ColorJitterTransform(1.3, 0.7, 1.2, 0.0, tuple(order), fmt).apply_image(img)
        gpu = _gpu_apply(img, _one({"brightness": 1.3, "contrast": 0.7, "saturation": 1.2,
                                    "order": order}, color=True), fmt)
        assert diff(cpu, gpu).max() <= 1, order
    # hue: continuous shift here, 1/256-turn steps of uint8 HSV on CPU
    cpu = ColorJitterTransform(1.0, 1.0, 1.0, 0.08, (3, 0, 1, 2), fmt).apply_image(img)
    gpu = _gpu_apply(img, _one({"hue": 0.08, "order": [3, 0, 1, 2]}, color=True), fmt)
    assert diff(cpu, gpu).mean() < 2.0 and np.percentile(diff(cpu, gpu), 99) <= 8
    assert np.array_equal(GrayscaleTransform(fmt).apply_image(img), _gpu_apply(img, _one({}, gray=True), fmt))
    assert np.array_equal(SolarizeTransform().apply_image(img), _gpu_apply(img, _one({}, solarize=True), fmt))
    for sigma in (0.3, 1.0, 1.9):
        cpu = GaussianBlurTransform(sigma).apply_image(img)
        gpu = _gpu_apply(img, _one({"sigma": sigma}, blur=True), fmt)
        assert diff(cpu, gpu).max() <= 2, sigma
    assert np.array_equal(_gpu_apply(img, _one({})), img)  # nothing drawn: unchanged


def test_each_sample_draws_its_own_parameters_and_batches_are_reproducible():
    aug = BatchedViewAugment([BYOL_VIEW1, BYOL_VIEW2], "cpu", seed=3)
    img = torch.from_numpy(_image(1, 16).transpose(2, 0, 1))

    def batch():
        return [{"views": [img.clone(), img.clone()]} for _ in range(16)]

    out = aug(batch(), iteration=5)
    v1 = torch.stack([d["views"][0] for d in out])
    assert v1.dtype == torch.uint8 and v1.shape == (16, 3, 16, 16)
    assert len({bytes(t.numpy()) for t in v1}) > 12  # identical inputs, (almost) all different
    again = aug(batch(), iteration=5)
    assert all(torch.equal(a["views"][1], b["views"][1]) for a, b in zip(out, again))
    other = aug(batch(), iteration=6)
    assert not all(torch.equal(a["views"][0], b["views"][0]) for a, b in zip(out, other))


def test_switch_config_and_loader_wrapper():
    cfg = get_detpre_cfg()
    assert not cfg.INPUT.SOCO.GPU_AUGMENT and not cfg.INPUT.TWO_VIEW.GPU_AUGMENT
    cfg.DATALOADER.MAPPER, cfg.MODEL.DEVICE = "TwoViewMapper", "cpu"
    assert gpu_view_recipes(cfg) is None and maybe_gpu_augment(cfg, [1]) == [1]
    cfg.INPUT.TWO_VIEW.GPU_AUGMENT = True
    assert gpu_view_recipes(cfg)[0] == [BYOL_VIEW1, BYOL_VIEW2]
    cfg.DATALOADER.MAPPER = "SoCoMapper"
    assert gpu_view_recipes(cfg) is None  # SoCo has its own switch
    cfg.INPUT.SOCO.GPU_AUGMENT = True
    assert gpu_view_recipes(cfg)[0] == [BYOL_VIEW1, BYOL_VIEW2, BYOL_VIEW2]

    img = torch.zeros(3, 8, 8, dtype=torch.uint8)
    seen = []

    class Fake:
        def __iter__(self):
            while True:
                yield [{"views": [img, img, img]}]

        def set_start_iter(self, it):
            seen.append(it)

    loader = maybe_gpu_augment(cfg, Fake())
    assert isinstance(loader, GPUAugmentLoader)
    loader.set_start_iter(7)
    it = iter(loader)
    next(it)  # the first batch after resuming is augmented as iteration 7 of the stream
    assert seen == [7] and loader.iteration == 7
    next(it)
    assert loader.iteration == 8


def test_mappers_leave_the_photometric_ops_out_under_the_switch():
    augs = build_view_augmentations(**BYOL_VIEW2, photometric=False)
    assert len(augs) == 1 and type(augs[0]).__name__ == "RandomFlip"
    assert isinstance(build_view_augmentations(**BYOL_VIEW2)[1], RandomColorJitter)
    assert isinstance(build_view_augmentations(**BYOL_VIEW1)[3], RandomGaussianBlur)
