import cv2
import numpy as np
import pytest

from detpre.data.jigsaw import assemble_montage, fit_to_cell, montage_cells, split_point
from detpre.data.mappers.jigsaw import JigsawMapper


def _crop(h, w, seed):
    return np.random.default_rng(seed).integers(1, 255, size=(h, w, 3)).astype(np.uint8)


def _find(hay, needle):
    """All offsets where ``needle`` occurs in ``hay`` exactly."""
    H, W = hay.shape[:2]
    h, w = needle.shape[:2]
    return [(y, x) for y in range(H - h + 1) for x in range(W - w + 1)
            if np.array_equal(hay[y:y + h, x:x + w], needle)]


def test_split_point_and_cells_tile_the_montage():
    assert split_point(10, 60, 100) == (25, 50)  # clipped to [0.25, 0.5] * size
    assert split_point(30, 40, 100) == (30, 40)
    cells = montage_cells(100, 30, 40)
    cover = np.zeros((100, 100), int)
    for x1, y1, x2, y2 in cells:
        cover[y1:y2, x1:x2] += 1
    assert (cover == 1).all()
    assert cells.tolist() == [[0, 0, 40, 30], [40, 0, 100, 30],
                              [0, 30, 40, 100], [40, 30, 100, 100]]
    with pytest.raises(ValueError):
        split_point(1, 1, 100, (0.6, 0.5))


def test_fit_to_cell_pads_or_crops_never_resizes():
    rng = np.random.RandomState(0)
    small = _crop(5, 7, 0)
    canvas, box = fit_to_cell(small, 10, 12, fill=(0, 0, 0), rng=rng)
    x1, y1, x2, y2 = box
    assert (x2 - x1, y2 - y1) == (7, 5) and np.array_equal(canvas[y1:y2, x1:x2], small)
    mask = np.ones((10, 12), bool)
    mask[y1:y2, x1:x2] = False
    assert (canvas[mask] == 0).all()  # padding is the fill value
    big = _crop(20, 30, 1)
    canvas, box = fit_to_cell(big, 10, 12, fill=(0, 0, 0), rng=rng)
    assert box.tolist() == [0, 0, 12, 10] and len(_find(big, canvas)) == 1  # a window of it
    wide = _crop(4, 30, 2)  # too wide, too short: cropped along x, padded along y
    canvas, (x1, y1, x2, y2) = fit_to_cell(wide, 10, 12, fill=(0, 0, 0), rng=rng)
    assert (x2 - x1, y2 - y1) == (12, 4) and len(_find(wide, canvas[y1:y2, x1:x2])) == 1


def test_montage_places_each_sample_in_its_cell_unresized():
    crops = [_crop(20, 18, 0), _crop(10, 50, 1), _crop(60, 12, 2), _crop(40, 44, 3)]
    out, cells, content = assemble_montage(crops, 64, fill=(7, 7, 7), rng=np.random.RandomState(1))
    assert out.shape == (64, 64, 3)
    assert cells[0].tolist() == [0, 0, 18, 20]  # split at the top-left sample's size
    for crop, (x1, y1, x2, y2), (cx1, cy1, cx2, cy2) in zip(crops, cells, content):
        assert x1 <= cx1 < cx2 <= x2 and y1 <= cy1 < cy2 <= y2
        piece = out[cy1:cy2, cx1:cx2]
        assert piece.shape[0] == min(crop.shape[0], y2 - y1)
        assert piece.shape[1] == min(crop.shape[1], x2 - x1)
        assert len(_find(crop, piece)) == 1  # the sample's own pixels, at scale 1


def test_mapper_builds_montage_with_labels(tmp_path):
    imgs = []
    for i in range(3):
        im = _crop(80, 90, 10 + i)
        cv2.imwrite(str(tmp_path / f"{i}.png"), im[:, :, ::-1])  # stored BGR, read back RGB
        imgs.append(im)
    samples = {"images": [str(tmp_path / f"{i}.png") for i in range(3)] + ["noboxes.png"],
               "samples": [[0, 0, 0, 20, 20, 0], [0, 10, 10, 70, 20, 1],  # S, W
                           [1, 5, 5, 15, 60, 2], [2, 30, 30, 80, 75, 3],  # T, S
                           [1, 40, 40, 60, 62, 0]],                       # S
               "groups": ["S", "W", "T", "S", "S"]}
    mapper = JigsawMapper(samples=samples, size=64, fill=(1, 2, 3))
    np.random.seed(0)
    for i in range(6):
        out = mapper({"file_name": samples["images"][i % 3]})
        img = out["image"].permute(1, 2, 0).numpy()
        regions, labels = out["jigsaw_regions"].long(), out["jigsaw_labels"]
        assert img.shape == (64, 64, 3) and out["height"] == out["width"] == 64
        assert labels[1] == 1 and labels[2] == 2  # the only W and the only T sample
        assert set(labels[[0, 3]].tolist()) <= {0, 3}
        for (x1, y1, x2, y2), label in zip(out["jigsaw_content"].long().tolist(), labels.tolist()):
            piece = img[y1:y2, x1:x2]
            # the pixels of a sample with this label, at scale 1
            assert any(s[5] == label and len(_find(imgs[s[0]][s[2]:s[4], s[1]:s[3]], piece)) == 1
                       for s in samples["samples"])
        assert regions[0, 2] <= 32 and regions[0, 3] <= 32  # split within [0.25, 0.5] * 64
        slots = mapper.choose(samples["images"][i % 3])
        area = lambda k: (samples["samples"][k][3] - samples["samples"][k][1]) * (  # noqa: E731
            samples["samples"][k][4] - samples["samples"][k][2])
        assert area(slots[0]) <= area(slots[3])  # smaller S top-left, larger bottom-right
        own = {k for k, t in enumerate(samples["samples"]) if t[0] == i % 3}
        assert own & set(slots)  # the image in the stream gives one of its own samples
    with pytest.raises(KeyError, match="re-run tools/extract_jigsaw_samples.py"):
        mapper({"file_name": "other.png"})
    out = mapper({"file_name": "noboxes.png"})  # an image without samples: all from the pool
    assert out["image"].shape == (3, 64, 64)


def test_mapper_is_deterministic_under_seed(tmp_path):
    im = _crop(50, 50, 0)
    cv2.imwrite(str(tmp_path / "a.png"), im)
    samples = {"images": [str(tmp_path / "a.png")],
               "samples": [[0, 0, 0, 20, 20, 0], [0, 5, 5, 45, 15, 1], [0, 0, 0, 10, 40, 2],
                           [0, 10, 10, 40, 40, 1]], "groups": ["S", "W", "T", "S"]}
    mapper = JigsawMapper(samples=samples, size=32, fill=(0, 0, 0))
    np.random.seed(5)
    a = mapper({"file_name": str(tmp_path / "a.png")})
    np.random.seed(5)
    b = mapper({"file_name": str(tmp_path / "a.png")})
    assert (a["image"] == b["image"]).all() and (a["jigsaw_labels"] == b["jigsaw_labels"]).all()
