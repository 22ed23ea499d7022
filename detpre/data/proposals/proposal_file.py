"""
detectron2's precomputed-proposal file, written resumably.

The file is the pickle ``load_proposals_into_dataset`` reads: ``ids`` (dataset ``image_id``s),
``boxes`` (list of (N, 4) float32 XYXY_ABS arrays in original image coordinates),
``objectness_logits`` (list of (N,) float32) and ``bbox_mode`` (``BoxMode.XYXY_ABS`` as int).
detectron2 sorts each image's boxes by descending logit, so the logits are ``-rank``
(0, -1, -2, ...): strictly decreasing in selective search's ranking, which keeps that order.
One more key, ``detpre`` (JSON: shard, image count, settings, and ``images``: the data set's
fingerprint, ``[file base name, size in bytes]`` per id), lets merges and resumes check that the
pieces belong together and training check that the file belongs to its data set
(``check_proposal_file``); detectron2 ignores it.

While running, results go to ``<output>.parts/``: ``spec.json`` (the settings) and one pickle
per finished chunk, each written to a temporary name and renamed. A rerun with the same
settings skips finished chunks; the final file is always assembled from the chunk files, so a
resumed run ends with the same bytes as an uninterrupted one. A folder without ``spec.json``
(its writer died before writing it) is never reused.

Both are read by ``safe_load.load_pickle`` (arrays, numbers, strings, containers and a ``BoxMode``),
never ``pickle.load``: a proposal file may come from anywhere.
"""
import hashlib
import json
import logging
import os
import pickle
import shutil

import numpy as np
from detectron2.structures import BoxMode

from detpre.errors import DetpreError
from detpre.utils.io import write_bytes_atomic
from detpre.utils.safe_load import load_pickle

__all__ = ["PartStore", "write_proposal_file", "read_proposal_file", "merge_proposal_files",
           "objectness_for", "image_fingerprint", "check_proposal_file", "proposal_meta",
           "load_proposals_into_dicts"]

logger = logging.getLogger(__name__)

PICKLE_PROTOCOL = 4
META_KEY = "detpre"
# detectron2's proposal format allows a BoxMode (an IntEnum: unpickling it looks up a member)
_ALLOW = {("detectron2.structures.boxes", "BoxMode"): BoxMode}


def objectness_for(num):
    """Logits that keep the given (best first) order through detectron2's descending sort."""
    return -np.arange(num, dtype=np.float32)


def write_proposal_file(path, ids, boxes, meta=None):
    """Atomically write a detectron2 proposal file; boxes are (N, 4) XYXY_ABS per image."""
    # astype copies onto numpy's canonical float32 dtype object: arrays unpickled from
    # different chunk / shard files otherwise carry distinct dtype instances, which pickle
    # memoizes differently, and the bytes would depend on how the run was split
    boxes = [np.asarray(b).reshape(-1, 4).astype(np.float32, order="C") for b in boxes]
    if len(ids) != len(boxes):
        raise ValueError(f"{len(ids)} ids but {len(boxes)} box arrays")
    data = {
        "ids": list(ids),
        "boxes": boxes,
        "objectness_logits": [objectness_for(len(b)) for b in boxes],
        "bbox_mode": int(BoxMode.XYXY_ABS),
    }
    if meta is not None:  # a JSON string: its bytes do not depend on object identity
        data[META_KEY] = json.dumps(meta, sort_keys=True)
    write_bytes_atomic(path, pickle.dumps(data, protocol=PICKLE_PROTOCOL))


def read_proposal_file(path):
    """Load a proposal file, with a clear error when it is not one."""
    try:
        data = load_pickle(path, kind="proposal file", allow=_ALLOW)
    except (OSError, pickle.UnpicklingError, EOFError) as e:
        raise DetpreError(f"cannot read proposal file {path}: {e}. Regenerate it with "
                          "tools/generate_proposals.py.") from e
    missing = [k for k in ("ids", "boxes", "objectness_logits") if k not in data] \
        if isinstance(data, dict) else ["ids", "boxes", "objectness_logits"]
    if missing:
        raise DetpreError(f"{path} is not a detectron2 proposal file (missing {missing})")
    return data


def proposal_meta(path):
    """The settings a detpre proposal file records (``META_KEY``), or None (another tool's file)."""
    data = read_proposal_file(path)
    return json.loads(data[META_KEY]) if META_KEY in data else None


