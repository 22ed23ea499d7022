"""
``add_detpre_config(cfg)``: every key detpre adds to detectron2's config, with its default.

Composed of one ``add_*_config`` per concern/method, like DensePose's. Keys live in their own
nodes (``MODEL.SOCO`` / ``INPUT.SOCO``, ...: a method's model under ``MODEL.X``, its input
pipeline under ``INPUT.X``) or are new leaves next to related detectron2 keys. No detectron2
default changes; detectron2 keys that take more values than detectron2's (each said again at
the detpre key it goes with):

- ``MODEL.META_ARCHITECTURE``: also "SoCo", "FastMoCo", "JigsawPretrain", "SpCL", which declare
  their train mapper and hooks (``detpre.method``), and "ClassAgnosticRCNN" (box pretraining);
- ``DATALOADER.SAMPLER_TRAIN``: also "IdentityBalancedSampler" (SpCL's P x K batches);
- ``SOLVER.CLIP_GRADIENTS.CLIP_TYPE``: also "full_model" (one global norm, Fast-MoCo);
- ``SOLVER.LR_SCHEDULER_NAME``: also "WarmupThenCosineLR" (the cosine after the warm-up, SoCo /
  Fast-MoCo / MoCo v3);
- ``SOLVER.WEIGHT_DECAY_NORM`` / ``WEIGHT_DECAY_BIAS`` / ``BIAS_LR_FACTOR``: also read by LARS.

Renamed keys keep their old names for one release (``RENAMED_KEYS``, with a warning).
"""
import logging
import os
import re
from typing import Any, Optional, Sequence

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
    # False: a DATASETS.COCO json's image file_names must stay inside its image_root (no absolute
    # paths, no "..", no symlinks leading out); True allows them, for a json trusted to name
    # files anywhere.
    _C.DATASETS.ALLOW_OUTSIDE_ROOT = False
    # Where the built-in demo data set is generated on first use; "" means
    # $DETECTRON2_DATASETS/detpre_demo (DETECTRON2_DATASETS defaults to ./datasets).
    _C.DATASETS.DEMO_ROOT = ""


def add_trainer_config(cfg):
    """What ``detpre.engine.Trainer`` builds: mapper, extra hooks, optimizer."""
    _C = cfg
    # Name in detpre's MAPPER_REGISTRY for the train (and test) loader; "" = the mapper the
    # meta-architecture declares (detpre.method), or detectron2's DatasetMapper if none.
    _C.DATALOADER.MAPPER = ""
    _C.DETPRE = CN()
    # Names in detpre's HOOK_REGISTRY appended to DefaultTrainer's hooks (before checkpointing),
    # followed by those the meta-architecture declares and this list lacks.
    _C.DETPRE.HOOKS = []
    # "SGD" (detectron2's), "LARS" (self-supervised recipes), "AdamW" or "Adam" (coupled L2, SpCL).
    # SOLVER.CLIP_GRADIENTS.CLIP_TYPE also takes "full_model": one global norm (Fast-MoCo).
    _C.SOLVER.OPTIMIZER = "SGD"
    # SOLVER.LR_SCHEDULER_NAME also takes "WarmupThenCosineLR" (detpre.solver.lr_scheduler): the
    # warm-up from WARMUP_FACTOR x BASE_LR, then a half cosine to 0 over the iterations after it,
    # as the official SoCo, Fast-MoCo and MoCo v3 codes; detectron2's "WarmupCosineLR" runs its
    # cosine over all of MAX_ITER (15% lower at mid-run with 10 of 100 epochs of warm-up).
    _C.SOLVER.LARS = CN()
    # LARS trust coefficient.
    _C.SOLVER.LARS.ETA = 0.001
    # Biases and normalization parameters get no LARS adaptation (BYOL, SoCo, MoCo v3). Their
    # weight decay follows detectron2's keys: SOLVER.WEIGHT_DECAY_NORM (norm parameters) and
    # SOLVER.WEIGHT_DECAY_BIAS (biases; the LARS recipes set it to 0), their LR BIAS_LR_FACTOR.
    _C.SOLVER.LARS.EXCLUDE_BIAS_AND_NORM = True
    # SOLVER.AMP.ENABLED (detectron2's key) runs every method's forward + loss under autocast
    # (detpre.engine.amp) in this dtype: "float16" (with loss scaling) or "bfloat16" (no
    # scaler; the only one CPU autocast supports).
    _C.SOLVER.AMP.DTYPE = "float16"
    # LR factor of the non-adapted parameters. Their step is the raw gradient times the LR, with
    # no trust ratio: a small-batch run whose BASE_LR is raised above the linear-scaling rule
    # (so the trust-ratio-limited weights move) must scale these back to the rule, i.e. to
    # (rule LR / BASE_LR), or BN scales and biases random-walk away (SoCo demo: |beta| ~ 0.8).
    _C.SOLVER.LARS.NON_ADAPTED_LR_FACTOR = 1.0


