"""
The jigsaw sample cache: one json per (training data sets, extraction parameters), written by
``tools/extract_jigsaw_samples.py`` or on first use by the mapper, atomically. A file made for
other data sets or other parameters is refused with a message, never silently used. The file is
locked while extracted (``<file>.lock``): a second writer stops with a message; with several
processes of one training run, the main one extracts and the others wait for it.
"""
import json
import logging
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils import comm

from detpre.utils.io import output_lock, write_json_atomic

from .extract import aspect_group, extract_samples

__all__ = [
    "SAMPLES_VERSION", "extraction_params", "save_samples", "load_samples", "ensure_samples",
    "extract_from_config", "num_classes_of",
]

SAMPLES_VERSION = 1
_PARAM_KEYS = ("datasets", "num_classes", "pos_neg_ratio", "max_expand", "min_size", "seed")


def extraction_params(cfg):
    """What a sample file depends on, from a detpre config."""
    j = cfg.INPUT.JIGSAW
    return {
        "datasets": list(cfg.DATASETS.TRAIN),
        "num_classes": int(cfg.MODEL.JIGSAW.NUM_CLASSES),
        "pos_neg_ratio": float(j.POS_NEG_RATIO),
        "max_expand": float(j.MAX_EXPAND),
        "min_size": int(j.MIN_SIZE),
        "seed": int(j.EXTRACT_SEED),
    }


def save_samples(path, data, params):
    out = {"version": SAMPLES_VERSION, "params": dict(params), **data}
    write_json_atomic(path, out, separators=(",", ":"))


def load_samples(path, params=None):
    """The cached samples, each with its group; checked against ``params`` when given."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read jigsaw samples ({e}); delete it and re-run "
                         "tools/extract_jigsaw_samples.py") from e
    if not isinstance(data, dict) or data.get("version") != SAMPLES_VERSION:
        raise ValueError(f"{path}: not a jigsaw sample file of version {SAMPLES_VERSION}; "
                         "re-run tools/extract_jigsaw_samples.py")
    if params is not None:
        have = data.get("params", {})
        diff = {k: (have.get(k), params[k]) for k in _PARAM_KEYS if have.get(k) != params[k]}
        if diff:
            raise ValueError(
                f"{path} was extracted with other settings than this config "
                f"(file vs config: {diff}); re-extract it with tools/extract_jigsaw_samples.py "
                "--overwrite, or point DATASETS.JIGSAW_SAMPLES at another file")
    n = len(data["images"])
    for s in data["samples"]:
        if len(s) != 6 or not 0 <= s[0] < n or s[3] <= s[1] or s[4] <= s[2]:
            raise ValueError(f"{path}: malformed sample {s}; "
                             "re-run tools/extract_jigsaw_samples.py")
    data["groups"] = [aspect_group(s[3] - s[1], s[4] - s[2]) for s in data["samples"]]
    return data


def _extract(path, params):
    with output_lock(path, "jigsaw sample file"):
        return _extract_locked(path, params)


def _extract_locked(path, params):
    logging.getLogger(__name__).info("Extracting jigsaw samples of %s into %s",
                                     params["datasets"], path)
    dicts = [d for name in params["datasets"] for d in DatasetCatalog.get(name)]
    for name in params["datasets"]:  # metadata is complete once the data set is loaded
        classes = MetadataCatalog.get(name).get("thing_classes", None)
        if classes is not None and len(classes) != params["num_classes"]:
            raise ValueError(f"{name} has {len(classes)} classes but MODEL.JIGSAW.NUM_CLASSES "
                             f"is {params['num_classes']}; set it to {len(classes)}")
    data = extract_samples(dicts, params["num_classes"], params["pos_neg_ratio"],
                           params["max_expand"], params["min_size"], params["seed"])
    save_samples(path, data, params)
    return data


def num_classes_of(dataset_names):
    """Number of classes in the data sets' metadata (``thing_classes``); they must agree."""
    for n in dataset_names:
        DatasetCatalog.get(n)  # loading a data set completes its metadata
    counts = {len(MetadataCatalog.get(n).get("thing_classes", [])) for n in dataset_names}
    if len(counts) != 1 or 0 in counts:
        raise ValueError(f"data sets {list(dataset_names)} have no common thing_classes "
                         f"(counts {sorted(counts)}); set MODEL.JIGSAW.NUM_CLASSES with a config")
    return counts.pop()


def ensure_samples(path, params):
    """Load ``path``, extracting it first from the registered data sets if it is missing."""
    if not path:
        raise ValueError("DATASETS.JIGSAW_SAMPLES is empty: name the json file for the jigsaw "
                         "samples (it is extracted there on first use)")
    if comm.is_main_process() and not os.path.isfile(path):
        _extract(path, params)
    comm.synchronize()  # the other processes of a multi-GPU run wait for the file
    return load_samples(path, params)


def extract_from_config(cfg, output="", overwrite=False):
    """
    Extract the samples of ``cfg.DATASETS.TRAIN`` into ``output`` (default
    ``DATASETS.JIGSAW_SAMPLES``); an existing file is kept unless ``overwrite``. Returns
    ``(path, counts)`` with the number of samples per label kind and per group.
    """
    path = output or cfg.DATASETS.JIGSAW_SAMPLES
    params = extraction_params(cfg)
    if overwrite and path and os.path.isfile(path):
        _extract(path, params)
    data = ensure_samples(path, params)
    counts = {"positives": data["num_positives"], "negatives": data["num_negatives"]}
    counts.update({g: data["groups"].count(g) for g in ("S", "T", "W")})
    return path, counts