_PRINT_BYTES = 1 << 16


def image_fingerprint(file_name):
    """``[base name, size in bytes, digest]`` of an image (size -1 when unreadable): what ties a
    proposal file's boxes to the very images they were computed on. The digest (BLAKE2b of the
    first and last 64 KiB) tells a re-saved image of the same size; reading the whole file would
    cost a large data set minutes at every training start."""
    try:
        size = os.path.getsize(file_name)
        h = hashlib.blake2b(digest_size=8)
        with open(file_name, "rb") as f:
            h.update(f.read(_PRINT_BYTES))
            if size > 2 * _PRINT_BYTES:
                f.seek(-_PRINT_BYTES, os.SEEK_END)
            h.update(f.read(_PRINT_BYTES))
        digest = h.hexdigest()
    except OSError:
        return [os.path.basename(file_name), -1, ""]
    return [os.path.basename(file_name), int(size), digest]


def _same_image(have, now):
    """Fingerprints match; one of an older detpre (name and size only) is compared on those."""
    return list(have[:2]) == list(now[:2]) and (len(have) < 3 or have[2] == now[2])


def _regenerate(path, name):
    return (f"regenerate it with tools/generate_proposals.py --dataset {name} --output {path} "
            "--overwrite (with --config-file if the data set is registered there)")


def load_proposals_into_dicts(dicts, data):
    """detectron2's ``load_proposals_into_dataset`` on a proposal file already read (without running
    code, ``read_proposal_file``; detectron2's own reads it with ``pickle.load``): each record gets
    its proposals sorted by objectness, and their box mode."""
    data = dict(data)
    for old, new in (("indexes", "ids"), ("scores", "objectness_logits")):  # Detectron1 names
        if old in data:
            data[new] = data.pop(old)
    index = {str(i): k for k, i in enumerate(data["ids"])}
    mode = BoxMode(data["bbox_mode"]) if "bbox_mode" in data else BoxMode.XYXY_ABS
    for record in dicts:
        k = index[str(record["image_id"])]
        boxes, logits = data["boxes"][k], data["objectness_logits"][k]
        order = logits.argsort()[::-1]
        record["proposal_boxes"] = boxes[order]
        record["proposal_objectness_logits"] = logits[order]
        record["proposal_bbox_mode"] = mode
    return dicts


def check_proposal_file(path, dicts, name, data=None):
    """
    Before training on ``path`` (``DATASETS.PROPOSAL_FILES_TRAIN`` of data set ``name``; ``data``: its
    content when already read): it must
    exist, cover every image id of ``dicts`` and, when it carries a fingerprint, have been made
    from these very images (same file name and size). Images without proposals are counted and
    reported. Raises ``DetpreError`` naming the file, the ids and what to do.
    """
    if not os.path.isfile(path):
        raise DetpreError(f"proposal file {path} (DATASETS.PROPOSAL_FILES_TRAIN for {name}) does "
                          f"not exist; make it with tools/generate_proposals.py --dataset {name} "
                          f"--output {path}")
    data = read_proposal_file(path) if data is None else data
    index = {str(i): k for k, i in enumerate(data["ids"])}
    missing = [d["image_id"] for d in dicts if str(d["image_id"]) not in index]
    if missing:
        raise DetpreError(
            f"{path} has no proposals for {len(missing)} of {len(dicts)} images of {name} "
            f"(image ids {missing[:10]}{' ...' if len(missing) > 10 else ''}): it was made for "
            f"another data set; {_regenerate(path, name)}")
    meta = json.loads(data[META_KEY]) if META_KEY in data else {}
    prints = meta.get("images")
    if prints is None or len(prints) != len(data["ids"]):
        logger.warning("%s carries no data set fingerprint (an older detpre or another tool wrote "
                       "it): cannot check that its boxes were computed on %s's images", path, name)
    else:
        wrong = []
        for d in dicts:
            have, now = list(prints[index[str(d["image_id"])]]), image_fingerprint(d["file_name"])
            if now[1] >= 0 and not _same_image(have, now):
                wrong.append((d["image_id"], now, have))
        if wrong:
            i, now, have = wrong[0]
            raise DetpreError(
                f"{path} was made for other images than {name}'s: {len(wrong)} of {len(dicts)} "
                f"differ, e.g. image id {i} is {now[0]} ({now[1]} bytes) here but was {have[0]} "
                f"({have[1]} bytes{', other content' if have[:2] == now[:2] else ''}) when the proposals "
                f"were computed; {_regenerate(path, name)}")
    empty = sum(len(data["boxes"][index[str(d["image_id"])]]) == 0 for d in dicts)
    if empty:
        logger.warning("%d of %d images of %s have no proposals in %s (unreadable when generated, "
                       "see %s.errors.txt, or no box passed the filter); SoCo gives them "
                       "INPUT.SOCO.RANDOM_PROPOSALS random boxes", empty, len(dicts), name, path, path)
    return {"num_images": len(dicts), "zero_proposals": int(empty)}


