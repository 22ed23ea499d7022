"""
Selective search (Uijlings et al., IJCV 2013), vectorized.

Same algorithm as the ``selectivesearch`` package and the paper: Felzenszwalb-Huttenlocher
segmentation (scikit-image's), then greedy hierarchical grouping of adjacent regions by a sum
of colour, texture, size and fill similarities, over several colour spaces / thresholds /
similarity sets ("diversification strategies"). What makes it fast:

* region colour (25 bins/channel) and texture (8 Gaussian-derivative orientations x 10 bins
  per channel) histograms are built for all regions at once with one ``np.bincount`` over
  precomputed per-pixel bin offsets, as (n_regions x bins) arrays;
* adjacency comes from label-image neighbour pairs (true 4-connectivity, not the package's
  box-corner test);
* grouping keeps a heap of pair similarities; a merge computes the new region's histogram
  as a size-weighted mean and its similarities to all its neighbours in one vectorized step.

It also fixes two bugs of the package that make its colour and texture terms constant
(HSV values in [0, 1] binned over [0, 255]; LBP codes in [0, 255] binned over [0, 1]).
"""
import heapq

import cv2
import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import felzenszwalb

__all__ = ["COLOR_SPACES", "SIMILARITIES", "PRESETS", "selective_search", "hierarchical_grouping"]

COLOR_BINS = 25
TEXTURE_BINS = 10
TEXTURE_ORIENTATIONS = 8
SIMILARITIES = "CTSF"  # colour, texture, size, fill


def _rgb(img):
    return img.astype(np.float32) / 255.0


def _hsv(img):
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV_FULL).astype(np.float32)  # all channels 0..255
    return hsv / 255.0


def _lab(img):
    return cv2.cvtColor(img, cv2.COLOR_RGB2Lab).astype(np.float32) / 255.0  # uint8 Lab: 0..255


def _rgi(img):
    f = img.astype(np.float32)
    s = f.sum(axis=2, keepdims=True)
    rg = np.divide(f[..., :2], s, out=np.full_like(f[..., :2], 1.0 / 3.0), where=s > 0)
    return np.concatenate([rg, s / (3 * 255.0)], axis=2)


def _hue(img):
    return _hsv(img)[..., :1]


def _gray(img):
    return (img.astype(np.float32).mean(axis=2, keepdims=True)) / 255.0


# Colour spaces of the paper (HSV, Lab, rgI, H, I) plus RGB; each maps uint8 RGB (H, W, 3) to
# float32 (H, W, C) with values in [0, 1].
COLOR_SPACES = {"rgb": _rgb, "hsv": _hsv, "lab": _lab, "rgi": _rgi, "hue": _hue, "gray": _gray}

# Diversification presets. "single" is the package's / SoCo's setting with the paper's two
# main similarity sets on one segmentation; "fast" and "quality" are the paper's (and
# OpenCV's) fast and quality modes.
PRESETS = {
    "single": dict(color_spaces=("hsv",), scales=(300,), strategies=("CTSF", "TSF")),
    "fast": dict(color_spaces=("hsv", "lab"), scales=(50, 100), strategies=("CTSF", "TSF")),
    "quality": dict(color_spaces=("hsv", "lab", "rgi", "hue", "gray"),
                    scales=(50, 100, 150, 300), strategies=("CTSF", "TSF", "F", "S")),
}


def _bin(values, bins):
    """Bin indices of values in [0, 1] (1.0 falls in the last bin)."""
    return np.minimum((values * bins).astype(np.int32), bins - 1)


def _gaussian_kernels(sigma=1.0):
    r = int(np.ceil(4 * sigma))
    x = np.arange(-r, r + 1, dtype=np.float64)
    g = np.exp(-0.5 * (x / sigma) ** 2)
    g /= g.sum()
    dg = -x / sigma ** 2 * g  # derivative of the Gaussian
    return g.astype(np.float32), dg[::-1].astype(np.float32).copy()  # flipped: filter2D correlates


_G, _DG = _gaussian_kernels(1.0)


def _pixel_bin_offsets(space_img):
    """Per-pixel column indices into the colour / texture histograms of one colour space.

    Returns (colour offsets (C, H*W), texture offsets (8C, H*W)) int32, so that the histograms
    of all regions are one bincount of ``label * dim + offsets``. Texture: the paper's Gaussian
    derivatives (sigma 1) in 8 orientations (4 directions x both signs), each map scaled by its
    image-wide maximum, 10 bins.
    """
    h, w, c = space_img.shape
    chans = np.ascontiguousarray(space_img.reshape(-1, c).T)  # (C, HW)
    colour = _bin(chans, COLOR_BINS) + (np.arange(c, dtype=np.int32) * COLOR_BINS)[:, None]
    border = cv2.BORDER_REFLECT
    gx = cv2.sepFilter2D(space_img, cv2.CV_32F, _DG, _G, borderType=border)
    gy = cv2.sepFilter2D(space_img, cv2.CV_32F, _G, _DG, borderType=border)
    gx = np.ascontiguousarray(gx.reshape(-1, c).T)
    gy = np.ascontiguousarray(gy.reshape(-1, c).T)
    diag = np.float32(np.sqrt(0.5))
    maps = []
    for d in (gx, (gx + gy) * diag, gy, (gy - gx) * diag):  # 0, 45, 90, 135 degrees
        maps.append(d)
        maps.append(-d)
    maps = np.stack(maps, axis=1).reshape(c * TEXTURE_ORIENTATIONS, -1)  # (8C, HW)
    peak = maps.max(axis=1, keepdims=True)
    scale = np.where(peak > 0, TEXTURE_BINS / np.maximum(peak, 1e-12), 0).astype(np.float32)
    texture = (maps * scale).astype(np.int32)
    np.clip(texture, 0, TEXTURE_BINS - 1, out=texture)
    texture += (np.arange(c * TEXTURE_ORIENTATIONS, dtype=np.int32) * TEXTURE_BINS)[:, None]
    return colour, texture


