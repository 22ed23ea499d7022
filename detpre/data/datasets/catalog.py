"""
Registration that can be repeated: a name registered again with the same arguments is left
alone, with other arguments it is an error (detectron2's catalogs would raise a bare assert).
"""
from detectron2.data import DatasetCatalog, MetadataCatalog

from detpre.errors import DetpreError

__all__ = ["register_once"]

_SPEC_KEY = "detpre_registration"  # metadata field holding what a name was registered with


def register_once(name, spec, loader, **metadata):
    """
    Register ``loader`` (no-argument callable returning dataset dicts) as ``name`` with
    ``metadata``, unless ``name`` is already registered with the same ``spec`` (a hashable
    description of the arguments). Returns True if it registered.
    """
    if not isinstance(name, str) or not name:
        raise DetpreError(f"data set name must be a non-empty string, got {name!r}")
    spec = tuple(spec)
    if name in DatasetCatalog.list():
        previous = MetadataCatalog.get(name).get(_SPEC_KEY, None)
        if previous == spec:
            return False
        if previous is None:
            raise DetpreError(
                f"data set {name!r} is already registered (by detectron2 or other code); "
                "choose another name for it in the config")
        raise DetpreError(
            f"data set {name!r} is already registered with {previous}, now asked for {spec}; "
            "give each data set its own name")
    if name in MetadataCatalog.list() and MetadataCatalog.get(name).get(_SPEC_KEY, None):
        MetadataCatalog.remove(name)  # stale: its DatasetCatalog entry was removed
    DatasetCatalog.register(name, loader)
    MetadataCatalog.get(name).set(**metadata, **{_SPEC_KEY: spec})
    return True
