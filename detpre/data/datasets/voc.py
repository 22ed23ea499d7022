"""
Pascal VOC-style data sets from ``DATASETS.VOC``.

Produces exactly what detectron2's ``load_voc_instances`` produces (and registers the metadata
its ``register_pascal_voc`` sets, plus evaluator_type "pascal_voc"), but: a one-line split file
works (``np.loadtxt`` gives a 0-d array there), and a missing/corrupt XML or a class name not in
the class list is an error naming the XML, instead of a bare ``list.index`` failure.
"""
import os
import re
import xml.etree.ElementTree as ET

from detectron2.data.datasets.pascal_voc import CLASS_NAMES as VOC_CLASS_NAMES
from detectron2.structures import BoxMode

from detpre.errors import DetpreError, DetpreFileNotFoundError

from .catalog import register_once

__all__ = ["VOC_CLASS_NAMES", "load_voc", "register_voc", "guess_voc_year"]


def guess_voc_year(dirname):
    """Year in the directory's name (VOC2007 -> 2007; the 2007 evaluator uses 11-point AP)."""
    m = re.search(r"(?:19|20)\d\d", os.path.basename(os.path.normpath(dirname)))
    return int(m.group(0)) if m else 2012


def _split_file(dirname, split):
    return os.path.join(dirname, "ImageSets", "Main", split + ".txt")


def _text(tree, path, xml_file):
    node = tree.find(path)
    if node is None or node.text is None:
        raise DetpreError(f"VOC annotation {xml_file} has no <{path}>; fix or remove the file")
    return node.text.strip()


def load_voc(dirname, split, class_names):
    """Dataset dicts of ``dirname``'s ``split``, like ``load_voc_instances``."""
    class_names = list(class_names)
    index = {c: i for i, c in enumerate(class_names)}
    with open(_split_file(dirname, split)) as f:
        fileids = [line.split()[0] for line in f if line.strip()]
    dicts = []
    for fileid in fileids:
        xml_file = os.path.join(dirname, "Annotations", fileid + ".xml")
        try:
            tree = ET.parse(xml_file)
        except FileNotFoundError:
            raise DetpreFileNotFoundError(
                f"VOC annotation {xml_file} (listed in {_split_file(dirname, split)}) is missing; "
                "restore it or remove its line from that split file"
            ) from None
        except ET.ParseError as e:
            raise DetpreError(f"VOC annotation {xml_file} is not valid XML: {e}; fix or remove the file") from e
        record = {
            "file_name": os.path.join(dirname, "JPEGImages", fileid + ".jpg"),
            "image_id": fileid,
            "height": int(_text(tree, "./size/height", xml_file)),
            "width": int(_text(tree, "./size/width", xml_file)),
        }
        instances = []
        for obj in tree.findall("object"):
            cls = _text(obj, "name", xml_file)
            if cls not in index:
                raise DetpreError(
                    f"VOC annotation {xml_file} has an object of class {cls!r}, which is not in "
                    f"the class list {class_names}. Give the data set's classes as the 4th item "
                    "of its DATASETS.VOC entry: [name, voc_dir, split, \"cls1,cls2,...\"].")
            box = [float(_text(obj, f"bndbox/{k}", xml_file))
                   for k in ("xmin", "ymin", "xmax", "ymax")]
            box[0] -= 1.0  # VOC boxes are 1-based inclusive pixel indices
            box[1] -= 1.0
            instances.append({"category_id": index[cls], "bbox": box,
                              "bbox_mode": BoxMode.XYXY_ABS})
        record["annotations"] = instances
        dicts.append(record)
    return dicts


def register_voc(name, dirname, split, class_names=VOC_CLASS_NAMES, source="DATASETS.VOC"):
    """Register a VOC-style directory; missing parts fail here, naming the path."""
    dirname = os.path.expanduser(str(dirname))
    class_names = tuple(class_names)
    if not class_names or len(set(class_names)) != len(class_names):
        raise DetpreError(f"{source}: data set {name!r} needs distinct class names, "
                         f"got {list(class_names)}")
    for path, is_ok in ((os.path.join(dirname, "Annotations"), os.path.isdir),
                        (os.path.join(dirname, "JPEGImages"), os.path.isdir),
                        (_split_file(dirname, split), os.path.isfile)):
        if not is_ok(path):
            raise DetpreFileNotFoundError(
                f"{source}: data set {name!r}: {path} not found. A VOC directory holds "
                "Annotations/, JPEGImages/ and ImageSets/Main/<split>.txt; fix the path or "
                "split in the config (see datasets/README.md).")
    return register_once(
        name, ("voc", dirname, split, class_names),
        lambda: load_voc(dirname, split, class_names),
        thing_classes=list(class_names), dirname=dirname, year=guess_voc_year(dirname),
        split=split, evaluator_type="pascal_voc",
    )