def add_reliability_config(cfg):
    """What a run tolerates: bad images, partial weights."""
    _C = cfg
    # Training skips unreadable/missing images (logged once, counted as data/skipped_images);
    # it stops with an error when more than this share of the training images is bad.
    _C.DATALOADER.MAX_BAD_IMAGE_FRACTION = 0.1
    # MODEL.WEIGHTS that fill less than 90% of a pretrained part (backbone, FPN, FPN top block, RPN, box
    # head) they hold is an error; False trains anyway (those weights randomly initialized), with a warning.
    _C.MODEL.WEIGHTS_STRICT = True


def add_ssl_config(cfg):
    """Pieces shared by the self-supervised methods: momentum target, MLP heads, views."""
    _C = cfg
    # The EMA target network's momentum (MomentumUpdate hook); not SOLVER.MOMENTUM (SGD/LARS)
    # nor MODEL.SPCL.MOMENTUM (SpCL's memory update).
    _C.MODEL.EMA = CN()
    # EMA coefficient at iteration 0; BYOL's cosine schedule takes it to END at MAX_ITER.
    _C.MODEL.EMA.BASE = 0.99
    _C.MODEL.EMA.END = 1.0
    # "cosine" (BYOL) or "constant".
    _C.MODEL.EMA.SCHEDULE = "cosine"


def add_soco_config(cfg):
    """SoCo (NeurIPS 2021): object-level BYOL on selective-search proposals."""
    _C = cfg
    _C.MODEL.SOCO = CN()
    # FPN levels the proposals are pooled from (RoIAlign settings: MODEL.ROI_BOX_HEAD.POOLER_*).
    _C.MODEL.SOCO.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    # Scale-aware assignment, detectron2's rule floor(LEVEL + log2(sqrt(wh) / SIZE)): 96 and 4
    # give SoCo's sqrt(wh) <= 48 / 96 / 192 / larger -> P2 / P3 / P4 / P5 for 224 px views
    # (boxes exactly on a boundary go one level up); scale SIZE with INPUT.SOCO.VIEW_SIZE.
    _C.MODEL.SOCO.CANONICAL_BOX_SIZE = 96
    _C.MODEL.SOCO.CANONICAL_LEVEL = 4
    # Projector (box-head feature -> HIDDEN_DIM -> PROJ_DIM) and predictor (PROJ_DIM -> HIDDEN_DIM
    # -> PROJ_DIM), 2-layer MLPs as BYOL's.
    _C.MODEL.SOCO.PROJ_DIM = 256
    _C.MODEL.SOCO.HIDDEN_DIM = 4096
    # Normalization in the MLP heads: "BN", "SyncBN" (multi-GPU) or "".
    _C.MODEL.SOCO.HEAD_NORM = "BN"
    # BYOL loss over the B x K matched proposals: "mean" (SoCo's official code) or "sum" over an
    # image's K proposals, mean over images (the paper's formula; K times the gradient).
    _C.MODEL.SOCO.LOSS_REDUCTION = "mean"
    # Views ("SoCoMapper"): V1 = whole image at VIEW_SIZE, V2 = a random crop at VIEW_SIZE,
    # V3 at SMALL_VIEW_SIZE, SoCo*'s V4 at EXTRA_VIEW_SIZE (0 = no V4); which crop V3 and V4
    # are: VIEWS.
    _C.INPUT.SOCO = CN()
    _C.INPUT.SOCO.VIEW_SIZE = 224
    _C.INPUT.SOCO.SMALL_VIEW_SIZE = 112
    _C.INPUT.SOCO.EXTRA_VIEW_SIZE = 0
    # "official" (SoCo's code, contrast/data/dataset.py): the last view (V3; SoCo*'s V4) is a
    # random crop of its own with K proposals of its own, paired with V1 boxes of their own; the
    # other views show V2's K proposals (SoCo*'s V3 = V2 resized). "paper" (its text): V3 = V2
    # resized, V4 another crop, and every view shows the same K proposals.
    _C.INPUT.SOCO.VIEWS = "official"
    # Area fraction (of the image) and aspect-ratio ranges of the V2 / V4 crops (SoCo: 0.5-1).
    _C.INPUT.SOCO.CROP_SCALE = (0.5, 1.0)
    _C.INPUT.SOCO.CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
    # Proposals per image (K); each is visible in every view (repeated when fewer exist).
    _C.INPUT.SOCO.NUM_PROPOSALS = 4
    # A proposal is kept when at least this fraction of its area lies inside every crop.
    _C.INPUT.SOCO.MIN_VISIBLE = 0.5
    # ... and its clipped box is at least this many pixels wide and high in every view.
    _C.INPUT.SOCO.MIN_BOX_SIZE = 8
    # Crops are redrawn up to this many times while fewer than NUM_PROPOSALS proposals qualify.
    _C.INPUT.SOCO.MAX_TRIES = 10
    # Box jitter of V1's boxes (SoCo: prob 0.5, ratio 0.1): x, y move by U(-r, r) * w, h;
    # w, h change by U(-r, r) * themselves.
    _C.INPUT.SOCO.JITTER_PROB = 0.5
    _C.INPUT.SOCO.JITTER_RATIO = 0.1
    # An image without proposals gets this many random boxes (sqrt area 0.3-0.8 of the image's,
    # aspect ratio 1/3-3), as SoCo's code does.
    _C.INPUT.SOCO.RANDOM_PROPOSALS = 32
    # Gaussian-blur sigma multiplier (BYOL's 0.1-2.0 is for 224 px views).
    _C.INPUT.SOCO.SIGMA_SCALE = 1.0
    # Box cutout on V2 and V3 (SoCo's code, its 100-epoch FPN recipe: 0.5, 0.1-0.3): with this
    # probability per box, a square of U(CUTOUT_RATIO) of the box's area inside it is filled
    # with MODEL.PIXEL_MEAN. 0 = off.
    _C.INPUT.SOCO.CUTOUT_PROB = 0.0
    _C.INPUT.SOCO.CUTOUT_RATIO = (0.1, 0.3)
    # Colour jitter / grayscale / blur / solarization of the views batched on MODEL.DEVICE after
    # the batch is loaded (detpre.data.transforms.batched_views) instead of in the CPU workers.
    # Same operations and ranges; not with CUTOUT_PROB > 0 (cutout comes after them on CPU).
    _C.INPUT.SOCO.GPU_AUGMENT = False


