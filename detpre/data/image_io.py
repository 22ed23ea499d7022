"""
The one image read of every training mapper, and what happens when it fails.

``read_image`` is detectron2's (EXIF rotation, ``format``), with any failure (missing file,
truncated JPEG, not an image) raised as ``UnreadableImage`` naming the file. The resumable loader
(``samplers.SeededMapDataset``) catches it, takes the next sample instead and hands the skip to
``BadImageLog`` in the main process, which logs each file once, counts skips in the metrics and
stops the run only past ``DATALOADER.MAX_BAD_IMAGE_FRACTION`` of the training images.

16-bit grayscale images (PNG/TIFF, PIL modes ``I;16*`` and ``I``) are scaled to 8 bits by dividing
by 257, i.e. the full 16-bit range 0..65535 onto 0..255, the same for every image (a dark image
stays dark); detectron2's reader clips them at 255, so such an image read almost solid white.
Wider or float grayscale images (``I`` past 65535, ``F``) are refused by name: their range is
unknown. 16-bit RGB is scaled by PIL itself.
"""
import logging
import os

import numpy as np
from detectron2.data import detection_utils as utils
from detectron2.utils.file_io import PathManager
from PIL import Image, ImageOps

from detpre.errors import DetpreError

__all__ = ["UnreadableImage", "read_image", "bad_image_of", "BadImageLog", "BAD_IMAGES_KEY",
           "DEFAULT_MAX_BAD_FRACTION", "printable_name", "text_bytes"]

logger = logging.getLogger(__name__)

# key of a mapped sample listing the (file, reason) skipped to produce it; popped by the loader
BAD_IMAGES_KEY = "_detpre_bad_images"
DEFAULT_MAX_BAD_FRACTION = 0.1


class UnreadableImage(OSError):
    def __init__(self, file_name, reason):
        super().__init__(f"{printable_name(file_name)}: {reason}")
        self.file_name, self.reason = file_name, reason


def printable_name(path):
    """``path`` as text any terminal, log file or UTF-8 file takes: itself if it is valid UTF-8,
    else the repr of its bytes (``b'imgs/\\xff.png'``) -- a name read from a non-UTF-8 file
    system holds surrogates (``os.fsdecode``) that cannot be printed or encoded."""
    path = os.fspath(path)
    if isinstance(path, bytes):
        return repr(path)
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return repr(os.fsencode(path))


def text_bytes(text):
    """``text`` (holding file names) as UTF-8 bytes for a file: an ``os.fsdecode``d name gets its
    original bytes back (surrogateescape), so a list of files names each exactly."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate no file system gave (e.g. from a json)
        return text.encode("utf-8", "backslashreplace")


_16BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _wide_to_8bit(image, file_name):
    """A 16-bit grayscale PIL image as 8-bit "L" (value / 257); other wide modes refused."""
    a = np.asarray(image)
    if image.mode == "F" or (a.size and (a.min() < 0 or a.max() > 65535)):
        raise UnreadableImage(file_name, f"{image.mode} image with values {a.min()}..{a.max()}, not a "
                                         "16-bit range: convert it to an 8-bit (or 16-bit) image")
    return Image.fromarray(np.rint(a.astype(np.float32) / 257.0).astype(np.uint8), "L")


def read_image(file_name, format=None, d2_read_image=None):
    """detectron2's ``read_image`` (16-bit grayscale scaled to 8 bits, see the module docstring);
    failures become ``UnreadableImage(file_name, reason)``. ``d2_read_image``: detectron2's own
    reader, when ``detection_utils.read_image`` is detpre's (``detpre._compat``)."""
    d2_read_image = d2_read_image or utils.read_image
    try:
        with PathManager.open(file_name, "rb") as f:
            image = Image.open(f)
            if image.mode not in _16BIT_MODES + ("F",):
                image = None  # the usual case: detectron2's own read, unchanged
            else:
                image = _wide_to_8bit(ImageOps.exif_transpose(image), file_name)
        if image is None:
            return d2_read_image(file_name, format=format)
        return utils.convert_PIL_to_numpy(image, format)
    except UnreadableImage:
        raise
    except Exception as e:
        raise UnreadableImage(file_name, f"{type(e).__name__}: {e}") from e


def bad_image_of(error, record):
    """(file, reason) of an ``OSError`` raised while mapping ``record`` (detectron2's own mapper
    raises PIL's/the file system's errors unwrapped: they belong to the record's image)."""
    if isinstance(error, UnreadableImage):
        return error.file_name, error.reason
    return getattr(error, "filename", None) or record.get("file_name"), f"{type(error).__name__}: {error}"


class BadImageLog:
    """Main-process tally of skipped images; see the module docstring."""

    def __init__(self, num_images, max_fraction=DEFAULT_MAX_BAD_FRACTION):
        self.num_images, self.max_fraction = int(num_images), float(max_fraction)
        self.bad = {}  # file -> reason, in the order met
        self.skips = 0

    def collect(self, batch):
        for d in batch:
            for file_name, reason in d.pop(BAD_IMAGES_KEY, ()) if isinstance(d, dict) else ():
                self.skips += 1
                if file_name not in self.bad:
                    self.bad[file_name] = reason
                    logger.warning("skipping unreadable image %s (%s); training goes on", file_name, reason)
        self._report()
        if len(self.bad) > self.max_fraction * self.num_images:
            shown = "; ".join(f"{f} ({r})" for f, r in list(self.bad.items())[:5])
            raise DetpreError(
                f"{len(self.bad)} of {self.num_images} training images cannot be read, more than "
                f"DATALOADER.MAX_BAD_IMAGE_FRACTION={self.max_fraction}: {shown}. Fix or remove "
                "them from the data set, or raise DATALOADER.MAX_BAD_IMAGE_FRACTION")

    def _report(self):
        try:
            from detectron2.utils.events import get_event_storage

            storage = get_event_storage()
        except (AssertionError, ImportError):  # not inside a training loop
            return
        storage.put_scalar("data/skipped_samples", self.skips, smoothing_hint=False)
        storage.put_scalar("data/bad_images", len(self.bad), smoothing_hint=False)
