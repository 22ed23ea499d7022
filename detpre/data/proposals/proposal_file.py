"""
detectron2's precomputed-proposal file, written resumably.

The file is the pickle ``load_proposals_into_dataset`` reads: ``ids`` (dataset ``image_id``s),
``boxes`` (list of (N, 4) float32 XYXY_ABS arrays in original image coordinates),
``objectness_logits`` (list of (N,) float32) and ``bbox_mode`` (``BoxMode.XYXY_ABS`` as int).
detectron2 sorts each image's boxes by descending logit, so the logits are ``-rank``
(0, -1, -2, ...): strictly decreasing in selective search's ranking, which keeps that order.
One more key, ``detpre`` (JSON: shard, image count, settings), lets merges and resumes check that
the pieces belong together; detectron2 ignores it.

While running, results go to ``<output>.parts/``: ``spec.json`` (the settings) and one pickle
per finished chunk, each written to a temporary name and renamed. A rerun with the same
settings skips finished chunks; the final file is always assembled from the chunk files, so a
resumed run ends with the same bytes as an uninterrupted one.
"""
import json
import os
import pickle
import shutil

import numpy as np
from detectron2.structures import BoxMode

from detpre.utils.io import write_bytes_atomic

__all__ = ["PartStore", "write_proposal_file", "read_proposal_file", "merge_proposal_files",
           "objectness_for", "atomic_write_bytes"]

PICKLE_PROTOCOL = 4
META_KEY = "detpre"


def atomic_write_bytes(path, data):
    write_bytes_atomic(os.fspath(path), data)


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
    atomic_write_bytes(path, pickle.dumps(data, protocol=PICKLE_PROTOCOL))


def read_proposal_file(path):
    """Load a proposal file, with a clear error when it is not one."""
    try:
        with open(path, "rb") as f:
            data = pickle.load(f, encoding="latin1")
    except (OSError, pickle.UnpicklingError, EOFError) as e:
        raise ValueError(f"cannot read proposal file {path}: {e}. Regenerate it with "
                         "tools/generate_proposals.py.") from e
    missing = [k for k in ("ids", "boxes", "objectness_logits") if k not in data]
    if missing:
        raise ValueError(f"{path} is not a detectron2 proposal file (missing {missing})")
    return data


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
    ids, boxes = [], []
    for i in range(n):
        ids.extend(shards[i][1]["ids"])
        boxes.extend(shards[i][1]["boxes"])
    if len(ids) != first["num_images"] or len(set(map(str, ids))) != len(ids):
        raise ValueError("merged shards do not cover every image exactly once")
    meta = dict(first, shard=[0, 1])
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
        if os.path.isfile(spec_file):
            with open(spec_file) as f:
                old = json.load(f)
            if old != json.loads(json.dumps(spec)):
                raise ValueError(
                    f"{self.dir} holds a partial run with other settings ({spec_file}). "
                    "Rerun with the same arguments to resume, or delete that folder to start over.")
            return
        os.makedirs(self.dir, exist_ok=True)
        atomic_write_bytes(spec_file, json.dumps(spec, indent=1, sort_keys=True).encode())

    def done(self):
        """Indices of the finished chunks."""
        if not os.path.isdir(self.dir):
            return set()
        return {int(f[6:13]) for f in os.listdir(self.dir)
                if f.startswith("chunk_") and f.endswith(".pkl")}

    def save(self, idx, ids, boxes, errors):
        data = {"ids": list(ids), "boxes": [np.asarray(b, np.float32) for b in boxes],
                "errors": list(errors)}
        atomic_write_bytes(self._chunk(idx), pickle.dumps(data, protocol=PICKLE_PROTOCOL))

    def load(self, idx):
        with open(self._chunk(idx), "rb") as f:
            return pickle.load(f)

    def remove(self):
        shutil.rmtree(self.dir, ignore_errors=True)