def add_fastmoco_config(cfg):
    """Fast-MoCo (ECCV 2022) and MoCo v3: combinatorial patches, InfoNCE."""
    _C = cfg
    _C.MODEL.FASTMOCO = CN()
    # "mean" (the paper), "weighted" (random convex weights), "max", or "off" (= MoCo v3).
    _C.MODEL.FASTMOCO.COMBINE = "mean"
    # m: each view is divided into m x m non-overlapping patches.
    _C.MODEL.FASTMOCO.NUM_SPLITS = 2
    # n: every n-subset of a view's m*m patch embeddings is combined (2 of 4 -> 6 combinations).
    _C.MODEL.FASTMOCO.COMBINE_SIZE = 2
    # "other": combinations of view 1 predict view 2's target (the paper); "same": view 1's.
    _C.MODEL.FASTMOCO.TARGET_VIEW = "other"
    # InfoNCE temperature tau.
    _C.MODEL.FASTMOCO.TEMPERATURE = 1.0
    # s in the loss s * (ctr_1 + ctr_2) / 2 (each ctr the InfoNCE averaged over combinations);
    # 0 = the method's official scale: 1 for Fast-MoCo (its code), 4 * tau for MoCo v3 (COMBINE
    # "off": 2 tau per direction, the two summed).
    _C.MODEL.FASTMOCO.LOSS_SCALE = 0.0
    # Backbone feature that is globally pooled into the embedding.
    _C.MODEL.FASTMOCO.IN_FEATURE = "res5"
    # Projector: PROJ_LAYERS Linear layers, hidden HIDDEN_DIM, output PROJ_DIM, BN after the last
    # (MoCo v3 ResNet: 2 layers 4096 -> 256, BN without affine; Fast-MoCo: 3 layers
    # 2048-2048-2048, BN with affine, PROJ_LAST_AFFINE True).
    _C.MODEL.FASTMOCO.PROJ_DIM = 256
    _C.MODEL.FASTMOCO.HIDDEN_DIM = 4096
    _C.MODEL.FASTMOCO.PROJ_LAYERS = 2
    _C.MODEL.FASTMOCO.PROJ_LAST_AFFINE = False
    # Predictor: PRED_LAYERS Linear layers, PROJ_DIM -> PRED_HIDDEN_DIM -> PROJ_DIM
    # (0 = HIDDEN_DIM, MoCo v3's; Fast-MoCo's bottleneck: 512).
    _C.MODEL.FASTMOCO.PRED_LAYERS = 2
    _C.MODEL.FASTMOCO.PRED_HIDDEN_DIM = 0
    # A bias in the predictor's last Linear: False as MoCo v3 (moco/builder.py _build_mlp: every
    # Linear bias-free), True as Fast-MoCo (fastmoco_builder.py prediction_MLP.layer2).
    _C.MODEL.FASTMOCO.PRED_LAST_BIAS = False
    # True: the predictor's parameters keep their initial LR (SOLVER.BASE_LR) all run, no
    # warm-up or decay (Fast-MoCo's WCosConLR); False: they follow the schedule (MoCo v3).
    _C.MODEL.FASTMOCO.PRED_CONSTANT_LR = False
    # The momentum target at iteration 0: "copy" of the online backbone + projector (MoCo v3) or
    # "random", a network initialized on its own (Fast-MoCo's code builds it separately and never
    # copies; its EMA then pulls it towards the online one).
    _C.MODEL.FASTMOCO.TARGET_INIT = "copy"
    # Normalization in the MLP heads: "BN", "SyncBN" (multi-GPU) or "".
    _C.MODEL.FASTMOCO.HEAD_NORM = "BN"
    # Take negatives (keys) from every process, as MoCo v3.
    _C.MODEL.FASTMOCO.GATHER_KEYS = True
    # Two-view mapper ("TwoViewMapper"): random resized crops + BYOL/MoCo v3 photometric views.
    _C.INPUT.TWO_VIEW = CN()
    # Side of each (square) view in pixels; must be divisible by MODEL.FASTMOCO.NUM_SPLITS.
    _C.INPUT.TWO_VIEW.SIZE = 224
    # Area fraction range of the random resized crop (MoCo v3 ResNet: 0.08-1).
    _C.INPUT.TWO_VIEW.SCALE = (0.08, 1.0)
    # Aspect-ratio range of the random resized crop.
    _C.INPUT.TWO_VIEW.RATIO = (3.0 / 4.0, 4.0 / 3.0)
    # Gaussian-blur sigma multiplier (BYOL's 0.1-2.0 is for 224 px views).
    _C.INPUT.TWO_VIEW.SIGMA_SCALE = 1.0
    # Photometric views: "byol" (asymmetric, MoCo v3's ResNet recipe) or "mocov2" (symmetric:
    # jitter 0.4/0.4/0.4/0.1 at p 0.8, grey p 0.2, blur p 0.5, no solarization; Fast-MoCo's).
    _C.INPUT.TWO_VIEW.AUGMENT = "byol"
    # The photometric views batched on MODEL.DEVICE (as INPUT.SOCO.GPU_AUGMENT).
    _C.INPUT.TWO_VIEW.GPU_AUGMENT = False


