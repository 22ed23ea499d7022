"""One truncated JPEG and one missing file do not stop any method's training; too many do, clearly."""
import os

import numpy as np
import pytest
from _reliability_data import Records, bad_coco, random_images, tiny_cfg, truncate
from detectron2.data import DatasetCatalog, DatasetFromList

from detpre.checkpoint import is_finished
from detpre.data.build import train_dataset_dicts
from detpre.data.image_io import BAD_IMAGES_KEY, BadImageLog, UnreadableImage
from detpre.data.mappers.reid import ReIDMapper
from detpre.data.proposals import write_proposal_file
from detpre.data.samplers import SeededMapDataset
from detpre.engine import Trainer
from detpre.errors import DetpreError

NAME = "_rel_bad_coco"


def _soco_opts(tmp_path):
    dicts = DatasetCatalog.get(NAME)
    rng = np.random.RandomState(0)
    boxes = [np.array([[x, y, x + 40, y + 40] for x, y in rng.uniform(0, 60, (5, 2))]) for _ in dicts]
    props = str(tmp_path / "props.pkl")
    write_proposal_file(props, [d["image_id"] for d in dicts], boxes)
    return ["DATASETS.PROPOSAL_FILES_TRAIN", (props,), "INPUT.SOCO.VIEW_SIZE", 64,
            "INPUT.SOCO.SMALL_VIEW_SIZE", 32, "MODEL.SOCO.CANONICAL_BOX_SIZE", 24,
            "MODEL.SOCO.HIDDEN_DIM", 32, "MODEL.SOCO.PROJ_DIM", 16]


METHODS = {
    "soco": ("soco_R18_FPN_tiny.yaml", _soco_opts),
    "jigsaw": ("jigsaw_R18_tiny.yaml", lambda tmp: [
        "DATASETS.JIGSAW_SAMPLES", str(tmp / "samples.json"), "INPUT.JIGSAW.SIZE", 64,
        "MODEL.JIGSAW.ERF_PERIOD", 100, "MODEL.JIGSAW.ERF_BATCH", 2]),
    "fastmoco": ("fastmoco_R18_tiny.yaml", lambda tmp: [
        "INPUT.TWO_VIEW.SIZE", 32, "MODEL.FASTMOCO.HIDDEN_DIM", 32, "MODEL.FASTMOCO.PROJ_DIM", 16]),
    "mask_rcnn": ("mask_rcnn_R18_FPN_tiny.yaml", lambda tmp: [
        "INPUT.MIN_SIZE_TRAIN", (64,), "INPUT.MAX_SIZE_TRAIN", 96]),
}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_training_skips_truncated_and_missing_images(tmp_path, method):
    truncated, missing = bad_coco(tmp_path, NAME)
    config, extra = METHODS[method]
    cfg = tiny_cfg(config, tmp_path / "out", "DATASETS.TRAIN", (NAME,),
                   "DATALOADER.MAX_BAD_IMAGE_FRACTION", 0.25, *extra(tmp_path))
    with Records() as rec:
        trainer = Trainer(cfg)  # 5 images left, 3 x 2 samples: the truncated one is met
        trainer.resume_or_load(resume=False)
        trainer.train()
    assert is_finished(cfg.OUTPUT_DIR)
    assert rec.count(missing) == 1 and rec.count("missing on disk")  # up front, named once
    assert rec.count(f"skipping unreadable image {truncated}") == 1  # logged once
    assert trainer.storage.history("data/bad_images").latest() == 1
    assert trainer.storage.history("data/skipped_samples").latest() >= 1


def test_reid_mapper_skips_a_truncated_image(tmp_path):
    paths = random_images(tmp_path / "reid", 3, size=(40, 24))
    truncate(paths[1])
    mapper = ReIDMapper(is_train=False, size=(32, 16))
    with pytest.raises(UnreadableImage, match="im1.jpg"):
        mapper({"file_name": paths[1]})
    dicts = [{"file_name": p, "image_id": i} for i, p in enumerate(paths)]
    ds = SeededMapDataset(DatasetFromList(dicts, copy=False), mapper, seed=0)
    out = ds[(0, 1)]
    assert out["file_name"] == paths[2] and out["image"].shape == (3, 32, 16)
    log = BadImageLog(len(dicts), max_fraction=0.5)
    with Records() as rec:
        log.collect([out, ds[(1, 1)]])
    assert BAD_IMAGES_KEY not in out and log.skips == 2 and list(log.bad) == [paths[1]]
    assert rec.count(paths[1]) == 1


def test_too_many_bad_images_stop_with_a_clear_error(tmp_path):
    truncated, missing = bad_coco(tmp_path, NAME)
    cfg = tiny_cfg("mask_rcnn_R18_FPN_tiny.yaml", tmp_path / "out", "DATASETS.TRAIN", (NAME,),
                   "DATALOADER.MAX_BAD_IMAGE_FRACTION", 0.1)
    with pytest.raises(DetpreError, match="1 of 6 images .* missing on disk .*MAX_BAD_IMAGE_FRACTION"):
        train_dataset_dicts(cfg)
    log = BadImageLog(5, max_fraction=0.1)
    with pytest.raises(DetpreError, match=f"1 of 5 training images cannot be read.*{os.path.basename(truncated)}"):
        log.collect([{BAD_IMAGES_KEY: [(truncated, "OSError: image file is truncated")]}])


def test_boxes_outside_the_image_are_warned_and_counted(tmp_path):
    from detpre.data.checks import check_training_images

    paths = random_images(tmp_path / "imgs", 2)
    dicts = [{"file_name": p, "height": 48, "width": 56, "annotations": [
        {"bbox": [60, 10, 5, 5], "bbox_mode": 1, "category_id": 0},  # XYWH, right of the image
        {"bbox": [10, 10, 5, 5], "bbox_mode": 1, "category_id": 0}]} for p in paths]
    with Records() as rec:
        kept, counts = check_training_images(dicts, 0.1)
    assert len(kept) == 2 and counts == {"missing": 0, "boxes_outside": 2}
    assert rec.count("2 box(es)") == 1 and rec.count(paths[0])
