"""
Train/test loaders: detectron2's batching with the mapper the config names, and a train stream
that ``--resume`` continues exactly (see ``samplers.py``). The training data is checked before
use: proposal files against their data set, image files on disk, an emptied set explained
(``checks.py``), a set smaller than one batch warned about; an image that fails to read during
training is skipped and counted (``image_io.BadImageLog``).
"""
import itertools
import logging
import os

from detectron2.data import (
    DatasetCatalog,
    DatasetFromList,
    build_batch_data_loader,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.data.build import filter_images_with_few_keypoints, filter_images_with_only_crowd_annotations
from detectron2.data.detection_utils import check_metadata_consistency

from detpre.errors import DetpreError
from detpre.method import declared_mapper

from .checks import check_training_images, explain_unusable, unusable_annotations
from .image_io import DEFAULT_MAX_BAD_FRACTION, BadImageLog
from .mappers import build_mapper
from .proposals.proposal_file import check_proposal_file, load_proposals_into_dicts, read_proposal_file
from .samplers import IdentityBalancedSampler, ResumableTrainingSampler, SeededMapDataset

__all__ = ["build_train_loader", "build_test_loader", "ResumableLoader"]


class ResumableLoader:
    """
    Iterable of batches whose underlying DataLoader is created at the first ``next()``, so that
    ``set_start_iter`` (called by ``Trainer.resume_or_load``) still takes effect although
    detectron2's trainer calls ``iter()`` on the loader at construction.
    """

    def __init__(self, dataset, sampler, total_batch_size, aspect_ratio_grouping, num_workers,
                 max_bad_fraction=DEFAULT_MAX_BAD_FRACTION):
        self.dataset, self.sampler = dataset, sampler
        self.total_batch_size = total_batch_size
        self.aspect_ratio_grouping, self.num_workers = aspect_ratio_grouping, num_workers
        self.bad_images = BadImageLog(len(dataset), max_bad_fraction)

    def set_start_iter(self, start_iter):
        self.sampler.set_start_iter(start_iter, self.total_batch_size)

    def __iter__(self):
        for batch in build_batch_data_loader(
            self.dataset,
            self.sampler,
            self.total_batch_size,
            aspect_ratio_grouping=self.aspect_ratio_grouping,
            num_workers=self.num_workers,
        ):
            self.bad_images.collect(batch)
            yield batch


def train_dataset_dicts(cfg):
    """detectron2's ``get_detection_dataset_dicts`` of DATASETS.TRAIN, with each proposal file
    checked against its data set before it is loaded, and missing image files dropped."""
    names = list(cfg.DATASETS.TRAIN)
    files = list(cfg.DATASETS.PROPOSAL_FILES_TRAIN) if cfg.MODEL.LOAD_PROPOSALS else []
    if cfg.MODEL.LOAD_PROPOSALS and len(files) != len(names):
        raise DetpreError(f"DATASETS.PROPOSAL_FILES_TRAIN has {len(files)} file(s) for "
                          f"{len(names)} DATASETS.TRAIN entries {names}: give one per data set")
    per_name = []
    for i, name in enumerate(names):
        if name not in DatasetCatalog.list():
            raise DetpreError(f"DATASETS.TRAIN names {name!r}, which is not registered: register it with "
                              "DATASETS.COCO / VOC / FOLDER, or fix the name")
        try:
            dicts = get_detection_dataset_dicts(name, filter_empty=False)
        except AssertionError as e:
            if "is empty" not in str(e):  # detectron2's "Dataset 'x' is empty!"
                raise
            raise DetpreError(f"DATASETS.TRAIN: {explain_unusable(name, [])}; add images to it or drop "
                              "it from DATASETS.TRAIN") from None
        if files:
            data = read_proposal_file(files[i]) if os.path.isfile(files[i]) else None
            check_proposal_file(files[i], dicts, name, data)
            dicts = load_proposals_into_dicts(dicts, data)
        per_name.append(dicts)
    dicts = list(itertools.chain.from_iterable(per_name))
    labeled = bool(dicts) and "annotations" in dicts[0]
    if labeled:
        if cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS:
            dicts = filter_images_with_only_crowd_annotations(dicts)
        if cfg.MODEL.KEYPOINT_ON and cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE > 0:
            dicts = filter_images_with_few_keypoints(dicts, cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE)
        if len(names) > 1:
            try:
                check_metadata_consistency("thing_classes", names)
            except AttributeError:  # data sets without thing_classes
                pass
    dicts, _ = check_training_images(dicts, cfg.DATALOADER.MAX_BAD_IMAGE_FRACTION, f"DATASETS.TRAIN {names}")
    if not dicts:
        why = "; ".join(explain_unusable(n, d) for n, d in zip(names, per_name))
        raise DetpreError(
            f"DATASETS.TRAIN {names} leaves no image to train on: {why}. DATALOADER.FILTER_EMPTY_ANNOTATIONS="
            f"{cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS} drops images without a non-crowd annotation; fix the "
            "annotations, or set it False to train on the images without boxes")
    counts = unusable_annotations(dicts) if labeled else {}
    if counts.get("annotations") and not counts["usable"]:
        logging.getLogger(__name__).warning(
            "DATASETS.TRAIN %s has no usable box: %s", names,
            "; ".join(explain_unusable(n, d) for n, d in zip(names, per_name)))
    return dicts


def warn_if_smaller_than_batch(cfg, num_images):
    """A training set smaller than one process's batch fills every batch with copies of the same
    images: contrastive methods (SoCo, MoCo) then contrast an image with itself. Say so."""
    from detectron2.utils import comm

    per_process = cfg.SOLVER.IMS_PER_BATCH // max(comm.get_world_size(), 1)
    if num_images < per_process:
        logging.getLogger(__name__).warning(
            "DATASETS.TRAIN %s has %d image(s), fewer than the %d of one batch per process "
            "(SOLVER.IMS_PER_BATCH=%d over %d process(es)): every batch repeats images, and "
            "contrastive methods compare copies of one image. Add images or lower SOLVER.IMS_PER_BATCH",
            list(cfg.DATASETS.TRAIN), num_images, per_process, cfg.SOLVER.IMS_PER_BATCH,
            comm.get_world_size())
        return True
    return False


def build_train_loader(cfg, mapper=None):
    """
    With ``DATALOADER.SAMPLER_TRAIN: TrainingSampler`` (the default) a ``ResumableLoader``: exact
    resume when ``SEED >= 0`` and ``ASPECT_RATIO_GROUPING`` is off (grouping buffers samples
    across batches). Other samplers use detectron2's loader, whose stream restarts on resume.
    """
    mapper = mapper or build_mapper(cfg, is_train=True)
    if cfg.DATALOADER.SAMPLER_TRAIN == "IdentityBalancedSampler":  # SpCL's P x K batches
        return _build_identity_balanced_loader(cfg, mapper)
    if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
        logging.getLogger(__name__).warning(
            "DATALOADER.SAMPLER_TRAIN=%s: the data stream restarts on --resume",
            cfg.DATALOADER.SAMPLER_TRAIN,
        )
        # the data set as detpre reads it (proposal files checked and read without running code)
        return build_detection_train_loader(cfg, mapper=mapper, dataset=train_dataset_dicts(cfg))
    dicts = train_dataset_dicts(cfg)
    warn_if_smaller_than_batch(cfg, len(dicts))
    sampler = ResumableTrainingSampler(len(dicts), shuffle=True, seed=cfg.SEED)
    dataset = SeededMapDataset(DatasetFromList(dicts, copy=False), mapper, sampler.seed)
    return ResumableLoader(
        dataset,
        sampler,
        cfg.SOLVER.IMS_PER_BATCH,
        cfg.DATALOADER.ASPECT_RATIO_GROUPING,
        cfg.DATALOADER.NUM_WORKERS,
        cfg.DATALOADER.MAX_BAD_IMAGE_FRACTION,
    )


def _build_identity_balanced_loader(cfg, mapper):
    """SpCL's batches: source images P x K by identity (their memory entry), then target images
    P x K by their memory slot's pseudo-label (``ClusterRefresh`` sets it after each clustering),
    in epochs of ``MODEL.SPCL.CLUSTER_PERIOD`` iterations."""
    from detectron2.utils import comm

    from .datasets.reid import reid_memory_layout

    dicts = train_dataset_dicts(cfg)
    warn_if_smaller_than_batch(cfg, len(dicts))
    layout = reid_memory_layout(cfg.DATASETS.TRAIN, cfg.MODEL.SPCL.SOURCE_DATASETS)
    source, target = [], []
    for i, d in enumerate(dicts):
        entry, domain = layout.index_of(d)
        cam = d.get("camid", 0)
        (source.append((i, entry, cam)) if domain == 0 else
         target.append((i, entry - layout.num_source, cam)))
    per_gpu = cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size()
    sampler = IdentityBalancedSampler(source, target, per_gpu, cfg.MODEL.SPCL.NUM_INSTANCES,
                                      seed=cfg.SEED, num_workers=cfg.DATALOADER.NUM_WORKERS,
                                      epoch_length=cfg.MODEL.SPCL.CLUSTER_PERIOD)
    dataset = SeededMapDataset(DatasetFromList(dicts, copy=False), mapper, sampler.seed)
    return ResumableLoader(dataset, sampler, cfg.SOLVER.IMS_PER_BATCH, False,
                           cfg.DATALOADER.NUM_WORKERS)


def build_test_loader(cfg, dataset_name):
    mapper = build_mapper(cfg, is_train=False) if declared_mapper(cfg) else None
    return build_detection_test_loader(cfg, dataset_name, mapper=mapper)
