"""Every method's training step under CPU bf16 autocast against fp32; the AMP plumbing."""
import pytest
import torch
from _amp_cases import METHODS, all_finite, train_step, update_cosine
from _reid_miniatures import registered_reid_demo

from detpre.config import get_detpre_cfg
from detpre.engine.amp import MixedPrecision
from detpre.modeling.memory import HybridMemory

FP32 = MixedPrecision("cpu", "bfloat16", enabled=False)
BF16 = MixedPrecision("cpu", "bfloat16", enabled=True)


@pytest.mark.parametrize("method", METHODS)
def test_bf16_step_is_finite_and_close_to_fp32(method):
    loss32, up32 = train_step(method, FP32)
    loss16, up16 = train_step(method, BF16)
    assert torch.isfinite(torch.tensor(loss16)) and all_finite(up16)
    assert loss16 != loss32, "autocast did not run: bf16 loss is bit-identical to fp32"
    assert abs(loss16 - loss32) <= 0.1 * abs(loss32), (loss32, loss16)
    # the step moves the weights the same way: the last weight matrix (nearest the loss)
    # closely, the whole network (bf16 rounding through ~20 random-init layers) loosely
    last = [k for k, d in up32.items() if d.ndim >= 2 and d.abs().sum() > 0][-1]
    assert update_cosine({last: up32[last]}, {last: up16[last]}) > 0.9, last
    assert update_cosine(up32, up16) > 0.25
    assert 0.5 < sum(float(d.norm()) ** 2 for d in up16.values()) ** 0.5 / \
        sum(float(d.norm()) ** 2 for d in up32.values()) ** 0.5 < 2.0


def test_hybrid_memory_backward_under_autocast_keeps_an_fp32_bank():
    torch.manual_seed(0)
    mem = HybridMemory(8, 0, 6, temperature=0.1, momentum=0.5)
    mem.set_features(torch.randn(6, 8))
    mem.set_target_labels(torch.tensor([0, 0, 1, 1, 2, 2]))
    mem.initialized.fill_(True)
    bank = mem.features.clone()
    w = torch.randn(8, 8, requires_grad=True)
    x, idx = torch.randn(4, 8), torch.tensor([0, 2, 3, 5])

    def loss_of(enabled):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            feats = torch.nn.functional.normalize(x @ w, dim=1)
            return mem(feats, idx), feats

    loss16, feats16 = loss_of(True)
    assert feats16.dtype == torch.bfloat16 and loss16.dtype == torch.float32
    loss16.backward()  # crashed before: bf16 gradient @ fp32 memory
    grad16 = w.grad.clone()
    assert mem.features.dtype == torch.float32 and not torch.equal(mem.features, bank)
    assert torch.allclose(mem.features.norm(dim=1), torch.ones(6), atol=1e-5)
    assert torch.equal(mem.features[[1, 4]], bank[[1, 4]])  # only the batch's entries move

    mem.features.copy_(bank)
    w.grad = None
    loss32, _ = loss_of(False)
    loss32.backward()
    assert abs(loss16.item() - loss32.item()) < 0.02 * loss32.item()
    assert torch.nn.functional.cosine_similarity(grad16.flatten(), w.grad.flatten(), dim=0) > 0.98


def test_dtype_option_and_cpu_float16_refused():
    cfg = get_detpre_cfg()
    assert cfg.SOLVER.AMP.DTYPE == "float16" and not cfg.SOLVER.AMP.ENABLED
    cfg.MODEL.DEVICE, cfg.SOLVER.AMP.ENABLED, cfg.SOLVER.AMP.DTYPE = "cpu", True, "bfloat16"
    amp = MixedPrecision.from_config(cfg)
    assert (amp.device_type, amp.dtype, amp.scaler) == ("cpu", torch.bfloat16, None)
    with amp.autocast():
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="bfloat16' only"):
        MixedPrecision("cpu", "float16")
    with pytest.raises(ValueError, match="must be one of"):
        MixedPrecision("cpu", "half")
    off = MixedPrecision("cpu", "float16", enabled=False)  # disabled: any dtype, no scaler
    assert off.scaler is None and off.state_dict() == {}
    with off.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_trainer_trains_under_bf16_and_resumes_with_it(tmp_path):
    """The real Trainer (SpCL, tiny re-ID demo): SOLVER.AMP picks AMPStep in bf16, training runs
    with finite losses, and a checkpoint resumes into the same loop."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from test_spcl import _tiny_cfg

    from detpre.engine.amp import AMPStep
    from detpre.engine.trainer import Trainer

    demo = registered_reid_demo(tmp_path)
    names = ("detpre_reid_demo_train", "detpre_reid_demo_test")
    try:
        cfg = _tiny_cfg(tmp_path, demo)
        cfg.SOLVER.AMP.ENABLED, cfg.SOLVER.AMP.DTYPE = True, "bfloat16"
        cfg.SOLVER.CHECKPOINT_PERIOD = 1
        trainer = Trainer(cfg)
        loop = trainer._trainer
        assert isinstance(loop, AMPStep) and loop.precision.dtype == torch.bfloat16
        trainer.train()
        losses = trainer.storage.history("total_loss").values()
        assert len(losses) == 2 and all(torch.isfinite(torch.tensor(v)) for v, _ in losses)
        cfg.defrost()
        cfg.SOLVER.MAX_ITER = 3
        again = Trainer(cfg)
        again.resume_or_load(resume=True)
        assert again.start_iter == 2 and isinstance(again._trainer, AMPStep)
        again.train()
        resumed = again.storage.history("total_loss").values()
        assert [it for _, it in resumed] == [2]  # only iteration 2 ran after resuming
    finally:
        for name in names:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
