#!/usr/bin/env python
"""detpre: detection-aligned pretraining for detectron2."""
from setuptools import find_packages, setup

setup(
    name="detpre",
    version="0.1.0",
    description="Detection-aligned pretraining (SoCo, Fast-MoCo, Jigsaw, SpCL, self-training) "
    "for detectron2",
    packages=find_packages(include=["detpre", "detpre.*"]),
    python_requires=">=3.8",
    # torch/torchvision and detectron2 are installed by scripts/bootstrap.sh (detectron2 v0.6
    # has no usable wheel on the registry; see README).
    install_requires=[
        "numpy",
        "scipy",
        "scikit-image",
        "opencv-python-headless",
        "pycocotools",
        "fvcore",
        "iopath",
        "tqdm",
        "tabulate",
        "Pillow",
    ],
    extras_require={"reference": ["selectivesearch"], "test": ["pytest"]},
)
