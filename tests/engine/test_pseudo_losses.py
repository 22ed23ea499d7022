"""MODEL.SELF_TRAINING.PSEUDO_LOSSES: the pseudo-labeled images train only the named losses."""
import pytest
import torch
from _self_training_data import tiny_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from detpre.engine.self_training import LossNormalizer, SelfTrainingStep
from detpre.errors import DetpreError

LOCALIZATION = ("loss_rpn_cls", "loss_rpn_loc", "loss_box_reg")


def _item(g, stream):
    inst = Instances((64, 80))
    inst.gt_boxes = Boxes(torch.tensor([[8.0, 6.0, 40.0, 34.0], [30.0, 20.0, 70.0, 60.0]]))
    inst.gt_classes = torch.tensor([0, 2])
    image = torch.randint(0, 256, (3, 64, 80), generator=g, dtype=torch.uint8)
    return {"image": image, "instances": inst, "height": 64, "width": 80, "stream": stream}


def _grads(pseudo_losses, with_pseudo=True):
    """Gradients of one step (the pseudo weight 1, no normalization) from a seeded model and batch."""
    g = torch.Generator().manual_seed(0)
    batch = [_item(g, "labeled"), _item(g, "labeled"), _item(g, "pseudo"), _item(g, "pseudo")]
    torch.manual_seed(0)
    model = build_model(tiny_cfg(mask=False))
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    torch.manual_seed(1)  # the same proposal / RoI sampling in every run
    with EventStorage(0):
        if with_pseudo:
            SelfTrainingStep(model, iter([batch]), opt, LossNormalizer(1.0, 0.9, False),
                             pseudo_losses=pseudo_losses).run_step()
        else:  # the labeled stream alone
            sum(model(batch[:2]).values()).backward()
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def test_pseudo_images_train_only_the_named_losses():
    labeled_only = _grads((), with_pseudo=False)
    localization = _grads(LOCALIZATION)
    every_loss = _grads(())
    cls = "roi_heads.box_predictor.cls_score.weight"
    reg = "roi_heads.box_predictor.bbox_pred.weight"
    # the RoI classifier learns from the labeled images alone; box regression from both streams
    assert torch.allclose(localization[cls], labeled_only[cls], atol=1e-7)
    assert not torch.allclose(localization[reg], labeled_only[reg], atol=1e-6)
    # with every loss, the pseudo-boxes' classes train the classifier too
    assert not torch.allclose(every_loss[cls], labeled_only[cls], atol=1e-6)
    assert torch.allclose(localization[reg], every_loss[reg], atol=1e-7)


def test_a_loss_the_model_does_not_compute_is_named():
    with pytest.raises(DetpreError, match="PSEUDO_LOSSES names \\['loss_mask'\\]"):
        _grads(("loss_mask",))
