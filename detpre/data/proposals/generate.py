"""
``generate_proposals``: selective search for every image of a data set, once, offline.

Per image: read it as detectron2's mapper does (``read_image``, EXIF-rotated RGB), resize to
``proposal_size`` x ``proposal_size`` (SoCo's 224; 0 keeps the original size), run the
backend, map the boxes back to original pixels, apply SoCo's filter there. Images are spread
over a process pool; results stream to chunk files (memory does not grow with the number of
images) and a killed run resumes where it stopped. An unreadable image is reported and gets
no proposals; every image without proposals (unreadable, or no box passed the filter) is listed
in ``<output>.errors.txt``, the file training's zero-proposal warning points to. File names need
not be UTF-8: they are kept as ``os.fsdecode`` gives them (the pickle round-trips them) and
printed as their bytes' repr. ``shard=(i, N)`` takes the i-th of N contiguous slices of the
records. The output is locked while written (``<output>.lock``): a second run on it stops with a
message. The file carries each image's fingerprint (``image_fingerprint``) for training to check
it against.
"""
import json
import logging
import os

import cv2
import numpy as np

from detpre.data.image_io import printable_name, text_bytes
from detpre.errors import DetpreError, writing
from detpre.utils.io import output_lock, write_bytes_atomic

from .backends import build_backend
from .filtering import ProposalFilter
from .proposal_file import PartStore, image_fingerprint, proposal_meta, write_proposal_file

__all__ = ["compute_proposals", "generate_proposals", "shard_range", "resize_for_proposals", "read_rgb"]

logger = logging.getLogger(__name__)

_WORKER = {}


def shard_range(num, shard):
    """[start, stop) of shard i of N over ``num`` items (contiguous, sizes differ by <= 1)."""
    i, n = shard
    if not (isinstance(n, int) and isinstance(i, int) and n >= 1 and 0 <= i < n):
        raise ValueError(f"shard {i}/{n}: need 0 <= i < N")
    return num * i // n, num * (i + 1) // n


def resize_for_proposals(image, size):
    """The image resized to size x size (aspect ratio not kept, as SoCo), or as is if size=0."""
    h, w = image.shape[:2]
    if not size or (h == size and w == size):
        return np.ascontiguousarray(image)
    interp = cv2.INTER_AREA if size < min(h, w) else cv2.INTER_LINEAR
    return np.ascontiguousarray(cv2.resize(image, (size, size), interpolation=interp))


def compute_proposals(image, backend, proposal_size=224, proposal_filter=None):
    """(N, 4) float32 XYXY_ABS boxes in ``image``'s pixels, best first, filtered."""
    h, w = image.shape[:2]
    small = resize_for_proposals(image, proposal_size)
    boxes = backend(small).astype(np.float64)
    sh, sw = small.shape[:2]
    boxes *= np.array([w / sw, h / sh, w / sw, h / sh])
    np.clip(boxes, 0, [w, h, w, h], out=boxes)
    boxes = boxes.astype(np.float32)
    if proposal_filter is not None:
        boxes = proposal_filter(boxes, h, w)
    return np.ascontiguousarray(boxes, np.float32).reshape(-1, 4)


def read_rgb(file_name):
    """The image as proposals are computed on it: detectron2's ``read_image`` (EXIF-rotated),
    RGB, contiguous uint8 (H, W, 3); ``ValueError`` for an image of no pixels."""
    from detpre.data.image_io import read_image

    image = read_image(file_name, format="RGB")
    if image.ndim != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"unexpected image shape {image.shape}")
    return np.ascontiguousarray(image, np.uint8)


def _init_worker(backend_name, backend_kwargs, proposal_size, filt):
    cv2.setNumThreads(1)
    _WORKER.update(backend=build_backend(backend_name, **backend_kwargs),
                   size=proposal_size, filter=filt)


def _process(item):
    """(chunk index, image id, boxes, error or None) of one (chunk, id, file) item."""
    chunk, image_id, file_name = item
    try:
        image = read_rgb(file_name)
        boxes = compute_proposals(image, _WORKER["backend"], _WORKER["size"], _WORKER["filter"])
        return chunk, image_id, boxes, None
    except Exception as e:  # an unreadable / corrupt image must not stop a 100k-image run
        return chunk, image_id, np.zeros((0, 4), np.float32), (file_name, f"{type(e).__name__}: {e}")


def _records_of(records):
    out = []
    for i, r in enumerate(records):
        if isinstance(r, (str, os.PathLike)):
            r = {"file_name": os.fspath(r), "image_id": os.fspath(r)}
        if "file_name" not in r or "image_id" not in r:
            raise ValueError(f"record {i} lacks 'file_name' or 'image_id'; detectron2 matches "
                             "proposals to images by image_id")
        out.append((r["image_id"], r["file_name"]))
    return out