def add_jigsaw_config(cfg):
    """Montage (jigsaw) pre-training (ECCV 2020) with ERF-adaptive dense classification."""
    _C = cfg
    # json cache of the extracted samples (tools/extract_jigsaw_samples.py; made on first use).
    _C.DATASETS.JIGSAW_SAMPLES = ""
    _C.MODEL.JIGSAW = CN()
    # Foreground classes of DATASETS.TRAIN; the classifier has one more output (background).
    _C.MODEL.JIGSAW.NUM_CLASSES = 80
    # ResNet output classified densely (one of MODEL.RESNETS.OUT_FEATURES).
    _C.MODEL.JIGSAW.IN_FEATURE = "res5"
    # "erf": ERF-adaptive dense classification; "block": one prediction per region (pooled);
    # "global": global pooling against the area-weighted label (the paper's two baselines).
    _C.MODEL.JIGSAW.MODE = "erf"
    # Floor on the weight of the region holding a location, in the ERF-adaptive soft label.
    _C.MODEL.JIGSAW.TAU = 0.5
    # The ERF is re-measured on the current model every this many iterations (ERFRefresh hook).
    _C.MODEL.JIGSAW.ERF_PERIOD = 5000
    # Montages of the current batch used to measure the ERF.
    _C.MODEL.JIGSAW.ERF_BATCH = 8
    _C.INPUT.JIGSAW = CN()
    # Montage side in pixels (a multiple of the feature stride, 32 for res5).
    _C.INPUT.JIGSAW.SIZE = 224
    # The 2x2 split point (top-left sample's size) is kept within this share of SIZE.
    _C.INPUT.JIGSAW.SPLIT_RANGE = (0.25, 0.5)
    # Positives per negative (background) sample; 0 = no negatives.
    _C.INPUT.JIGSAW.POS_NEG_RATIO = 10.0
    # An expanded positive is at most this many times the ground-truth box's side.
    _C.INPUT.JIGSAW.MAX_EXPAND = 2.0
    # Ground-truth boxes narrower or lower than this (pixels) give no positive.
    _C.INPUT.JIGSAW.MIN_SIZE = 4
    # Seed of the (one-off) sample extraction.
    _C.INPUT.JIGSAW.EXTRACT_SEED = 0


