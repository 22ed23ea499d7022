"""
Weights from and for other tools: torchvision's ResNet under detectron2's names and back
(``torchvision``), and weight files a user already has, read safely and resolved against the
detector they initialize (``weights``).
"""
