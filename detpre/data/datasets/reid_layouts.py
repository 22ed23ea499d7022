"""
Re-ID data sets read as they are downloaded, one ``ReIDLayout`` per release: which files mark it,
where its images and labels are, and which evaluation protocol its test splits use.

A layout returns ``(path, pid, camid)`` tuples for training and ``(path, pid, camid, reid_split)``
for each test split; ``reid.py`` turns them into dataset dicts. The root given in the config may
be the release folder itself or the folder it was unpacked into (``datasets/msmt17`` holding
``MSMT17_V1/``). A wrong or partial layout raises ``LayoutError`` naming the missing file and the
expected tree.
"""
import os
import re
import xml.etree.ElementTree as ET

__all__ = ["LayoutError", "ReIDLayout", "LAYOUTS", "get_layout", "detect_layout",
           "parse_reid_name", "scan_reid_folder"]

_NAME = re.compile(r"^(-?\d+)_c(\d+)")
_EXTS = (".jpg", ".jpeg", ".png", ".bmp")
_DOC = "docs/methods/spcl.md"


class LayoutError(FileNotFoundError):
    """A re-ID root that does not hold the files its layout needs."""


def parse_reid_name(fname):
    """``0002_c1s1_000451_03.jpg`` -> (2, 1); ``-1_c3s2_...`` -> (-1, 3). None if not re-ID named."""
    m = _NAME.match(os.path.basename(fname))
    return (int(m.group(1)), int(m.group(2))) if m else None


def scan_reid_folder(root, folder, help_text):
    """[(path, pid, camid)] of the ``PID_cCAM...`` images in ``root/folder``, junk (-1) left out."""
    d = os.path.join(root, folder)
    if not os.path.isdir(d):
        raise LayoutError(f"re-ID folder {d} does not exist; {help_text}")
    out = []
    for f in sorted(os.listdir(d)):
        if not f.lower().endswith(_EXTS):
            continue
        parsed = parse_reid_name(f)
        if parsed is None:
            raise ValueError(f"{os.path.join(d, f)}: name is not PID_cCAM... ({help_text}); "
                             "move it out of the folder")
        if parsed[0] != -1:
            out.append((os.path.join(d, f), parsed[0], parsed[1]))
    if not out:
        raise ValueError(f"re-ID folder {d} holds no usable image; {help_text}")
    return out


def _read_lines(path, help_text):
    if not os.path.isfile(path):
        raise LayoutError(f"re-ID list file {path} does not exist; {help_text}")
    with open(path) as f:
        rows = [(i + 1, line.split()) for i, line in enumerate(f)]
    rows = [(n, r) for n, r in rows if r]
    if not rows:
        raise ValueError(f"re-ID list file {path} is empty; {help_text}")
    return rows


def _bad_line(path, lineno, expected, help_text):
    return ValueError(f"{path}:{lineno}: expected {expected}; {help_text}")


def _first_exists(items, list_file, help_text):
    """The first listed image must exist: catches an image folder that does not match the lists."""
    if items and not os.path.isfile(items[0][0]):
        raise LayoutError(f"{items[0][0]} (listed in {list_file}) does not exist; {help_text}")
    return items


class ReIDLayout:
    """One release's layout. Subclasses set the class fields and ``train`` / ``test``."""

    name = ""
    aliases = ()
    subdirs = ()        # folders the download unpacks to, looked for under the given root
    required = ()       # paths (relative to the release folder) that identify the layout
    tree = ""           # the expected tree, quoted in errors
    test_splits = ("test",)
    protocol = "market"  # the ``reid`` evaluator's protocol for the test splits

    def __init__(self, option=""):
        self.option = option

    @property
    def help(self):
        return f"expected the {self.name} layout {self.tree} (see {_DOC})"

    def _candidates(self, root):
        return [root] + [os.path.join(root, s) for s in self.subdirs]

    def matches(self, root):
        return all(os.path.exists(os.path.join(root, r)) for r in self.required)

    def find(self, root):
        """The release folder under ``root``, or None."""
        return next((c for c in self._candidates(root) if self.matches(c)), None)

    def best(self, root):
        """(candidate folder holding the most marker files, first marker missing there or None)."""
        cands = [c for c in self._candidates(root) if os.path.isdir(c)] or [root]
        found = [c for c in cands if self.matches(c)]
        if found:
            return found[0], None
        best = max(cands, key=lambda c: sum(os.path.exists(os.path.join(c, r))
                                            for r in self.required))
        return best, next((os.path.join(best, r) for r in self.required
                           if not os.path.exists(os.path.join(best, r))), best)

    def resolve(self, root):
        """The release folder: the matching candidate, else the closest one (its loaders then
        name what is missing, so a train-only folder still serves as a source domain)."""
        return self.best(root)[0]

    def train(self, root):
        raise NotImplementedError

    def test(self, root, split):
        raise NotImplementedError