def add_spcl_config(cfg):
    """SpCL (NeurIPS 2020): hybrid memory, self-paced clustering, re-ID."""
    _C = cfg
    # [[name, root, layout], ...]: re-ID releases as downloaded -> <name>_train and test splits;
    # layout market1501 / dukemtmc / msmt17 / personx / veri776 / vehicleid / vehiclex, left
    # out or "" = detected from the files (docs/methods/spcl.md).
    _C.DATASETS.REID = []
    # [[name, detection_data_set], ...]: every ground-truth box of a registered detection data
    # set as one re-ID instance (crop).
    _C.DATASETS.REID_CROPS = []
    # Where the synthetic re-ID demo is generated; "" = $DETECTRON2_DATASETS/detpre_reid_demo.
    _C.DATASETS.REID_DEMO_ROOT = ""
    _C.MODEL.SPCL = CN()
    # Names in DATASETS.TRAIN that are the labelled source domain; the others are target.
    _C.MODEL.SPCL.SOURCE_DATASETS = []
    # Memory size: source identities and target images of DATASETS.TRAIN. 0 = count them from
    # the registered data sets when the model is built; set both to build it without the data
    # (ClusterRefresh checks them against the data sets before training).
    _C.MODEL.SPCL.NUM_SOURCE_CLASSES = 0
    _C.MODEL.SPCL.NUM_TARGET_INSTANCES = 0
    # Backbone output that is pooled into the embedding.
    _C.MODEL.SPCL.IN_FEATURE = "res5"
    # "avg" or "gem" (generalized mean pooling with exponent GEM_P).
    _C.MODEL.SPCL.POOLING = "avg"
    _C.MODEL.SPCL.GEM_P = 3.0
    # Domain-specific BN (one set of BN statistics/affines for source, one for target; SpCL's
    # UDA recipe, on in configs/spcl/spcl_uda_*).
    _C.MODEL.SPCL.DSBN = False
    # UDA loss: loss_s + loss_t, each the mean over its domain's images (SpCL's trainer); False
    # = one mean over the whole batch.
    _C.MODEL.SPCL.LOSS_PER_DOMAIN = True
    # Stride of res5: 1 as SpCL's ResNet-50 (its layer4 unstrided), 2 = detectron2's.
    _C.MODEL.SPCL.LAST_STRIDE = 1
    # K images per identity in DATALOADER.SAMPLER_TRAIN "IdentityBalancedSampler": half of each
    # batch P x K source images by identity, half P x K target images by the current pseudo-label
    # (SpCL's 64 + 64; unsupervised: all P x K target), other cameras first.
    _C.MODEL.SPCL.NUM_INSTANCES = 4
    # Temperature of the unified contrastive loss (the paper: 0.05).
    _C.MODEL.SPCL.TEMPERATURE = 0.05
    # Memory momentum m: entry <- m * entry + (1 - m) * batch feature (the paper: 0.2).
    _C.MODEL.SPCL.MOMENTUM = 0.2
    # Iterations between clusterings (one SpCL "epoch"; the official code: 400, 800 with MSMT17
    # as the target).
    _C.MODEL.SPCL.CLUSTER_PERIOD = 400
    # k-reciprocal Jaccard distance: k1 neighbours (the point itself among them, as SpCL's code
    # counts), k2 for query expansion (the paper: 30, 6).
    _C.MODEL.SPCL.K1 = 30
    _C.MODEL.SPCL.K2 = 6
    # DBSCAN radius, gap to the tighter/looser radii of the reliability criterion, min samples.
    _C.MODEL.SPCL.EPS = 0.6
    _C.MODEL.SPCL.EPS_GAP = 0.02
    _C.MODEL.SPCL.MIN_SAMPLES = 4
    # Self-paced reliability criterion (independence + compactness); False keeps every cluster.
    _C.MODEL.SPCL.RELIABILITY = True
    # Quantile of 1 - IoU_indep over clusters, fixed at the first clustering, above which a
    # cluster is split into outliers (the paper: 0.9).
    _C.MODEL.SPCL.INDEP_QUANTILE = 0.9
    # "first": extract target features once, then cluster the memory (the paper); "every":
    # re-extract them before every clustering.
    _C.MODEL.SPCL.EXTRACT = "first"
    # Images per forward pass when extracting features for the memory.
    _C.MODEL.SPCL.EXTRACT_BATCH_SIZE = 64
    # Re-ID mapper ("ReIDMapper"): fixed (height, width), random flip probability, pad-and-crop
    # padding (px), random erasing probability, random-resized-crop area range ((1, 1) = off).
    _C.INPUT.REID = CN()
    _C.INPUT.REID.SIZE = (256, 128)
    _C.INPUT.REID.FLIP_PROB = 0.5
    _C.INPUT.REID.PAD = 10
    _C.INPUT.REID.ERASING_PROB = 0.5
    _C.INPUT.REID.CROP_SCALE = (1.0, 1.0)
    # Random rotation up to this many degrees, and per-channel gain in [1 - g, 1 + g] (0 = off;
    # not in SpCL's person recipe, useful for objects seen at any pose / colour cast).
    _C.INPUT.REID.ROTATION = 0.0
    _C.INPUT.REID.CHANNEL_GAIN = 0.0