def generate_proposals(records, output, backend="detpre", backend_kwargs=None,
                       proposal_size=224, proposal_filter=ProposalFilter(), workers=None,
                       shard=(0, 1), chunk_size=256, progress=True, overwrite=False):
    """Write detectron2's proposal file for ``records`` (dataset dicts or image paths).

    Returns a dict: ``num_images``, ``errors`` [(file, reason)] of the unreadable images,
    ``no_proposals`` (images left without a box, unreadable ones included), ``output``,
    ``skipped`` (True when ``output`` existed and ``overwrite`` is False). A full disk or an
    unwritable folder raises ``DetpreError`` naming the file.
    """
    output = os.fspath(output)
    backend_kwargs = dict(backend_kwargs or {})
    items = _records_of(records)
    total = len(items)
    start, stop = shard_range(total, tuple(shard))
    items = items[start:stop]
    settings = dict(backend=build_backend(backend, **backend_kwargs).params,
                    proposal_size=int(proposal_size),
                    filter=proposal_filter.params() if proposal_filter is not None else None)
    if os.path.exists(output) and not overwrite:
        _check_existing(output, dict(settings=settings, shard=list(shard), num_images=total))
        return {"num_images": len(items), "errors": [], "no_proposals": 0, "output": output, "skipped": True}
    with writing(output, "proposal file"), output_lock(output, "proposal file"):
        return _generate(items, total, output, settings, (backend, backend_kwargs, int(proposal_size),
                                                          proposal_filter), workers, shard, chunk_size, progress)


def _check_existing(output, wanted):
    """An existing ``output`` is reused only when it was made with these settings, for this
    data set's size and shard; else a rerun with other settings would train on the old boxes."""
    meta = proposal_meta(output)
    if meta is None:
        logger.warning(f"{output} exists and records no settings (an older detpre or another tool "
                       "wrote it): reusing it; pass overwrite to regenerate")
        return
    differ = sorted(k for k, v in wanted.items() if json.loads(json.dumps(v)) != meta.get(k))
    if differ:
        raise DetpreError(
            f"{output} exists but was made with other {', '.join(differ)} ({_brief(meta, differ)} there, "
            f"{_brief(wanted, differ)} now); pass --overwrite to regenerate it, or write to another --output")
    logger.info(f"{output} exists with these settings: reusing it (--overwrite regenerates it)")


def _brief(d, keys):
    return "; ".join(f"{k} {json.dumps(d.get(k), sort_keys=True)}" for k in keys)


def _generate(items, total, output, settings, init_args, workers, shard, chunk_size, progress):
    spec = dict(settings=settings, shard=list(shard), num_images=total, chunk_size=chunk_size,
                ids=_id_digest(items))
    store = PartStore(output)
    store.open(spec)
    done = store.done()
    n_chunks = (len(items) + chunk_size - 1) // chunk_size
    todo = [(c, image_id, fn) for c in range(n_chunks) if c not in done
            for image_id, fn in items[c * chunk_size:(c + 1) * chunk_size]]

    workers = os.cpu_count() if workers is None else int(workers)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(items), initial=len(items) - len(todo), unit="img",
                   desc=os.path.basename(output), dynamic_ncols=True)
    pending = {}  # chunk index -> list of results; at most a few chunks are open at once

    def collect(result):
        c, image_id, boxes, err = result
        if err is not None:
            logger.warning(f"no proposals for {printable_name(err[0])}: {err[1]}")
        pending.setdefault(c, []).append((image_id, boxes, err))
        size = min(chunk_size, len(items) - c * chunk_size)
        if len(pending[c]) == size:
            rows = pending.pop(c)
            store.save(c, [r[0] for r in rows], [r[1] for r in rows],
                       [r[2] for r in rows if r[2] is not None])
        if bar is not None:
            bar.update(1)

    if workers <= 1:
        _init_worker(*init_args)
        for item in todo:
            collect(_process(item))
    else:
        import multiprocessing as mp

        # spawn, not fork: a child forked after OpenCV/OpenMP started threads in this process
        # (e.g. it just generated the demo data) can deadlock in cv2.setNumThreads
        with mp.get_context("spawn").Pool(workers, _init_worker, init_args) as pool:
            for result in pool.imap(_process, todo, chunksize=4):
                collect(result)
    if bar is not None:
        bar.close()

    ids, boxes, errors = [], [], []
    for c in range(n_chunks):
        part = store.load(c)
        ids.extend(part["ids"])
        boxes.extend(part["boxes"])
        errors.extend(tuple(e) for e in part["errors"])
    prints = {image_id: image_fingerprint(fn) for image_id, fn in items}
    meta = dict(settings=settings, shard=list(shard), num_images=total,
                images=[prints[i] for i in ids])
    write_proposal_file(output, ids, boxes, meta)
    errors_file = output + ".errors.txt"
    unread = {f for f, _ in errors}
    files = dict(items)
    empty = [(files[i], "no box passed the filter") for i, b in zip(ids, boxes)
             if len(b) == 0 and files[i] not in unread]
    if errors or empty:
        lines = "".join(f"{f}\t{r}\n" for f, r in list(errors) + empty)
        write_bytes_atomic(errors_file, text_bytes(lines))  # the names' own bytes, any encoding
        logger.warning(f"{len(errors)} image(s) could not be read, {len(empty)} more got no proposal "
                       f"through the filter; listed in {errors_file}")
    elif os.path.exists(errors_file):
        os.remove(errors_file)
    store.remove()
    return {"num_images": len(ids), "errors": errors, "no_proposals": len(errors) + len(empty),
            "output": output, "skipped": False}


def _id_digest(items):
    import hashlib

    h = hashlib.sha1()
    for image_id, fn in items:
        h.update(f"{image_id}\0{fn}\n".encode("utf-8", "surrogatepass"))  # any file name
    return h.hexdigest()
