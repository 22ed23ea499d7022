"""
``generate_reid_demo``: a small synthetic re-ID data set in the Market-1501 layout.

Each identity is one object with a fixed shape (a random polygon), fill texture and two
colours; several "cameras" see it, each with its own colour cast, scale range and viewing angle,
on a different background each time. Train and test identities are disjoint; the gallery holds
distractors (id 0) and the test folder junk images (id -1), so the evaluation protocol is
exercised. One seed fixes every byte; the folder is written under a temporary name and renamed.
"""
import json
import os
import shutil
import tempfile

import cv2
import numpy as np

from .demo_shapes import random_background

__all__ = ["generate_reid_demo", "REID_DEMO_MARKER"]

REID_DEMO_MARKER = "detpre_reid_demo.json"  # written last: its presence = complete
_VERSION = 1
_TEXTURES = ("solid", "stripes", "checker", "dots", "halves")


def _identity(rng):
    """Fixed attributes of one object."""
    k = int(rng.integers(3, 8))
    angles = (np.arange(k) + rng.uniform(-0.3, 0.3, k)) * 2 * np.pi / k + rng.uniform(0, 2 * np.pi)
    return {
        "angles": angles, "radii": rng.uniform(0.55, 1.0, k),
        "texture": _TEXTURES[int(rng.integers(len(_TEXTURES)))],
        "colors": rng.uniform(20, 255, (2, 3)).astype(np.float32),
        "freq": float(rng.uniform(3, 7)), "tilt": float(rng.uniform(0, np.pi)),
    }


def _render_object(ident, size):
    """The object in its own frame: (size x size x 3 float RGB, size x size mask)."""
    c = size / 2.0
    pts = np.stack([c + 0.45 * size * ident["radii"] * np.cos(ident["angles"]),
                    c + 0.45 * size * ident["radii"] * np.sin(ident["angles"])], axis=1)
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    yy, xx = (np.mgrid[0:size, 0:size].astype(np.float32) / size)
    u = xx * np.cos(ident["tilt"]) + yy * np.sin(ident["tilt"])
    v = -xx * np.sin(ident["tilt"]) + yy * np.cos(ident["tilt"])
    f, kind = ident["freq"], ident["texture"]
    if kind == "solid":
        sel = np.zeros_like(u, bool)
    elif kind == "stripes":
        sel = np.sin(2 * np.pi * f * u) > 0
    elif kind == "checker":
        sel = (np.floor(f * u) + np.floor(f * v)) % 2 == 0
    elif kind == "dots":
        sel = (np.sin(2 * np.pi * f * u) * np.sin(2 * np.pi * f * v)) > 0.5
    else:
        sel = u > np.median(u)
    c1, c2 = ident["colors"]
    img = np.where(sel[..., None], c2, c1).astype(np.float32)
    return img, mask


def _camera(rng):
    """Fixed properties of one camera: colour cast, scale range, base viewing angle."""
    return {"gain": rng.uniform(0.85, 1.15, 3).astype(np.float32),
            "scale": float(rng.uniform(0.8, 1.1)), "angle": float(rng.uniform(-40, 40))}


def _view(rng, ident, cam, size):
    """One image of ``ident`` seen by ``cam``: pose, scale, position, background, cast, noise."""
    obj, mask = _render_object(ident, 2 * size)
    scale = cam["scale"] * rng.uniform(0.85, 1.15) / 2.0
    angle = cam["angle"] + rng.uniform(-20, 20)
    M = cv2.getRotationMatrix2D((size, size), angle, scale)
    # the object's centre (size, size) on its 2*size canvas goes to the image centre, jittered
    M[:, 2] += -size / 2.0 + rng.uniform(-3, 3, 2) * size / 64
    fg = cv2.warpAffine(obj, M, (size, size), flags=cv2.INTER_LINEAR)
    alpha = cv2.warpAffine(mask.astype(np.float32), M, (size, size), flags=cv2.INTER_LINEAR)
    bg = random_background(rng, size, size).astype(np.float32)
    bg = 0.4 * bg + 0.6 * bg.mean(axis=(0, 1))  # low-contrast clutter: the object stands out
    img = alpha[..., None] * fg + (1 - alpha[..., None]) * bg
    img = img * cam["gain"] + rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _write(path, img_rgb):
    ok, buf = cv2.imencode(".jpg", img_rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
    if not ok:
        raise RuntimeError(f"cannot encode {path}")
    with open(path, "wb") as f:
        f.write(buf.tobytes())


def generate_reid_demo(root, seed=0, num_train_ids=32, num_test_ids=24, num_cameras=4,
                       views_per_camera=2, num_distractors=12, num_junk=6, size=64):
    """
    Write the demo under ``root`` (bounding_box_train/, query/, bounding_box_test/) unless it is
    complete there. Train ids are 1..num_train_ids; test ids follow. Every identity is seen by
    every camera ``views_per_camera`` times; per test id, the first view of two cameras is a
    query, the rest is gallery. Returns ``root``.
    """
    root = os.path.abspath(root)
    if os.path.exists(os.path.join(root, REID_DEMO_MARKER)):
        return root
    parent = os.path.dirname(root)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".reid_demo_tmp_", dir=parent)
    try:
        for d in ("bounding_box_train", "query", "bounding_box_test"):
            os.makedirs(os.path.join(tmp, d))
        rng = np.random.default_rng(seed)
        cams = [_camera(rng) for _ in range(num_cameras)]
        ids = [_identity(rng) for _ in range(num_train_ids + num_test_ids)]
        frame = 0
        for pid0, ident in enumerate(ids):
            pid = pid0 + 1
            train = pid0 < num_train_ids
            query_cams = set(np.random.default_rng([seed, pid]).choice(num_cameras, 2, replace=False))
            for c, cam in enumerate(cams):
                for v in range(views_per_camera):
                    vrng = np.random.default_rng([seed, pid, c, v])
                    frame += 1
                    name = f"{pid:04d}_c{c + 1}s1_{frame:06d}_00.jpg"
                    folder = ("bounding_box_train" if train else
                              "query" if (v == 0 and c in query_cams) else "bounding_box_test")
                    _write(os.path.join(tmp, folder, name), _view(vrng, ident, cam, size))
        extra = [(0, num_distractors), (-1, num_junk)]
        for pid, count in extra:  # distractor objects (id 0) and junk (id -1) in the gallery
            for i in range(count):
                vrng = np.random.default_rng([seed, 10_000 + pid, i])
                c = int(vrng.integers(num_cameras))
                frame += 1
                tag = "0000" if pid == 0 else "-1"
                _write(os.path.join(tmp, "bounding_box_test", f"{tag}_c{c + 1}s1_{frame:06d}_00.jpg"),
                       _view(vrng, _identity(vrng), cams[c], size))
        with open(os.path.join(tmp, REID_DEMO_MARKER), "w") as f:
            json.dump({"version": _VERSION, "seed": seed}, f)
        try:
            os.rename(tmp, root)
        except OSError:  # another process finished first, or root exists incomplete
            if not os.path.exists(os.path.join(root, REID_DEMO_MARKER)):
                shutil.rmtree(root, ignore_errors=True)
                os.rename(tmp, root)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return root