class MarketLayout(ReIDLayout):
    """Market-1501 / DukeMTMC-reID / PersonX subsets: three folders of ``PID_cCAM...`` images.
    Distractors (id 0) are gallery-only, junk (-1) is dropped, as Market's protocol does."""

    name = "market1501"
    aliases = ("market",)
    subdirs = ("Market-1501-v15.09.15", "Market-1501")
    required = ("bounding_box_train", "query", "bounding_box_test")
    tree = "ROOT/{bounding_box_train,query,bounding_box_test}/PID_cCAM*.jpg"

    def train(self, root):
        return [x for x in scan_reid_folder(root, "bounding_box_train", self.help) if x[1] > 0]

    def test(self, root, split):
        return [x + (s,) for s, folder in (("query", "query"), ("gallery", "bounding_box_test"))
                for x in scan_reid_folder(root, folder, self.help)]


class DukeLayout(MarketLayout):
    name = "dukemtmc"
    aliases = ("duke", "dukemtmcreid")
    subdirs = ("DukeMTMC-reID",)


class MSMT17Layout(ReIDLayout):
    """MSMT17 V1 (train/, test/) or V2 (mask_train_v2/, mask_test_v2/) with its list files
    ``DIR/NAME PID``; the camera is the third field of ``PID_INDEX_CAM_...jpg``.
    Training = list_train + list_val, as SpCL."""

    name = "msmt17"
    aliases = ("msmt",)
    subdirs = ("MSMT17_V1", "MSMT17_V2", "MSMT17")
    required = ("list_train.txt", "list_val.txt", "list_query.txt", "list_gallery.txt")
    tree = ("ROOT/{list_train,list_val,list_query,list_gallery}.txt + ROOT/{train,test}/ (V1) "
            "or ROOT/{mask_train_v2,mask_test_v2}/ (V2)")
    _DIRS = (("train", "test"), ("mask_train_v2", "mask_test_v2"))

    def _image_dirs(self, root):
        for dirs in self._DIRS:
            if all(os.path.isdir(os.path.join(root, d)) for d in dirs):
                return dirs
        raise LayoutError(f"{os.path.join(root, 'train')} does not exist (nor the V2 "
                          f"{os.path.join(root, 'mask_train_v2')}); {self.help}")

    def _list(self, root, list_name, image_dir):
        path = os.path.join(root, list_name)
        out = []
        for lineno, row in _read_lines(path, self.help):
            parts = os.path.basename(row[0]).split("_")
            if len(row) != 2 or len(parts) < 3 or not row[1].lstrip("-").isdigit() \
                    or not parts[2].isdigit():
                raise _bad_line(path, lineno, "'PID/PID_INDEX_CAM_....jpg PID'", self.help)
            out.append((os.path.join(root, image_dir, row[0]), int(row[1]), int(parts[2])))
        return _first_exists(out, path, self.help)

    def train(self, root):
        d = self._image_dirs(root)[0]
        return self._list(root, "list_train.txt", d) + self._list(root, "list_val.txt", d)

    def test(self, root, split):
        d = self._image_dirs(root)[1]
        return [x + (s,) for s in ("query", "gallery")
                for x in self._list(root, f"list_{s}.txt", d)]