def add_self_training_config(cfg):
    """Self-training (NeurIPS 2020): teacher pseudo-labels, strong-augmentation student.
    MODEL.SELF_TRAINING: the streams, the loss, the pseudo-labels; INPUT.SELF_TRAINING: the
    student's augmentation (as MODEL.SOCO / INPUT.SOCO)."""
    _C = cfg
    _C.MODEL.SELF_TRAINING = CN()
    _C.INPUT.SELF_TRAINING = CN()
    # On: the train loader mixes DATASETS.TRAIN with PSEUDO_DATASETS (build_self_training_loader).
    _C.MODEL.SELF_TRAINING.ENABLED = False
    # Registered pseudo-labeled data sets (e.g. a tools/generate_pseudo_labels.py json in DATASETS.COCO).
    _C.MODEL.SELF_TRAINING.PSEUDO_DATASETS = ()
    # Pseudo-labeled images per labeled image in each batch (1.0 = the paper's 1:1).
    _C.MODEL.SELF_TRAINING.PSEUDO_RATIO = 1.0
    # Loss normalization (the paper): L = (L_h + a * (avg L_h / avg L_p) * L_p) / (1 + a).
    _C.MODEL.SELF_TRAINING.LOSS_NORM = True
    # a: weight of the pseudo-labeled stream's loss.
    _C.MODEL.SELF_TRAINING.PSEUDO_LOSS_WEIGHT = 1.0
    # EMA momentum of the moving averages avg L_h, avg L_p (the running mean over the first
    # 1 / (1 - momentum) steps, then the EMA).
    _C.MODEL.SELF_TRAINING.LOSS_NORM_MOMENTUM = 0.99
    # Steps before the ratio avg L_h / avg L_p is used (1 until then): the first steps' averages
    # are a handful of values, and a near-zero pseudo loss among them gave a huge pseudo weight.
    _C.MODEL.SELF_TRAINING.LOSS_NORM_WARMUP = 100
    # The losses the pseudo-labeled images train (the model's loss names, e.g.
    # ["loss_rpn_cls", "loss_rpn_loc", "loss_box_reg"]: where the teacher finds objects but
    # confuses their classes); [] = all of them offline, Unbiased Teacher's terms online
    # (UNSUP_LOSS_WEIGHT, PSEUDO_BOX_REGRESSION).
    _C.MODEL.SELF_TRAINING.PSEUDO_LOSSES = []
    # Pseudo-label score threshold (the paper's hard threshold) and optional per-class ones
    # (a list of NUM_CLASSES floats, contiguous class order; [] = SCORE_THRESHOLD for all).
    _C.MODEL.SELF_TRAINING.SCORE_THRESHOLD = 0.5
    _C.MODEL.SELF_TRAINING.CLASS_THRESHOLDS = []
    # PseudoLabel hook: relabel UNLABELED_DATASET with the current model every REFRESH_PERIOD
    # iterations (0 = never); jsons go to OUTPUT_DIR/pseudo_labels/.
    _C.MODEL.SELF_TRAINING.REFRESH_PERIOD = 0
    _C.MODEL.SELF_TRAINING.UNLABELED_DATASET = ""
    # Images per inference batch when pseudo-labelling.
    _C.MODEL.SELF_TRAINING.LABEL_BATCH_SIZE = 4
    # "offline": a teacher labels PSEUDO_DATASETS once (or every REFRESH_PERIOD), the student trains
    # on them (SelfTrainingTrainer). "online" (Unbiased Teacher): an EMA of the student labels each
    # batch of UNLABELED_DATASET as training goes (OnlineTeacherTrainer; ENABLED/PSEUDO_DATASETS
    # unused). Online batches: SOLVER.IMS_PER_BATCH labeled images (the supervised loader) + PSEUDO_RATIO
    # times as many unlabeled ones. docs/methods/self_training.md.
    _C.MODEL.SELF_TRAINING.MODE = "offline"
    # Online: supervised-only iterations before the teacher starts (copied from the student then).
    _C.MODEL.SELF_TRAINING.BURN_IN_ITERS = 2000
    # Online: teacher <- m * teacher + (1 - m) * student after every step from the burn-in on
    # (weights and BN statistics).
    _C.MODEL.SELF_TRAINING.EMA_MOMENTUM = 0.999
    # Online: weight of the unlabeled images' loss (RPN objectness + RoI classification, or
    # PSEUDO_LOSSES).
    _C.MODEL.SELF_TRAINING.UNSUP_LOSS_WEIGHT = 4.0
    # Online: also train box regression (RPN and RoI) on pseudo-boxes (Unbiased Teacher: off).
    _C.MODEL.SELF_TRAINING.PSEUDO_BOX_REGRESSION = False
    # Online: the student's view of an unlabeled image, made from the teacher's (weak) view:
    # "photometric" (Unbiased Teacher: colour jitter, grayscale, blur, cutout; same geometry) or
    # "S1"-"S4" (INPUT.SELF_TRAINING's levels, pseudo-boxes moved with their geometry).
    _C.MODEL.SELF_TRAINING.STRONG_AUGMENT = "photometric"
    # Online: the student's strong views update batch norm's running statistics too (what the
    # student and its EMA teacher are evaluated with); False keeps them to the labeled images
    # (the supervised control's). No effect with FrozenBN.
    _C.MODEL.SELF_TRAINING.STRONG_VIEW_BN_STATS = True
    # Online: warn when the teacher keeps no box (SCORE_THRESHOLD / CLASS_THRESHOLDS) for this
    # many consecutive iterations (and every as many after); 0 = never.
    _C.MODEL.SELF_TRAINING.EMPTY_WARN_ITERS = 50
    # Student augmentation of the pseudo stream: "S1" flip + scale jitter 0.8-1.2 crop, "S2" S1 +
    # AutoAugment, "S3" AutoAugment + scale jitter 0.5-2.0, "S4" RandAugment + 0.5-2.0, "none".
    _C.INPUT.SELF_TRAINING.AUGMENT = "S1"
    # Same for the labeled stream; "" = AUGMENT.
    _C.INPUT.SELF_TRAINING.LABELED_AUGMENT = ""
    # Side of the square scale-jitter crop (pixels); images are resized then cropped/padded to it.
    _C.INPUT.SELF_TRAINING.IMAGE_SIZE = 1024
    # RandAugment (S4): number of ops per image and their shared magnitude (0-10).
    _C.INPUT.SELF_TRAINING.RANDAUG_N = 2
    _C.INPUT.SELF_TRAINING.RANDAUG_M = 9


