"""
GPU checks (pytest marker ``gpu``; run by scripts/gpu_check.sh): every method's training step
under fp16 and bf16 autocast against fp32 on CUDA, and with synchronized BatchNorm (torch's
SyncBatchNorm, detectron2's "SyncBN", in a one-process group). Skipped without CUDA;
``DETPRE_TEST_DEVICE=cpu`` runs the same checks on the CPU as a dry run (bf16 only; backbone
with "naiveSyncBN", since torch's SyncBatchNorm is GPU-only).
"""
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
from _amp_cases import METHODS, all_finite, train_step, update_cosine

from detpre.engine.amp import MixedPrecision

DEVICE = os.environ.get("DETPRE_TEST_DEVICE", "cuda")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(),
                                 reason="needs CUDA (DETPRE_TEST_DEVICE=cpu: CPU dry run)")]
DTYPES = ["float16", "bfloat16"] if DEVICE == "cuda" else ["bfloat16"]
SYNC_NORM = "SyncBN" if DEVICE == "cuda" else "naiveSyncBN"  # torch SyncBatchNorm: GPU only


def _precision(dtype, enabled=True):
    amp = MixedPrecision(DEVICE, dtype if enabled else "bfloat16", enabled=enabled)
    if amp.scaler is not None:  # the default 2**16 overflows (and skips) the first steps
        amp.scaler = torch.amp.GradScaler(DEVICE, init_scale=2.0**8)
    return amp


def _check(method, dtype, norm="BN"):
    loss32, up32 = train_step(method, _precision(dtype, enabled=False), device=DEVICE, norm=norm)
    loss, up = train_step(method, _precision(dtype), device=DEVICE, norm=norm)
    assert torch.isfinite(torch.tensor(loss)) and all_finite(up), "non-finite loss or update"
    assert loss != loss32, "autocast did not run"
    assert abs(loss - loss32) <= 0.1 * abs(loss32), (loss32, loss)
    last = [k for k, d in up32.items() if d.ndim >= 2 and d.abs().sum() > 0][-1]
    assert update_cosine({last: up32[last]}, {last: up[last]}) > 0.9, last
    assert update_cosine(up32, up) > 0.25
    return loss32, loss


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", METHODS)
def test_amp_step_matches_fp32(method, dtype):
    loss32, loss = _check(method, dtype)  # asserts the loss and update tolerances
    assert torch.isfinite(torch.as_tensor(float(loss))) and float(loss32) > 0


@pytest.fixture(scope="module")
def process_group():
    if dist.is_initialized():
        yield
        return
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group("nccl" if DEVICE == "cuda" else "gloo",
                                init_method=f"file://{tmp}/pg", rank=0, world_size=1)
        try:
            yield
        finally:
            dist.destroy_process_group()


@pytest.mark.parametrize("method", METHODS)
def test_syncbn_step_under_bf16(method, process_group):
    loss32, loss = _check(method, "bfloat16", norm=SYNC_NORM)  # asserts the tolerances
    assert torch.isfinite(torch.as_tensor(float(loss))) and float(loss32) > 0


def test_batched_views_on_the_device_match_the_cpu():
    """INPUT.*.GPU_AUGMENT: the same parameters give the same pixels on the device as on CPU."""
    from detpre.data.transforms.batched_views import apply_params, sample_params
    from detpre.data.transforms.views import BYOL_VIEW2

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (32, 3, 64, 64), generator=g, dtype=torch.uint8)
    p = sample_params(dict(BYOL_VIEW2, blur=0.5, solarize=0.5), 32, g)
    cpu = apply_params(x, p)
    dev = apply_params(x.to(DEVICE), {k: v.to(DEVICE) for k, v in p.items()})
    assert dev.device.type == DEVICE
    assert (cpu.int() - dev.cpu().int()).abs().max() <= 1