class PersonXLayout(MarketLayout):
    """PersonX: the Market-style ``PersonX/`` folder (SpCL's release), or the full ``PersonX_v1/``
    whose numbered subsets ``1/ .. 6/`` are each Market-style. ``"personx:4,5,6"`` picks subsets
    (default: all present). Cameras of subset k become ``100 k + cam`` so they stay distinct."""

    name = "personx"
    aliases = ()
    subdirs = ("PersonX", "PersonX_v1")
    tree = ("ROOT/{bounding_box_train,query,bounding_box_test}/ or ROOT/<k>/{bounding_box_train,"
            "query,bounding_box_test}/ for numbered subsets k")

    def _subsets(self, root):
        if not os.path.isdir(root):
            return []
        present = sorted((int(d) for d in os.listdir(root) if d.isdigit()
                          and super(PersonXLayout, self).matches(os.path.join(root, d))))
        if not self.option:
            return present
        wanted = [int(k) for k in self.option.split(",") if k.strip()]
        missing = [k for k in wanted if k not in present]
        if missing:
            raise LayoutError(f"PersonX subset folder {os.path.join(root, str(missing[0]))} "
                              f"does not exist or is incomplete; {self.help}")
        return wanted

    def matches(self, root):
        return super().matches(root) or bool(self._subsets(root))

    def _merge(self, root, fn):
        subsets = self._subsets(root) if not super().matches(root) else []
        if not subsets:
            return fn(root)
        return [(x[0], x[1], 100 * k + x[2]) + tuple(x[3:])
                for k in subsets for x in fn(os.path.join(root, str(k)))]

    def train(self, root):
        return self._merge(root, super().train)

    def test(self, root, split):
        return self._merge(root, lambda r: super(PersonXLayout, self).test(r, split))


class VeRiLayout(ReIDLayout):
    """VeRi-776: image_{train,query,test}/ listed by name_{train,query,test}.txt; id and camera
    from ``VID_cCAM_FRAME_N.jpg``. Same-id same-camera gallery images are excluded (VeRi's
    protocol, as Market's)."""

    name = "veri776"
    aliases = ("veri",)
    subdirs = ("VeRi", "VeRi_with_plate", "VeRi-776")
    required = ("name_train.txt", "name_query.txt", "name_test.txt",
                "image_train", "image_query", "image_test")
    tree = "ROOT/name_{train,query,test}.txt + ROOT/image_{train,query,test}/VID_cCAM_*.jpg"

    def _list(self, root, split):
        path = os.path.join(root, f"name_{split}.txt")
        out = []
        for lineno, row in _read_lines(path, self.help):
            parsed = parse_reid_name(row[0])
            if parsed is None:
                raise _bad_line(path, lineno, "an image name 'VID_cCAM_....jpg'", self.help)
            out.append((os.path.join(root, f"image_{split}", row[0]),) + parsed)
        return _first_exists(out, path, self.help)

    def train(self, root):
        return self._list(root, "train")

    def test(self, root, split):
        return [x + ("query",) for x in self._list(root, "query")] + \
            [x + ("gallery",) for x in self._list(root, "test")]


class VehicleIDLayout(ReIDLayout):
    """VehicleID: image/ and train_test_split/{train_list,test_list_SIZE}.txt (``NAME VID`` lines,
    NAME without .jpg). No cameras (camid 0). Test splits ``test_800/1600/2400`` hold every
    image of their identities; the ``vehicleid`` protocol draws the gallery (one image per
    identity, 10 times)."""

    name = "vehicleid"
    aliases = ()
    subdirs = ("VehicleID_V1.0", "VehicleID")
    required = ("train_test_split/train_list.txt", "image")
    tree = "ROOT/image/NAME.jpg + ROOT/train_test_split/{train_list,test_list_800,...}.txt"
    test_splits = ("test_800", "test_1600", "test_2400")
    protocol = "vehicleid"

    def _list(self, root, list_name):
        path = os.path.join(root, "train_test_split", list_name)
        out = []
        for lineno, row in _read_lines(path, self.help):
            if len(row) != 2 or not row[1].isdigit():
                raise _bad_line(path, lineno, "'IMAGE_NAME VEHICLE_ID'", self.help)
            name = row[0] if row[0].lower().endswith(_EXTS) else row[0] + ".jpg"
            out.append((os.path.join(root, "image", name), int(row[1]), 0))
        return _first_exists(out, path, self.help)

    def train(self, root):
        return self._list(root, "train_list.txt")

    def test(self, root, split):
        size = split.rsplit("_", 1)[1]
        return [x + ("test",) for x in self._list(root, f"test_list_{size}.txt")]


