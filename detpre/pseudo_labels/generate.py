"""
Pseudo-labelling: a teacher detector (eval mode, no gradient) over a list of dataset dicts, in
batches, kept predictions written as one COCO-format json.

The images are processed in chunks of whole batches; each finished chunk is saved atomically
under ``<output>.parts/`` with the fingerprint of its own images (id, path, size), so a killed
run resumes at the first missing chunk and (same batches, same model) produces the same json as
an uninterrupted one, and a rerun after images were fixed or removed keeps every chunk whose
images are unchanged. An unreadable image is left out, listed in ``<output>.errors.txt``, and
the run goes on; its chunk is recomputed on the next run (the parts are kept for that), so a
fixed image is labeled then. The final json is written to a temporary name and renamed; then
the parts are removed (when no image failed). ``<output>.lock`` keeps a second writer out.
A file name that is not UTF-8 (``os.fsdecode`` keeps its bytes as surrogates) is written as
``\\udcXX`` escapes, which Python's json reads back to the same name and so the same file; the
run says so, naming them by their bytes' repr, since other tools may not read them.
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

from detpre.data.image_io import printable_name, text_bytes
from detpre.errors import writing
from detpre.utils.io import output_lock, write_bytes_atomic

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


_UNREADABLE = "_unreadable"


class _CheckedMapper:
    """The test mapper; an image it cannot read/map becomes a marker naming the file and why."""

    def __init__(self, mapper):
        self.mapper = mapper

    def __call__(self, d):
        try:
            return self.mapper(d)
        except Exception as e:
            return {"file_name": d.get("file_name"), _UNREADABLE: f"{type(e).__name__}: {e}"}


def predict_batches(model, dicts, mapper, batch_size, num_workers=0):
    """Yield ``(mapped_input, instances)`` for every dict, running ``model`` on batches;
    ``instances`` is None for an image that could not be read (``mapped_input`` then holds
    ``file_name`` and the reason under ``"_unreadable"``)."""
    loader = DataLoader(MapDataset(DatasetFromList(dicts, copy=False), _CheckedMapper(mapper)),
                        batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=trivial_batch_collator)
    with teacher_mode(model):
        for batch in loader:
            good = [inp for inp in batch if _UNREADABLE not in inp]
            outs = iter(model(good)) if good else iter(())
            for inp in batch:
                yield (inp, None) if _UNREADABLE in inp else (inp, next(outs)["instances"])


def _image_root(dicts):
    dirs = {os.path.dirname(os.path.abspath(d["file_name"])) for d in dicts}
    return os.path.commonpath(sorted(dirs))


def _image_ids(dicts):
    ids = [d.get("image_id") for d in dicts]
    if all(isinstance(i, int) and not isinstance(i, bool) for i in ids) and len(set(ids)) == len(ids):
        return ids
    return list(range(1, len(dicts) + 1))


def _images_sha1(dicts, ids):
    """What a chunk's result depends on besides the settings: its images (id, path, size)."""
    h = hashlib.sha1()
    for d, i in zip(dicts, ids):
        try:
            size = os.path.getsize(d["file_name"])
        except OSError:
            size = -1
        h.update(f"{i}\0{os.path.abspath(d['file_name'])}\0{size}\n".encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def _reusable(path, images_sha1):
    """A finished chunk of exactly these images, none of which failed."""
    if not os.path.isfile(path):
        return False
    try:
        with open(path) as f:
            part = json.load(f)
    except (OSError, ValueError):
        return False
    return part.get("images_sha1") == images_sha1 and not part.get("errors")


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
    with writing(output, "pseudo-label json"), output_lock(output, "pseudo-label json"):
        return _generate(model, dicts, output, mapper, categories, thresholds, category_ids,
                         batch_size, chunk_size, num_workers, with_masks, info, image_root,
                         progress, max_chunks)


def _generate(model, dicts, output, mapper, categories, thresholds, category_ids, batch_size,
              chunk_size, num_workers, with_masks, info, image_root, progress, max_chunks):
    parts = output + ".parts"
    if os.path.isdir(parts) and not os.path.isfile(os.path.join(parts, "manifest.json")):
        logger.warning("%s has no manifest.json (its writer stopped before writing it): its "
                       "chunks are discarded", parts)
        shutil.rmtree(parts)
    os.makedirs(parts, exist_ok=True)
    _check_manifest(parts, {"chunk_size": chunk_size, "batch_size": batch_size,
                            "with_masks": bool(with_masks), "info": info, "categories": categories})
    ids = _image_ids(dicts)
    n_chunks = -(-len(dicts) // chunk_size)
    chunk_path = lambda k: os.path.join(parts, f"chunk_{k:06d}.json")  # noqa: E731
    sha1 = [_images_sha1(dicts[k * chunk_size:(k + 1) * chunk_size], ids[k * chunk_size:(k + 1) * chunk_size])
            for k in range(n_chunks)]
    todo = [k for k in range(n_chunks) if not _reusable(chunk_path(k), sha1[k])]
    done_images = sum(min(chunk_size, len(dicts) - k * chunk_size) for k in range(n_chunks) if k not in todo)
    bar = tqdm(total=len(dicts), initial=done_images, desc="pseudo-labels", unit="img", disable=not progress)
    for n_new, k in enumerate(todo):
        if max_chunks is not None and n_new >= max_chunks:
            bar.close()
            raise PseudoLabelInterrupted(f"stopped after {max_chunks} chunk(s); call again to resume")
        lo = k * chunk_size
        sub = dicts[lo:lo + chunk_size]
        images, anns, errors = [], [], []
        for j, (inp, inst) in enumerate(predict_batches(model, sub, mapper, batch_size, num_workers)):
            image_id = ids[lo + j]
            bar.update(1)
            if inst is None:
                logger.warning("pseudo-labels: skipping unreadable image %s (%s)",
                               printable_name(inp["file_name"]), inp[_UNREADABLE])
                errors.append([inp["file_name"], inp[_UNREADABLE]])
                continue
            rel = os.path.relpath(os.path.abspath(sub[j]["file_name"]), image_root).replace(os.sep, "/")
            images.append({"id": image_id, "file_name": rel, "height": int(inp["height"]),
                           "width": int(inp["width"])})
            for a in instances_to_annotations(inst, thresholds, category_ids, with_masks):
                anns.append({"image_id": image_id, **a})
        write_compact_json({"images": images, "annotations": anns, "images_sha1": sha1[k],
                            "errors": errors}, chunk_path(k))
    bar.close()

    data = {"info": info, "images": [], "annotations": [], "categories": categories}
    errors = []
    for k in range(n_chunks):
        with open(chunk_path(k)) as f:
            part = json.load(f)
        data["images"] += part["images"]
        data["annotations"] += part["annotations"]
        errors += [tuple(e) for e in part.get("errors", ())]
    for i, a in enumerate(data["annotations"]):
        a["id"] = i + 1
    write_compact_json(data, output)
    errors_file = output + ".errors.txt"
    if errors:
        write_bytes_atomic(errors_file, text_bytes("".join(f"{f}\t{r}\n" for f, r in errors)))
        logger.warning("pseudo-labels: %d image(s) could not be read and are left out; listed in "
                       "%s. Fix or remove them and rerun the same command: only their chunks are "
                       "recomputed", len(errors), errors_file)
    else:
        if os.path.exists(errors_file):
            os.remove(errors_file)
        shutil.rmtree(parts, ignore_errors=True)
    names = [i["file_name"] for i in data["images"]]
    odd = [printable_name(n) for n in names if printable_name(n) != n]
    if odd:
        logger.warning("pseudo-labels: %d file name(s) are not UTF-8 (e.g. %s): %s keeps them as \\udcXX "
                       "escapes, which Python's json reads back to the same files; rename them for other "
                       "tools", len(odd), odd[0], output)
    summary = {"output": output, "image_root": image_root, "images": len(data["images"]),
               "annotations": len(data["annotations"]), "errors": errors, "non_utf8_names": odd}
    logger.info("pseudo-labels: %d boxes on %d images -> %s", summary["annotations"],
                summary["images"], output)
    return summary
