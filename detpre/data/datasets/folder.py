"""
Unlabeled image folders from ``DATASETS.FOLDER`` (the pretraining / self-training pool).

Dicts carry ``file_name`` and ``image_id`` (the path relative to the folder, stable when
images are added) and no "annotations"; images are not opened here, the mapper reads them.
"""
import os

from detpre.errors import DetpreFileNotFoundError

from .catalog import register_once

__all__ = ["IMAGE_EXTENSIONS", "list_images", "load_image_folder", "register_image_folder"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def _is_image(name):
    return name.lower().endswith(IMAGE_EXTENSIONS)


def list_images(image_dir):
    """Sorted relative paths (with "/") of the images under ``image_dir``, recursively."""
    found = []
    for dirpath, dirnames, filenames in os.walk(image_dir, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = os.path.relpath(dirpath, image_dir)
        for f in filenames:
            if _is_image(f) and not f.startswith("."):
                found.append(f if rel == "." else os.path.join(rel, f).replace(os.sep, "/"))
    return sorted(found)


def _has_image(image_dir):
    for _, dirnames, filenames in os.walk(image_dir, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        if any(_is_image(f) and not f.startswith(".") for f in filenames):
            return True
    return False


def _empty_error(source, name, image_dir):
    return DetpreFileNotFoundError(
        f"{source}: data set {name!r}: no images ({', '.join(IMAGE_EXTENSIONS)}) under "
        f"{image_dir}. Put images there or fix the path in the config.")


def load_image_folder(image_dir, name="", source="DATASETS.FOLDER"):
    """Dataset dicts ``{"file_name", "image_id"}`` of every image under ``image_dir``."""
    rels = list_images(image_dir)
    if not rels:
        raise _empty_error(source, name, image_dir)
    return [{"file_name": os.path.join(image_dir, r), "image_id": r} for r in rels]


def register_image_folder(name, image_dir, source="DATASETS.FOLDER"):
    """Register an image folder; a missing or image-less folder fails here."""
    image_dir = os.path.expanduser(str(image_dir))
    if not os.path.isdir(image_dir):
        raise DetpreFileNotFoundError(
            f"{source}: image folder of data set {name!r} not found: {image_dir}. "
            "Fix the path in the config (relative paths are relative to the working directory).")
    if not _has_image(image_dir):
        raise _empty_error(source, name, image_dir)
    return register_once(
        name, ("folder", image_dir),
        lambda: load_image_folder(image_dir, name, source),
        image_root=image_dir,
    )