_VERI_TEST = ("image_query", "image_test", "name_query.txt", "name_test.txt")


class VehicleXLayout(ReIDLayout):
    """VehicleX (AIC20_ReID_Simulation): image_train/ only (a source domain), labels from
    train_label.xml (``imageName``, ``vehicleID``, ``cameraID`` "c006") or, without it, from
    ``VID_cCAM...`` names."""

    name = "vehiclex"
    aliases = ("aic20_simulation",)
    subdirs = ("AIC20_ReID_Simulation", os.path.join("AIC20_track2", "AIC20_ReID_Simulation"))
    required = ("image_train",)
    tree = "ROOT/image_train/ + ROOT/train_label.xml (or VID_cCAM_*.jpg names)"
    test_splits = ()

    def matches(self, root):  # VeRi has image_train/ too
        return super().matches(root) and not any(
            os.path.exists(os.path.join(root, f)) for f in _VERI_TEST)

    def train(self, root):
        xml = os.path.join(root, "train_label.xml")
        if not os.path.isfile(xml):
            return scan_reid_folder(root, "image_train", self.help)
        with open(xml, "rb") as f:  # declared gb2312, content ASCII: parse as text
            text = f.read().decode("utf-8", "replace")
        try:
            items = ET.fromstring(re.sub(r"^\s*<\?xml[^>]*\?>", "", text)).iter("Item")
            out = [(os.path.join(root, "image_train", it.attrib["imageName"]),
                    int(it.attrib["vehicleID"]), int(it.attrib["cameraID"].lstrip("cC")))
                   for it in items]
        except (ET.ParseError, KeyError, ValueError) as e:
            raise ValueError(f"{xml}: cannot read <Item imageName= vehicleID= cameraID=> "
                             f"entries ({e}); {self.help}") from e
        if not out:
            raise ValueError(f"{xml} has no <Item> entry; {self.help}")
        return _first_exists(out, xml, self.help)


# detection order: the most specific marker files first
LAYOUTS = {c.name: c for c in (MSMT17Layout, VehicleIDLayout, VeRiLayout, VehicleXLayout,
                               MarketLayout, DukeLayout, PersonXLayout)}
_ALIASES = {a: c.name for c in LAYOUTS.values() for a in c.aliases}


def get_layout(spec):
    """``"msmt17"``, ``"personx:4,5,6"`` (option after the colon) -> a ReIDLayout."""
    name, _, option = spec.partition(":")
    key = _ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in LAYOUTS:
        raise ValueError(f"unknown re-ID layout {spec!r}; known: {sorted(LAYOUTS)} "
                         f"(leave it out to detect it from the files)")
    return LAYOUTS[key](option.strip())


def _present(layout, root):
    """How many of the layout's marker files the best candidate folder holds."""
    return max(sum(os.path.exists(os.path.join(c, r)) for r in layout.required)
               for c in layout._candidates(root))


def detect_layout(root, strict=True):
    """
    The layout whose marker files are under ``root`` (or a release folder in it). With
    ``strict``, a partial layout raises its ``LayoutError`` (naming the missing file) and no
    marker at all raises one listing every layout; otherwise None.
    """
    layouts = [cls() for cls in LAYOUTS.values()]
    for layout in layouts:
        if layout.find(root) is not None:
            return layout
    if not strict:
        return None
    partial = max(layouts, key=lambda lay: _present(lay, root))  # first on ties: order above
    if _present(partial, root) > 0:
        missing = partial.best(root)[1]
        raise LayoutError(f"{missing} does not exist: {root} looks like a partial "
                          f"{partial.name} root; {partial.help}")
    trees = "\n".join(f"  {c.name}: {c.tree}" for c in LAYOUTS.values())
    what = "does not exist" if not os.path.isdir(root) else "holds no known re-ID layout"
    raise LayoutError(f"re-ID root {root} {what}; expected one of (see {_DOC}):\n{trees}\n"
                      "or name the layout: DATASETS.REID: [[name, root, layout]]")