def _region_histograms(labels, n, offsets, dim):
    """(n, dim) histograms of every region at once, each row L1-normalized."""
    idx = offsets + labels.reshape(1, -1).astype(np.int32) * np.int32(dim)
    hist = np.bincount(idx.ravel(), minlength=n * dim).reshape(n, dim).astype(np.float64)
    return hist / hist.sum(axis=1, keepdims=True)


def _region_boxes(labels, n):
    """(n, 4) pixel-edge XYXY boxes of the regions (x2, y2 exclusive)."""
    slices = ndi.find_objects(labels + 1, max_label=n)
    return np.array([(s[1].start, s[0].start, s[1].stop, s[0].stop) for s in slices], np.float64)


def _adjacent_pairs(labels, n):
    """(P, 2) sorted unique pairs (a < b) of 4-connected neighbouring regions."""
    keys = []
    for a, b in ((labels[:, :-1], labels[:, 1:]), (labels[:-1, :], labels[1:, :])):
        m = a != b
        lo = np.minimum(a[m], b[m]).astype(np.int64)
        hi = np.maximum(a[m], b[m]).astype(np.int64)
        keys.append(lo * n + hi)
    keys = np.unique(np.concatenate(keys))
    return np.stack([keys // n, keys % n], axis=1)


def _similarity(use, t, others, size, box, hists, imsize):
    """Similarity of region ``t`` (int or array) to regions ``others`` (array)."""
    sim = np.zeros(len(others))
    if "C" in use:
        sim += np.minimum(hists[0][t], hists[0][others]).sum(axis=-1)
    if "T" in use:
        sim += np.minimum(hists[1][t], hists[1][others]).sum(axis=-1)
    if "S" in use:
        sim += 1.0 - (size[t] + size[others]) / imsize
    if "F" in use:
        bt, bo = box[t], box[others]
        bw = np.maximum(bt[..., 2], bo[:, 2]) - np.minimum(bt[..., 0], bo[:, 0])
        bh = np.maximum(bt[..., 3], bo[:, 3]) - np.minimum(bt[..., 1], bo[:, 1])
        sim += 1.0 - (bw * bh - size[t] - size[others]) / imsize
    return sim


def hierarchical_grouping(sizes, boxes, colour_hist, texture_hist, pairs, use="CTSF"):
    """Greedily merge the most similar adjacent pair until one region is left.

    Args:
        sizes (n,), boxes (n, 4) XYXY, colour_hist (n, Dc), texture_hist (n, Dt): the initial
            regions; pairs (P, 2): adjacent region pairs; use: similarity letters from "CTSF".
    Returns:
        (M, 4) boxes of every region in creation order: the n initial ones, then one per merge
        (the last one is the top of the hierarchy).
    """
    use = use.upper()
    if not use or set(use) - set(SIMILARITIES):
        raise ValueError(f"similarity strategy {use!r}: use letters from {SIMILARITIES!r}")
    n = len(sizes)
    cap = max(2 * n - 1, 1)
    imsize = float(sizes.sum())
    size = np.zeros(cap)
    size[:n] = sizes
    box = np.zeros((cap, 4))
    box[:n] = boxes
    hists = []
    for h in (colour_hist, texture_hist):
        arr = np.zeros((cap, h.shape[1]))
        arr[:n] = h
        hists.append(arr)
    neighbours = [set() for _ in range(cap)]
    for a, b in pairs.tolist():
        neighbours[a].add(b)
        neighbours[b].add(a)
    alive = np.zeros(cap, bool)
    alive[:n] = True

    heap = []
    if len(pairs):
        sims = _similarity(use, pairs[:, 0], pairs[:, 1], size, box, hists, imsize)
        heap = list(zip((-sims).tolist(), pairs[:, 0].tolist(), pairs[:, 1].tolist()))
        heapq.heapify(heap)
    t = n
    while heap:
        _, a, b = heapq.heappop(heap)
        if not (alive[a] and alive[b]):
            continue  # stale: one of them was merged already
        size[t] = size[a] + size[b]
        box[t, :2] = np.minimum(box[a, :2], box[b, :2])
        box[t, 2:] = np.maximum(box[a, 2:], box[b, 2:])
        for h in hists:
            h[t] = (h[a] * size[a] + h[b] * size[b]) / size[t]
        alive[a] = alive[b] = False
        alive[t] = True
        nb = (neighbours[a] | neighbours[b]) - {a, b}
        neighbours[a] = neighbours[b] = None
        for x in nb:
            s = neighbours[x]
            s.discard(a)
            s.discard(b)
            s.add(t)
        neighbours[t] = nb
        if nb:
            others = np.fromiter(sorted(nb), np.int64, len(nb))
            sims = _similarity(use, t, others, size, box, hists, imsize)
            for s, o in zip((-sims).tolist(), others.tolist()):
                heapq.heappush(heap, (s, o, t))
        t += 1
    return box[:t].copy()


def _segment(space_img, scale, sigma, min_size, downsample=1):
    """Felzenszwalb labels (H, W) int, consecutive from 0.

    With ``downsample`` f > 1 the graph is built on the image shrunk by f (area averaging), with
    k, min_size scaled by 1/f^2 and sigma by 1/f so regions keep their size in full-resolution
    pixels, and the labels are upsampled back (nearest).
    """
    h, w = space_img.shape[:2]
    if downsample > 1:
        small = cv2.resize(space_img, (max(1, round(w / downsample)), max(1, round(h / downsample))),
                           interpolation=cv2.INTER_AREA)
        small = small.reshape(small.shape[0], small.shape[1], -1)
        area = downsample * downsample
        labels = _segment(small, scale / area, sigma / downsample, max(1, round(min_size / area)))
        labels = cv2.resize(labels.astype(np.int32), (w, h), interpolation=cv2.INTER_NEAREST)
        present = np.bincount(labels.ravel()) > 0
        if not present.all():  # a label may vanish when upsampled: make them consecutive again
            labels = (np.cumsum(present) - 1).astype(np.int32)[labels]
        return labels
    if space_img.shape[2] == 1:
        return felzenszwalb(space_img[..., 0], scale=scale, sigma=sigma, min_size=min_size,
                            channel_axis=None)
    return felzenszwalb(space_img, scale=scale, sigma=sigma, min_size=min_size, channel_axis=-1)


def selective_search(image, color_spaces=("hsv",), scales=(300,), strategies=("CTSF", "TSF"),
                     sigma=0.9, min_size=100, downsample=1, seed=0):
    """Selective-search boxes of one image, best first, duplicates removed.

    Args:
        image: (H, W, 3) uint8 RGB.
        color_spaces: names in ``COLOR_SPACES``; each is segmented and described separately.
        scales: Felzenszwalb thresholds k (in 0..255 intensity units, as in the paper).
        strategies: similarity sets, each a string of letters from "CTSF".
        sigma, min_size: Felzenszwalb's Gaussian width and minimum component size (pixels).
        seed: seed of the ranking's random factor (fixed, so results are deterministic).
    Returns:
        (N, 4) float32 XYXY boxes in pixel-edge coordinates of ``image`` (x2, y2 exclusive).

    Ranking is the paper's: in each hierarchy a region's index is its depth in creation order
    (the whole image is 1, the first initial region is largest), multiplied by a uniform random
    number; all hierarchies are sorted by that together and later duplicates dropped.
    """
    image = np.ascontiguousarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"selective_search expects an (H, W, 3) uint8 RGB image, got "
                         f"{image.dtype} {image.shape}")
    rng = np.random.default_rng(seed)
    all_boxes, all_rank = [], []
    for space in color_spaces:
        if space not in COLOR_SPACES:
            raise ValueError(f"unknown colour space {space!r}; choose from {sorted(COLOR_SPACES)}")
        space_img = COLOR_SPACES[space](image)
        colour_off, texture_off = _pixel_bin_offsets(space_img)
        c = space_img.shape[2]
        for k in scales:
            labels = _segment(space_img, k, sigma, min_size, downsample)
            n = int(labels.max()) + 1
            sizes = np.bincount(labels.ravel(), minlength=n).astype(np.float64)
            boxes = _region_boxes(labels, n)
            colour = _region_histograms(labels, n, colour_off, c * COLOR_BINS)
            texture = _region_histograms(labels, n, texture_off,
                                         c * TEXTURE_ORIENTATIONS * TEXTURE_BINS)
            pairs = _adjacent_pairs(labels, n)
            for use in strategies:
                hier = hierarchical_grouping(sizes, boxes, colour, texture, pairs, use)
                depth = np.arange(len(hier), 0, -1, dtype=np.float64)
                all_boxes.append(hier)
                all_rank.append(depth * rng.random(len(hier)))
    boxes = np.concatenate(all_boxes)
    order = np.argsort(np.concatenate(all_rank), kind="stable")
    boxes = boxes[order]
    _, first = np.unique(boxes, axis=0, return_index=True)
    return boxes[np.sort(first)].astype(np.float32)