def add_collapse_config(cfg):
    """The CollapseWatch hook (detpre.engine.collapse): a backbone's effective dimension while it
    pretrains, and a warning when it collapses (docs/collapse.md). On where a config lists
    "CollapseWatch" in DETPRE.HOOKS (detpre's pretraining configs do)."""
    _C = cfg
    _C.DETPRE.COLLAPSE = CN()
    # False: the hook, if listed, measures nothing.
    _C.DETPRE.COLLAPSE.ENABLED = True
    # Iterations between measurements (also one before the first step and one after the last);
    # 0 = about twenty per run: the multiple of 20 (the metrics writers' period) nearest
    # MAX_ITER / 20. Below 20, metrics.json and TensorBoard keep only one value per 20 iterations.
    _C.DETPRE.COLLAPSE.PERIOD = 0
    # Warn when the effective dimension falls below this fraction of its first measurement.
    _C.DETPRE.COLLAPSE.THRESHOLD = 0.1
    # Images measured: this many of DATASETS.TRAIN, evenly spaced over it, read once.
    _C.DETPRE.COLLAPSE.NUM_IMAGES = 16
    # Their shorter side after resizing (then center-cropped to one shared size); 0 = the
    # test-time resize, INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST, as a detector fine-tuned from the
    # backbone sees images.
    _C.DETPRE.COLLAPSE.IMAGE_SIZE = 0
    # The ResNet stage measured (res2-res5).
    _C.DETPRE.COLLAPSE.FEATURE = "res4"


def add_plateau_config(cfg):
    """Fine-tuning to a plateau (``detpre.engine.plateau``): evaluate on a selection split every
    PERIOD iterations, keep the best checkpoint, stop when it stops improving (docs/converged.md)."""
    _C = cfg
    _C.TEST.PLATEAU = CN()
    # On: tools/train_net.py trains with PlateauTrainer, which evaluates DATASET every PERIOD
    # iterations (and after the last one), writes OUTPUT_DIR/plateau.json, saves model_best.pth and
    # stops once METRIC has not risen by MIN_DELTA over its best for PATIENCE evaluations in a row
    # (SOLVER.MAX_ITER is the cap). model_final.pth then holds the best evaluation's weights (the
    # run is finished), and the end-of-training evaluation (DATASETS.TEST: the report split)
    # scores them. Not with the self-training trainers.
    _C.TEST.PLATEAU.ENABLED = False
    # Iterations between evaluations.
    _C.TEST.PLATEAU.PERIOD = 100
    # Evaluations in a row without an improvement of MIN_DELTA before training stops.
    _C.TEST.PLATEAU.PATIENCE = 5
    # An improvement: METRIC above the best so far by more than this (AP points).
    _C.TEST.PLATEAU.MIN_DELTA = 0.1
    # The selection split (a registered data set with an evaluator, in neither DATASETS.TRAIN
    # nor DATASETS.TEST), e.g. "detpre_demo_select".
    _C.TEST.PLATEAU.DATASET = ""
    # "task/metric" of its evaluation results: "bbox/AP", "segm/AP", "bbox/AP50", ...
    _C.TEST.PLATEAU.METRIC = "bbox/AP"


def add_detpre_config(cfg: CN) -> CN:
    """Add every detpre key to ``cfg`` (a detectron2 CfgNode from ``get_cfg()``), in place."""
    add_dataset_config(cfg)
    add_trainer_config(cfg)
    add_reliability_config(cfg)
    add_ssl_config(cfg)
    add_soco_config(cfg)
    add_fastmoco_config(cfg)
    add_jigsaw_config(cfg)
    add_spcl_config(cfg)
    add_self_training_config(cfg)
    add_collapse_config(cfg)
    add_plateau_config(cfg)
    return cfg


# Keys renamed in detpre 0.1 (old -> new, the most specific first): the old names are still
# accepted, with a warning, in config files and ``KEY VALUE`` overrides; detpre 0.2 drops them.
_SELF_TRAINING_INPUT_KEYS = ("AUGMENT", "LABELED_AUGMENT", "IMAGE_SIZE", "RANDAUG_N", "RANDAUG_M")
RENAMED_KEYS = {
    **{f"SELF_TRAINING.{k}": f"INPUT.SELF_TRAINING.{k}" for k in _SELF_TRAINING_INPUT_KEYS},
    "SELF_TRAINING": "MODEL.SELF_TRAINING",
    "MODEL.MOMENTUM": "MODEL.EMA",
}


def renamed_key(key):
    """The current name of the full key ``key`` if it is an old one, else None."""
    for old, new in RENAMED_KEYS.items():
        if key == old or key.startswith(old + "."):
            return new + key[len(old):]
    return None


def _warn_renamed(old, new, where):
    logging.getLogger(__name__).warning(
        "%s: config key %s is deprecated, use %s (the old name is accepted until detpre 0.2)",
        where, old, new)


def _leaves(node, prefix):
    for k, v in node.items():
        if isinstance(v, dict):
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield prefix + k, v


