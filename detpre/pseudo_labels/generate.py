"""
Pseudo-labelling: a teacher detector (eval mode, no gradient) over a list of dataset dicts, in
batches, kept predictions written as one COCO-format json.

The images are processed in chunks of whole batches; each finished chunk is saved atomically
under ``<output>.parts/``, so a killed run resumes at the first missing chunk and (same batches,
same model) produces the same json as an uninterrupted one. The final json is written to a
temporary name and renamed; then the parts are removed.
"""
import contextlib
import hashlib
import json
import logging
import os
import shutil

import numpy as np
import torch
from detectron2.data import DatasetFromList, MapDataset
from detectron2.data.build import trivial_batch_collator
from torch.utils.data import DataLoader
from tqdm import tqdm

from .coco import instances_to_annotations, write_compact_json

__all__ = ["teacher_mode", "predict_batches", "generate_pseudo_labels", "PseudoLabelInterrupted"]

logger = logging.getLogger(__name__)


class PseudoLabelInterrupted(RuntimeError):
    """Raised when ``max_chunks`` stops a run early (resume it by calling again)."""


@contextlib.contextmanager
def teacher_mode(model):
    """The teacher runs in eval mode without autograd; its previous mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


class _CheckedMapper:
    """The test mapper, with an unreadable image turned into an error naming the file."""

    def __init__(self, mapper):
        self.mapper = mapper

    def __call__(self, d):
        try:
            return self.mapper(d)
        except Exception as e:
            raise ValueError(f"{d.get('file_name')}: cannot be read/mapped for pseudo-labelling "
                             f"({type(e).__name__}: {e}); remove or fix this image") from e


def predict_batches(model, dicts, mapper, batch_size, num_workers=0):
    """Yield ``(mapped_input, instances)`` for every dict, running ``model`` on batches."""
    loader = DataLoader(MapDataset(DatasetFromList(dicts, copy=False), _CheckedMapper(mapper)),
                        batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=trivial_batch_collator)
    with teacher_mode(model):
        for batch in loader:
            for inp, out in zip(batch, model(batch)):
                yield inp, out["instances"]


def _image_root(dicts):
    dirs = {os.path.dirname(os.path.abspath(d["file_name"])) for d in dicts}
    return os.path.commonpath(sorted(dirs))


def _image_ids(dicts):
    ids = [d.get("image_id") for d in dicts]
    if all(isinstance(i, int) and not isinstance(i, bool) for i in ids) and len(set(ids)) == len(ids):
        return ids
    return list(range(1, len(dicts) + 1))


def _fingerprint(dicts, spec):
    h = hashlib.sha1()
    for d in dicts:
        h.update(os.path.abspath(d["file_name"]).encode() + b"\0")
    return {"num_images": len(dicts), "images_sha1": h.hexdigest(), **spec}


def _check_manifest(parts, fingerprint):
    path = os.path.join(parts, "manifest.json")
    if os.path.isfile(path):
        with open(path) as f:
            old = json.load(f)
        if old != fingerprint:
            changed = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
            raise ValueError(
                f"{parts} holds a pseudo-labelling run with other settings (differs in {changed}); "
                "delete that folder to start over, or write to another --output")
    else:
        write_compact_json(fingerprint, path)


def generate_pseudo_labels(model, dicts, output, *, mapper, categories, thresholds,
                           batch_size=4, chunk_size=None, num_workers=0, with_masks=True,
                           info=None, progress=True, max_chunks=None):
    """
    Label ``dicts`` with ``model`` and write a COCO json to ``output``; returns its summary.
    ``thresholds``: per-class score thresholds (``resolve_thresholds``); ``categories``: the
    json's categories, ``categories[c]`` for contiguous class ``c``. ``max_chunks`` stops after
    that many new chunks (raising ``PseudoLabelInterrupted``), as a kill would.
    """
    if not dicts:
        raise ValueError("no images to pseudo-label: the unlabeled data set is empty")
    batch_size = max(int(batch_size), 1)
    chunk_size = batch_size * max(1, -(-int(chunk_size or 16 * batch_size) // batch_size))
    thresholds = np.asarray(thresholds, dtype=np.float64)
    category_ids = [c["id"] for c in categories]
    if len(thresholds) != len(categories):
        raise ValueError(f"{len(thresholds)} thresholds for {len(categories)} categories")
    info = dict(info or {})
    image_root = _image_root(dicts)
    info.update(image_root=image_root, score_thresholds=thresholds.tolist())
    parts = output + ".parts"
    os.makedirs(parts, exist_ok=True)
    _check_manifest(parts, _fingerprint(dicts, {"chunk_size": chunk_size, "batch_size": batch_size,
                                               "with_masks": bool(with_masks), "info": info,
                                               "categories": categories}))
    ids = _image_ids(dicts)
    n_chunks = -(-len(dicts) // chunk_size)
    chunk_path = lambda k: os.path.join(parts, f"chunk_{k:06d}.json")  # noqa: E731
    todo = [k for k in range(n_chunks) if not os.path.isfile(chunk_path(k))]
    done_images = sum(min(chunk_size, len(dicts) - k * chunk_size) for k in range(n_chunks) if k not in todo)
    bar = tqdm(total=len(dicts), initial=done_images, desc="pseudo-labels", unit="img", disable=not progress)
    for n_new, k in enumerate(todo):
        if max_chunks is not None and n_new >= max_chunks:
            bar.close()
            raise PseudoLabelInterrupted(f"stopped after {max_chunks} chunk(s); call again to resume")
        lo = k * chunk_size
        sub = dicts[lo:lo + chunk_size]
        images, anns = [], []
        for j, (inp, inst) in enumerate(predict_batches(model, sub, mapper, batch_size, num_workers)):
            image_id = ids[lo + j]
            rel = os.path.relpath(os.path.abspath(sub[j]["file_name"]), image_root).replace(os.sep, "/")
            images.append({"id": image_id, "file_name": rel, "height": int(inp["height"]),
                           "width": int(inp["width"])})
            for a in instances_to_annotations(inst, thresholds, category_ids, with_masks):
                anns.append({"image_id": image_id, **a})
            bar.update(1)
        write_compact_json({"images": images, "annotations": anns}, chunk_path(k))
    bar.close()

    data = {"info": info, "images": [], "annotations": [], "categories": categories}
    for k in range(n_chunks):
        with open(chunk_path(k)) as f:
            part = json.load(f)
        data["images"] += part["images"]
        data["annotations"] += part["annotations"]
    for i, a in enumerate(data["annotations"]):
        a["id"] = i + 1
    write_compact_json(data, output)
    shutil.rmtree(parts, ignore_errors=True)
    summary = {"output": output, "image_root": image_root, "images": len(data["images"]),
               "annotations": len(data["annotations"])}
    logger.info("pseudo-labels: %d boxes on %d images -> %s", summary["annotations"],
                summary["images"], output)
    return summary
