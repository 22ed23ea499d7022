"""
Data set registration. Nothing is registered on import: entry points call
``register_from_config(cfg)`` (config-named data sets + the demo) or ``register_demo()``.
"""
from .coco import load_checked_coco_json, register_coco, validate_coco_json
from .demo import DEMO_NAMES, demo_root, ensure_demo, register_demo
from .demo_gen import generate_demo_dataset
from .folder import list_images, load_image_folder, register_image_folder
from .register import register_from_config
from .voc import VOC_CLASS_NAMES, guess_voc_year, load_voc, register_voc

__all__ = [k for k in globals().keys() if not k.startswith("_")]
