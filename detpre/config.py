"""
``add_detpre_config(cfg)``: every key detpre adds to detectron2's config, with its default.

Composed of one ``add_*_config`` per concern/method, like DensePose's. Keys live in their own
nodes (``MODEL.SOCO``, ...) or are new leaves next to related detectron2 keys; none changes
the meaning of a detectron2 key.
"""
from detectron2.config import CfgNode as CN


def add_dataset_config(cfg):
    """Data sets registered from the config, so the user's own data needs no Python."""
    _C = cfg
    # [[name, json_file, image_root], ...]: COCO-format instance annotations.
    _C.DATASETS.COCO = []
    # [[name, voc_dir, split], ...] or [[name, voc_dir, split, "cls1,cls2,..."], ...]: a
    # Pascal VOC-style directory (Annotations/, JPEGImages/, ImageSets/Main/<split>.txt);
    # classes default to VOC's 20.
    _C.DATASETS.VOC = []
    # [[name, image_dir], ...]: a folder of unlabeled images (searched recursively).
    _C.DATASETS.FOLDER = []
    # Where the built-in demo data set is generated on first use; "" means
    # $DETECTRON2_DATASETS/detpre_demo (DETECTRON2_DATASETS defaults to ./datasets).
    _C.DATASETS.DEMO_ROOT = ""


def add_trainer_config(cfg):
    """What ``detpre.engine.Trainer`` builds: mapper, extra hooks, optimizer."""
    _C = cfg
    # Name in detpre's MAPPER_REGISTRY for the train loader; "" = detectron2's DatasetMapper.
    _C.DATALOADER.MAPPER = ""
    _C.DETPRE = CN()
    # Names in detpre's HOOK_REGISTRY appended to DefaultTrainer's hooks (before checkpointing).
    _C.DETPRE.HOOKS = []
    # "SGD" (detectron2's), "LARS" (self-supervised recipes) or "AdamW".
    _C.SOLVER.OPTIMIZER = "SGD"
    _C.SOLVER.LARS = CN()
    # LARS trust coefficient.
    _C.SOLVER.LARS.ETA = 0.001
    # Biases and normalization parameters get no weight decay and no LARS adaptation.
    _C.SOLVER.LARS.EXCLUDE_BIAS_AND_NORM = True


def add_ssl_config(cfg):
    """Pieces shared by the self-supervised methods: momentum target, MLP heads, views."""
    _C = cfg
    _C.MODEL.MOMENTUM = CN()
    # EMA coefficient at iteration 0; BYOL's cosine schedule takes it to END at MAX_ITER.
    _C.MODEL.MOMENTUM.BASE = 0.99
    _C.MODEL.MOMENTUM.END = 1.0
    # "cosine" (BYOL) or "constant".
    _C.MODEL.MOMENTUM.SCHEDULE = "cosine"


def add_soco_config(cfg):
    """SoCo (NeurIPS 2021): object-level BYOL on selective-search proposals."""


def add_fastmoco_config(cfg):
    """Fast-MoCo (ECCV 2022) and MoCo v3: combinatorial patches, InfoNCE."""


def add_jigsaw_config(cfg):
    """Montage (jigsaw) pre-training (ECCV 2020) with ERF-adaptive dense classification."""


def add_spcl_config(cfg):
    """SpCL (NeurIPS 2020): hybrid memory, self-paced clustering, re-ID."""


def add_self_training_config(cfg):
    """Self-training (NeurIPS 2020): teacher pseudo-labels, strong-augmentation student."""


def add_detpre_config(cfg):
    """Add every detpre key to ``cfg`` (a detectron2 CfgNode from ``get_cfg()``), in place."""
    add_dataset_config(cfg)
    add_trainer_config(cfg)
    add_ssl_config(cfg)
    add_soco_config(cfg)
    add_fastmoco_config(cfg)
    add_jigsaw_config(cfg)
    add_spcl_config(cfg)
    add_self_training_config(cfg)
    return cfg


def get_detpre_cfg():
    """detectron2's default config plus every detpre key."""
    from detectron2.config import get_cfg

    return add_detpre_config(get_cfg())
