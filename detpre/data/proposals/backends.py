"""
Selective-search backends, chosen by name (``build_backend("detpre")``).

Every backend is a picklable callable ``backend(image) -> boxes``: ``image`` is (H, W, 3)
uint8 RGB, ``boxes`` an (N, 4) float32 XYXY array in pixel-edge coordinates of that image
(x2, y2 exclusive), best first, without duplicates. ``backend.params`` (a dict) identifies
its settings, so a resumed or merged proposal file can check it was made the same way.
"""
import numpy as np

from .selective_search import PRESETS, selective_search

__all__ = ["PROPOSAL_BACKENDS", "register_backend", "build_backend", "dedupe_boxes"]

PROPOSAL_BACKENDS = {}


def register_backend(name):
    def deco(cls):
        PROPOSAL_BACKENDS[name] = cls
        return cls
    return deco


def build_backend(name="detpre", **kwargs):
    """Instantiate the backend registered as ``name`` with its keyword arguments."""
    if name not in PROPOSAL_BACKENDS:
        raise KeyError(f"unknown proposal backend {name!r}; choose from {sorted(PROPOSAL_BACKENDS)}")
    return PROPOSAL_BACKENDS[name](**kwargs)


def dedupe_boxes(boxes):
    """Drop exact duplicate boxes, keeping the first (best-ranked) occurrence, order kept."""
    if len(boxes) == 0:
        return boxes
    _, first = np.unique(boxes, axis=0, return_index=True)
    return boxes[np.sort(first)]


def _rects_to_xyxy(rects):
    """(x, y, w, h) rectangles whose (x + w, y + h) is the last pixel -> pixel-edge XYXY."""
    b = np.asarray(rects, np.float32).reshape(-1, 4).copy()
    b[:, 2:] += b[:, :2] + 1
    return b


@register_backend("detpre")
class DetpreSelectiveSearch:
    """detpre's vectorized selective search (``selective_search.py``); the default backend.

    Defaults are SoCo's segmentation parameters (k=300, sigma=0.9, min_size=100) in HSV with
    the paper's two main similarity sets (CTSF, TSF), segmenting at half resolution
    (``downsample=2``: 4x fewer graph edges, region sizes kept in full-resolution pixels).
    ``preset`` ("single", "fast", "quality") sets colour spaces / scales / strategies at once.
    """

    def __init__(self, preset=None, color_spaces=("hsv",), scales=(300,),
                 strategies=("CTSF", "TSF"), sigma=0.9, min_size=100, downsample=2, seed=0):
        if preset is not None:
            if preset not in PRESETS:
                raise KeyError(f"unknown selective-search preset {preset!r}; choose from "
                               f"{sorted(PRESETS)}")
            color_spaces = PRESETS[preset]["color_spaces"]
            scales = PRESETS[preset]["scales"]
            strategies = PRESETS[preset]["strategies"]
        self.params = dict(backend="detpre", color_spaces=list(color_spaces),
                           scales=[float(k) for k in scales], strategies=list(strategies),
                           sigma=float(sigma), min_size=int(min_size),
                           downsample=int(downsample), seed=int(seed))

    def __call__(self, image):
        p = self.params
        return selective_search(image, p["color_spaces"], p["scales"], p["strategies"],
                                p["sigma"], p["min_size"], p["downsample"], p["seed"])


@register_backend("selectivesearch")
class PackageSelectiveSearch:
    """The ``selectivesearch`` PyPI package (the reference). It has no ranking: boxes come in
    reverse creation order (top of the hierarchy first), like the paper's depth ranking."""

    def __init__(self, scale=300, sigma=0.9, min_size=100):
        self.params = dict(backend="selectivesearch", scale=float(scale), sigma=float(sigma),
                           min_size=int(min_size))

    def __call__(self, image):
        import warnings

        try:
            import selectivesearch
        except ImportError as e:
            raise ImportError("backend 'selectivesearch' needs the package: "
                              "pip install selectivesearch") from e
        p = self.params
        with warnings.catch_warnings():  # its LBP-on-float warning, once per image
            warnings.simplefilter("ignore")
            _, regions = selectivesearch.selective_search(
                np.ascontiguousarray(image), scale=p["scale"], sigma=p["sigma"],
                min_size=p["min_size"])
        return dedupe_boxes(_rects_to_xyxy([r["rect"] for r in regions])[::-1])


@register_backend("opencv")
class OpenCVSelectiveSearch:
    """OpenCV contrib's ``cv2.ximgproc.segmentation`` selective search ("fast", "quality" or
    "single" mode); its output is already ranked."""

    def __init__(self, mode="fast", scale=300, sigma=0.9):
        import cv2

        if not hasattr(cv2, "ximgproc"):
            raise ImportError(
                "backend 'opencv' needs OpenCV's contrib modules (cv2.ximgproc), which this "
                f"OpenCV {cv2.__version__} lacks. Install opencv-contrib-python-headless of the "
                "same version instead of opencv-python-headless, or use backend 'detpre'.")
        if mode not in ("fast", "quality", "single"):
            raise ValueError(f"opencv selective search mode {mode!r}: use fast, quality or single")
        self.params = dict(backend="opencv", mode=mode, scale=float(scale), sigma=float(sigma))

    def __call__(self, image):
        import cv2

        cv2.setNumThreads(1)
        p = self.params
        ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
        ss.setBaseImage(np.ascontiguousarray(image[:, :, ::-1]))
        if p["mode"] == "fast":
            ss.switchToSelectiveSearchFast()
        elif p["mode"] == "quality":
            ss.switchToSelectiveSearchQuality()
        else:
            ss.switchToSingleStrategy(int(p["scale"]), p["sigma"])
        rects = ss.process()
        b = np.asarray(rects, np.float32).reshape(-1, 4).copy()
        b[:, 2:] += b[:, :2]  # OpenCV's (x, y, w, h) already spans w pixels
        return dedupe_boxes(b)