def merge_proposal_files(output, shard_paths):
    """Join the shards of one ``--shard i/N`` job into the file an unsharded run writes."""
    shards = {}
    for p in shard_paths:
        data = read_proposal_file(p)
        meta = json.loads(data[META_KEY]) if META_KEY in data else None
        if not meta or "shard" not in meta:
            raise ValueError(f"{p} has no detpre shard information; merge only files written "
                             "by tools/generate_proposals.py --shard i/N")
        i, n = meta["shard"]
        if i in shards:
            raise ValueError(f"shard {i}/{n} given twice: {shards[i][0]} and {p}")
        shards[i] = (p, data, meta)
    first = next(iter(shards.values()))[2]
    n = first["shard"][1]
    for p, data, m in shards.values():
        if m["shard"][1] != n or m["settings"] != first["settings"] or \
                m["num_images"] != first["num_images"]:
            raise ValueError(f"{p} belongs to a different job (shard count, image count or "
                             "settings differ); merge shards of one run only")
    missing = sorted(set(range(n)) - set(shards))
    if missing:
        raise ValueError(f"cannot merge: shard(s) {missing} of {n} missing; run them with "
                         f"--shard i/{n} first")
    ids, boxes, prints = [], [], []
    for i in range(n):
        ids.extend(shards[i][1]["ids"])
        boxes.extend(shards[i][1]["boxes"])
        prints.extend(shards[i][2].get("images") or [])
    if len(ids) != first["num_images"] or len(set(map(str, ids))) != len(ids):
        raise ValueError("merged shards do not cover every image exactly once")
    meta = dict(first, shard=[0, 1])
    meta.pop("images", None)
    if len(prints) == len(ids):
        meta["images"] = prints
    write_proposal_file(output, ids, boxes, meta)
    return len(ids)


class PartStore:
    """``<output>.parts/``: the settings of a running job and its finished chunks."""

    def __init__(self, output):
        self.dir = os.fspath(output) + ".parts"

    def _chunk(self, idx):
        return os.path.join(self.dir, f"chunk_{idx:07d}.pkl")

    def open(self, spec):
        """Create the folder, or check that an existing one was made with ``spec``."""
        spec_file = os.path.join(self.dir, "spec.json")
        if os.path.isdir(self.dir) and not os.path.isfile(spec_file):
            logger.warning("%s has no spec.json (its writer stopped before writing it): its chunks "
                           "cannot be trusted and are discarded", self.dir)
            self.remove()
        if os.path.isfile(spec_file):
            with open(spec_file) as f:
                old = json.load(f)
            if old != json.loads(json.dumps(spec)):
                raise ValueError(
                    f"{self.dir} holds a partial run with other settings ({spec_file}). "
                    "Rerun with the same arguments to resume, or delete that folder to start over.")
            return
        os.makedirs(self.dir, exist_ok=True)
        write_bytes_atomic(spec_file, json.dumps(spec, indent=1, sort_keys=True).encode())

    def done(self):
        """Indices of the finished chunks."""
        if not os.path.isdir(self.dir):
            return set()
        return {int(f[6:13]) for f in os.listdir(self.dir)
                if f.startswith("chunk_") and f.endswith(".pkl")}

    def save(self, idx, ids, boxes, errors):
        data = {"ids": list(ids), "boxes": [np.asarray(b, np.float32) for b in boxes],
                "errors": list(errors)}
        write_bytes_atomic(self._chunk(idx), pickle.dumps(data, protocol=PICKLE_PROTOCOL))

    def load(self, idx):
        return load_pickle(self._chunk(idx), kind="proposal chunk", allow=_ALLOW)

    def remove(self):
        shutil.rmtree(self.dir, ignore_errors=True)
