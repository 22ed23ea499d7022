"""
``PseudoLabel`` hook (iterative self-training): every ``period`` iterations the current model,
as teacher (eval mode, no gradient), relabels the unlabeled data set; the json is written
atomically under OUTPUT_DIR/pseudo_labels/ and the loader's pseudo stream switches to it.
The json in use is hook state, so ``--resume`` continues with the same labels.
"""
import json
import logging
import os

from detectron2.config import configurable
from detectron2.data import DatasetCatalog, get_detection_dataset_dicts
from detectron2.data.datasets import load_coco_json
from detectron2.engine import HookBase
from detectron2.utils import comm

from detpre.pseudo_labels import label_images
from detpre.registry import HOOK_REGISTRY

from .hooks import unwrap_model
from .internals import inner_trainer

__all__ = ["PseudoLabel"]

logger = logging.getLogger(__name__)


@HOOK_REGISTRY.register()
class PseudoLabel(HookBase):
    @configurable
    def __init__(self, *, cfg, period, unlabeled_dataset, output_dir, filter_empty=True):
        if period <= 0:
            raise ValueError(f"MODEL.SELF_TRAINING.REFRESH_PERIOD={period}: must be positive with the PseudoLabel hook")
        if unlabeled_dataset not in DatasetCatalog.list():
            raise KeyError(f"MODEL.SELF_TRAINING.UNLABELED_DATASET={unlabeled_dataset!r} is not a registered "
                           "data set; register it (e.g. DATASETS.FOLDER) or fix the name")
        self.cfg, self.period, self.dataset = cfg, int(period), unlabeled_dataset
        self.output_dir, self.filter_empty = output_dir, filter_empty
        self.current = None  # json the pseudo stream uses, set by a refresh

    @classmethod
    def from_config(cls, cfg, trainer=None):
        return {"cfg": cfg, "period": cfg.MODEL.SELF_TRAINING.REFRESH_PERIOD,
                "unlabeled_dataset": cfg.MODEL.SELF_TRAINING.UNLABELED_DATASET,
                "output_dir": os.path.join(cfg.OUTPUT_DIR, "pseudo_labels"),
                "filter_empty": cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS}

    def _loader(self):
        loader = inner_trainer(self.trainer).data_loader
        if not hasattr(loader, "refresh_pseudo"):
            raise TypeError("the PseudoLabel hook needs the self-training loader (MODEL.SELF_TRAINING.ENABLED)")
        return loader

    def _switch(self, path):
        dicts = load_coco_json(path, _json_image_root(path), self.dataset + "_pseudo")
        if self.filter_empty:
            dicts = [d for d in dicts if d.get("annotations")] or dicts
        self._loader().refresh_pseudo(dicts)
        self.current = path

    def before_train(self):
        self._loader()
        if self.current:
            self._switch(self.current)

    def before_step(self):
        it = self.trainer.iter
        if it == 0 or it % self.period != 0:
            return
        path = os.path.join(self.output_dir, f"iter_{it:07d}.json")
        if comm.is_main_process() and not os.path.isfile(path):
            dicts = get_detection_dataset_dicts([self.dataset], filter_empty=False)
            label_images(self.cfg, dicts, path, model=unwrap_model(self.trainer.model),
                         weights=f"model at iteration {it}", progress=False)
        comm.synchronize()
        self._switch(path)
        logger.info("pseudo-labels refreshed from the model at iteration %d: %s", it, path)

    def state_dict(self):
        return {"current": self.current}

    def load_state_dict(self, state):
        self.current = state.get("current")


def _json_image_root(path):
    with open(path) as f:
        return json.load(f)["info"]["image_root"]
