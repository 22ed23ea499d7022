"""
Train/test loaders: detectron2's batching with the mapper the config names, and a train stream
that ``--resume`` continues exactly (see ``samplers.py``).
"""
import logging

from detectron2.data import (
    DatasetFromList,
    build_batch_data_loader,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)

from .mappers import build_mapper
from .samplers import IdentityBalancedSampler, ResumableTrainingSampler, SeededMapDataset

__all__ = ["build_train_loader", "build_test_loader", "ResumableLoader"]


class ResumableLoader:
    """
    Iterable of batches whose underlying DataLoader is created at the first ``next()``, so that
    ``set_start_iter`` (called by ``Trainer.resume_or_load``) still takes effect although
    detectron2's trainer calls ``iter()`` on the loader at construction.
    """

    def __init__(self, dataset, sampler, total_batch_size, aspect_ratio_grouping, num_workers):
        self.dataset, self.sampler = dataset, sampler
        self.total_batch_size = total_batch_size
        self.aspect_ratio_grouping, self.num_workers = aspect_ratio_grouping, num_workers

    def set_start_iter(self, start_iter):
        self.sampler.start = start_iter * (self.total_batch_size // self.sampler._world)

    def __iter__(self):
        yield from build_batch_data_loader(
            self.dataset,
            self.sampler,
            self.total_batch_size,
            aspect_ratio_grouping=self.aspect_ratio_grouping,
            num_workers=self.num_workers,
        )


def train_dataset_dicts(cfg):
    return get_detection_dataset_dicts(
        cfg.DATASETS.TRAIN,
        filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
        min_keypoints=cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0,
        proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
    )


def build_train_loader(cfg, mapper=None):
    """
    With ``DATALOADER.SAMPLER_TRAIN: TrainingSampler`` (the default) a ``ResumableLoader``: exact
    resume when ``SEED >= 0`` and ``ASPECT_RATIO_GROUPING`` is off (grouping buffers samples
    across batches). Other samplers use detectron2's loader, whose stream restarts on resume.
    """
    mapper = mapper or build_mapper(cfg, is_train=True)
    if cfg.DATALOADER.SAMPLER_TRAIN == "IdentityBalancedSampler":  # SpCL's UDA batches
        return _build_identity_balanced_loader(cfg, mapper)
    if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
        logging.getLogger(__name__).warning(
            "DATALOADER.SAMPLER_TRAIN=%s: the data stream restarts on --resume",
            cfg.DATALOADER.SAMPLER_TRAIN,
        )
        return build_detection_train_loader(cfg, mapper=mapper)
    dicts = train_dataset_dicts(cfg)
    sampler = ResumableTrainingSampler(len(dicts), shuffle=True, seed=cfg.SEED)
    dataset = SeededMapDataset(DatasetFromList(dicts, copy=False), mapper, sampler.seed)
    return ResumableLoader(
        dataset,
        sampler,
        cfg.SOLVER.IMS_PER_BATCH,
        cfg.DATALOADER.ASPECT_RATIO_GROUPING,
        cfg.DATALOADER.NUM_WORKERS,
    )


def _build_identity_balanced_loader(cfg, mapper):
    """Source images P x K by identity (their memory entry), then as many target images."""
    from detectron2.utils import comm

    from .datasets.reid import reid_memory_layout

    dicts = train_dataset_dicts(cfg)
    layout = reid_memory_layout(cfg.DATASETS.TRAIN, cfg.MODEL.SPCL.SOURCE_DATASETS)
    source, target = [], []
    for i, d in enumerate(dicts):
        entry, domain = layout.index_of(d)
        (source.append((i, entry)) if domain == 0 else target.append(i))
    per_gpu = cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size()
    sampler = IdentityBalancedSampler(source, target, per_gpu, cfg.MODEL.SPCL.NUM_INSTANCES,
                                      seed=cfg.SEED, num_workers=cfg.DATALOADER.NUM_WORKERS)
    dataset = SeededMapDataset(DatasetFromList(dicts, copy=False), mapper, sampler.seed)
    return ResumableLoader(dataset, sampler, cfg.SOLVER.IMS_PER_BATCH, False,
                           cfg.DATALOADER.NUM_WORKERS)


def build_test_loader(cfg, dataset_name):
    mapper = build_mapper(cfg, is_train=False) if cfg.DATALOADER.MAPPER else None
    return build_detection_test_loader(cfg, dataset_name, mapper=mapper)
