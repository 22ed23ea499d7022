"""
The one image read of every training mapper, and what happens when it fails.

``read_image`` is detectron2's (EXIF rotation, ``format``), with any failure (missing file,
truncated JPEG, not an image) raised as ``UnreadableImage`` naming the file. The resumable loader
(``samplers.SeededMapDataset``) catches it, takes the next sample instead and hands the skip to
``BadImageLog`` in the main process, which logs each file once, counts skips in the metrics and
stops the run only past ``DATALOADER.MAX_BAD_IMAGE_FRACTION`` of the training images.
"""
import logging

from detectron2.data import detection_utils as utils

from detpre.errors import DetpreError

__all__ = ["UnreadableImage", "read_image", "bad_image_of", "BadImageLog", "BAD_IMAGES_KEY",
           "DEFAULT_MAX_BAD_FRACTION"]

logger = logging.getLogger(__name__)

# key of a mapped sample listing the (file, reason) skipped to produce it; popped by the loader
BAD_IMAGES_KEY = "_detpre_bad_images"
DEFAULT_MAX_BAD_FRACTION = 0.1


class UnreadableImage(OSError):
    def __init__(self, file_name, reason):
        super().__init__(f"{file_name}: {reason}")
        self.file_name, self.reason = file_name, reason


def read_image(file_name, format=None):
    """detectron2's ``read_image``; failures become ``UnreadableImage(file_name, reason)``."""
    try:
        return utils.read_image(file_name, format=format)
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
