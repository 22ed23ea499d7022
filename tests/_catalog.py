"""Tests that register data sets under names others use put the catalog back as they found it."""
import contextlib

from detectron2.data import DatasetCatalog, MetadataCatalog


def unregister(names):
    for n in names:
        if n in DatasetCatalog.list():
            DatasetCatalog.remove(n)
        if n in MetadataCatalog.list():
            MetadataCatalog.remove(n)


@contextlib.contextmanager
def names_freed(names, extra=()):
    """``names`` unregistered inside the block; afterwards they (and ``extra``) are unregistered
    and whatever was registered under ``names`` before is restored."""
    saved = {n: (DatasetCatalog[n], MetadataCatalog.get(n).as_dict()) for n in names if n in DatasetCatalog.list()}
    unregister(names)
    try:
        yield
    finally:
        unregister((*names, *extra))
        for n, (func, meta) in saved.items():
            DatasetCatalog.register(n, func)
            MetadataCatalog.get(n).set(**meta)