def translate_renamed(tree, where="config"):
    """Move the old keys of a loaded config dict (nested, in place) to their new names."""
    moved = []

    def walk(node, prefix):
        for k in list(node):
            key = prefix + k
            if renamed_key(key) is not None:
                v = node.pop(k)
                moved.extend(_leaves(v, key + ".") if isinstance(v, dict) else [(key, v)])
            elif isinstance(node[k], dict):
                walk(node[k], key + ".")

    walk(tree, "")
    for key, value in moved:
        new = renamed_key(key)
        _warn_renamed(key, new, where)
        *parents, leaf = new.split(".")
        node = tree
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    return tree


class DetpreCfgNode(CN):
    """detectron2's ``CfgNode`` that also reads the renamed keys' old names (``RENAMED_KEYS``), and
    reads every file (``_BASE_`` ones included) with ``yaml.safe_load``: detectron2's
    ``merge_from_file`` falls back to ``yaml.unsafe_load``, which runs a ``!!python/...`` tag's code.
    Only a file listed in ``DETPRE_TRUSTED_FILES`` (``detpre.utils.safe_load``), or one that ships with
    detpre or detectron2, gets that fallback."""

    @classmethod
    def load_yaml_with_base(cls, filename, allow_unsafe=False):
        import yaml

        from detpre.errors import DetpreFileNotFoundError
        from detpre.utils.safe_load import is_trusted_config, refusal

        if not os.path.isfile(filename):
            raise DetpreFileNotFoundError(f"config {filename} does not exist")
        try:
            loaded = super().load_yaml_with_base(filename, allow_unsafe=is_trusted_config(filename))
        except DetpreFileNotFoundError as e:  # raised by the call for a _BASE_ (a recursion)
            if f"config {filename} " in str(e) or "_BASE_" in str(e):
                raise
            raise DetpreFileNotFoundError(f"config {filename}: its _BASE_ {str(e)[len('config '):]}; "
                                          "fix the _BASE_ line (a path relative to this file)") from None
        except yaml.constructor.ConstructorError as e:  # a tag safe_load does not build
            tag = re.search(r"tag '([^']+)'", str(e.problem))
            what = f"it has the YAML tag {tag.group(1)}" if tag else str(e.problem)
            line = f" (line {e.problem_mark.line + 1})" if e.problem_mark else ""
            raise refusal(filename, what + line, "config", verb="load",
                          holds="numbers, strings, lists, mappings") from None
        return translate_renamed(loaded, filename)

    def merge_from_list(self, cfg_list):
        cfg_list = list(cfg_list)
        for i in range(0, len(cfg_list) - 1, 2):
            new = renamed_key(str(cfg_list[i]))
            if new is not None:
                _warn_renamed(cfg_list[i], new, "the command line")
                cfg_list[i] = new
        return super().merge_from_list(cfg_list)


def get_detpre_cfg(config_file: Optional[str] = None, opts: Sequence[Any] = ()) -> CN:
    """detectron2's default config plus every detpre key, then ``config_file`` and ``opts``
    (``KEY VALUE ...``) merged in, if given. Old names of renamed keys are accepted with a
    warning (``RENAMED_KEYS``)."""
    from detectron2.config import get_cfg

    from detpre.errors import DetpreFileNotFoundError

    cfg = DetpreCfgNode(add_detpre_config(get_cfg()))
    if config_file and not os.path.isfile(config_file):
        raise DetpreFileNotFoundError(f"--config-file {config_file} does not exist")
    try:
        if config_file:
            cfg.merge_from_file(config_file)
        if opts:
            cfg.merge_from_list(list(opts))
    except (KeyError, AssertionError) as e:  # yacs: KeyError from files, AssertionError from opts
        raise _unknown_key_error(cfg, e, config_file, opts) from None
    return cfg


def _all_keys(node, prefix=""):
    for k, v in node.items():
        if isinstance(v, CN):
            yield from _all_keys(v, prefix + k + ".")
        else:
            yield prefix + k


def _unknown_key_error(cfg, err, config_file, opts):
    """yacs' "Non-existent (config) key: X" as one line with the closest valid key."""
    import difflib

    from detpre.errors import DetpreError

    text = str(err.args[0]) if err.args else str(err)
    if not text.startswith(("Non-existent config key:", "Non-existent key:")):
        return err
    key = text.split(":", 1)[1].strip()
    keys = list(_all_keys(cfg))
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.5)
    if not close:  # a typo in the leaf name under another node: match the last part
        by_leaf = {k.rsplit(".", 1)[-1]: k for k in keys}
        leaf = difflib.get_close_matches(key.rsplit(".", 1)[-1], list(by_leaf), n=1, cutoff=0.7)
        close = [by_leaf[leaf[0]]] if leaf else []
    where = "the command line" if key in [str(o) for o in (opts or ())[::2]] else (config_file or "the config")
    hint = f"; did you mean {close[0]}?" if close else "; see detpre/config.py and detectron2's defaults"
    return DetpreError(f"unknown config key {key} (in {where}){hint}")
