"""SpCL's batches as the official code draws them (github yxgeee/SpCL: ``RandomMultipleGallerySampler``
behind an ``IterLoader``, the target loader rebuilt on the pseudo-labelled set after every
clustering): 64 source images as 16 identities x 4 with the companions from the anchor's other
cameras, 64 target images P x K by the current pseudo-labels with every outlier a class of one
image, the loader following each clustering, and a resumed run drawing the same batches."""
import glob
import itertools
import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from _reid_miniatures import registered_reid_demo
from detectron2.data import DatasetCatalog, MetadataCatalog

from detpre.config import get_detpre_cfg
from detpre.data.samplers import IdentityBalancedSampler
from detpre.engine.spcl_hooks import ClusterRefresh
from detpre.modeling.memory import HybridMemory

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
T0 = 1000  # dataset index of the first target image


def _source(num_ids=40, num_cams=3):
    """(index, pid, cam): pid p has 2 + p % 5 images; every 7th pid is seen by one camera only."""
    out = []
    for p in range(num_ids):
        for j in range(2 + p % 5):
            out.append((len(out), p, 0 if p % 7 == 0 else j % num_cams))
    return out


def _target(n=300, num_cams=4):
    return [(T0 + j, j, j % num_cams) for j in range(n)]


def _clusters(n=300, size=5):
    return np.arange(n) // size


def _batches(sampler, n):
    """The first ``n`` per-process batches as index lists, checking the positions."""
    bs = sampler.batch_size
    stream = list(itertools.islice(iter(sampler), bs * n))
    return [[i for _, i in stream[bs * b: bs * (b + 1)]] for b in range(n)], [p for p, _ in stream]


def _check_groups(part, ident, cam, k=4):
    """``part`` is identities x k: consecutive groups of one identity, each identity once; the
    k - 1 companions come from the anchor's other cameras when it has any, else its other images,
    without replacement when there are at least k to pick from."""
    groups = [part[g:g + k] for g in range(0, len(part), k)]
    assert len({ident[g[0]] for g in groups}) == len(groups)
    for anchor, *rest in groups:
        assert all(ident[i] == ident[anchor] for i in rest)
        members = [i for i in ident if ident[i] == ident[anchor]]
        other_cams = [i for i in members if cam[i] != cam[anchor]]
        pool = other_cams or [i for i in members if i != anchor]
        assert set(rest) <= set(pool)
        if len(pool) >= k:
            assert len(set(rest)) == k - 1


def test_paper_batch_is_64_source_as_16_by_4_then_64_target_by_pseudo_label():
    src, tgt = _source(), _target()
    pid = {i: p for i, p, _ in src}
    cam = {i: c for i, _, c in src} | {i: c for i, _, c in tgt}
    labels = _clusters()
    s = IdentityBalancedSampler(src, tgt, 128, 4, seed=5, epoch_length=10)
    s.set_target_labels(labels)
    batches, positions = _batches(s, 12)
    assert positions == list(range(128 * 12))
    label = {i: int(labels[k]) for i, k, _ in tgt}
    for b in batches:
        assert len(b) == 128 and set(b[:64]) <= set(pid) and set(b[64:]) <= set(label)
        _check_groups(b[:64], pid, cam)  # 16 identities x 4, other cameras first
        _check_groups(b[64:], label, cam)  # 16 pseudo-identities x 4
    # the one-camera identities exist and were drawn (their companions: their other images)
    assert any(pid[i] % 7 == 0 for b in batches for i in b[:64])


def test_outliers_are_classes_of_one_image_as_the_official_pseudo_labelled_set():
    # 5 clusters of 4..6 images, 4 outliers with labels of their own, 3 un-clustered (-1)
    sizes = [4, 5, 6, 4, 5]
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(sizes)] + [[5, 6, 7, 8], [-1] * 3])
    tgt = _target(len(labels))
    # a pass: 4 images of each cluster + each outlier once = 27, here one batch (USL: target only)
    s = IdentityBalancedSampler([], tgt, 27, 4, seed=0)
    s.set_target_labels(labels)
    slot = {i: k for i, k, _ in tgt}
    for b in _batches(s, 6)[0]:
        outliers = [slot[i] for i in b if slot[i] >= sum(sizes)]
        assert sorted(outliers) == list(range(sum(sizes), len(labels)))  # each exactly once
        clustered = [labels[slot[i]] for i in b if slot[i] < sum(sizes)]
        runs = [clustered[g:g + 4] for g in range(0, len(clustered), 4)]
        assert sorted(r[0] for r in runs) == list(range(5)) and all(len(set(r)) == 1 for r in runs)


def test_before_the_first_clustering_every_target_image_is_its_own_class():
    s = IdentityBalancedSampler([], _target(64), 32, 4, seed=1)
    b = _batches(s, 2)[0]
    assert sorted(b[0] + b[1]) == [T0 + j for j in range(64)]  # one pass = a permutation


def test_resume_anywhere_draws_the_uninterrupted_batches():
    s = IdentityBalancedSampler(_source(), _target(), 128, 4, seed=2, epoch_length=4)
    s.set_target_labels(_clusters())
    full, pos = _batches(s, 10)
    for start in (3, 4, 7):  # mid-epoch, at an epoch, later
        r = IdentityBalancedSampler(_source(), _target(), 128, 4, seed=2, epoch_length=4)
        r.set_target_labels(_clusters())
        r.set_start_iter(start, 128)
        stream = list(itertools.islice(iter(r), 128 * (10 - start)))
        assert [p for p, _ in stream] == pos[128 * start:]
        assert [i for _, i in stream] == [i for b in full[start:] for i in b]
    # each epoch restarts both streams: epochs differ, and a new epoch is not the stream's tail
    assert full[0] != full[4]


def test_processes_split_the_same_iteration_batch_and_workers_get_whole_batches():
    one = IdentityBalancedSampler(_source(), _target(), 128, 4, seed=3, epoch_length=5)
    full = _batches(one, 6)[0]
    for rank in (0, 1):
        s = IdentityBalancedSampler(_source(), _target(), 64, 4, seed=3, epoch_length=5)
        s._rank, s._world = rank, 2
        batches, positions = _batches(s, 6)
        for t, b in enumerate(batches):
            assert b == full[t][32 * rank:32 * rank + 32] + full[t][64 + 32 * rank:96 + 32 * rank]
            assert positions[64 * t: 64 * t + 64] == list(range((2 * t + rank) * 64, (2 * t + rank + 1) * 64))
    # 2 loader workers: samples of two consecutive batches interleave, each worker batching one
    w = IdentityBalancedSampler(_source(), _target(), 128, 4, seed=3, epoch_length=5, num_workers=2)
    stream = [i for _, i in itertools.islice(iter(w), 128 * 6)]
    for pair in range(3):
        chunk = stream[256 * pair: 256 * (pair + 1)]
        assert chunk[0::2] == full[2 * pair] and chunk[1::2] == full[2 * pair + 1]


def _register(tmp_path, name, dicts):
    for d in dicts:
        (tmp_path / os.path.basename(d["file_name"])).write_bytes(b"")  # the loader checks files
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    DatasetCatalog.register(name, lambda: [dict(d) for d in dicts])


# torch's DataLoader forks its worker, as in training; the test process has threads by then
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded, use of fork:DeprecationWarning")
@pytest.mark.parametrize("workers", [0, 1])
def test_loader_follows_each_clustering_from_the_next_iteration(tmp_path, workers):
    """ClusterRefresh hands the sampler the memory's new labels and restarts the loader, so the
    batches drawn ahead with the old labels (worker prefetch) are never used."""
    from detpre.data.build import build_train_loader

    def dicts(name, items):
        return [{"file_name": str(tmp_path / f"{name}_{k}.jpg"), "reid_dataset": name, "pid": p,
                 "camid": c, "index": k, "image_id": k, "height": 8, "width": 4}
                for k, (p, c) in enumerate(items)]

    src = dicts("_b_src", [(p, j % 2) for p in range(6) for j in range(3)])
    tgt = dicts("_b_tgt", [(-1, j % 3) for j in range(40)])
    _register(tmp_path, "_b_src", src)
    _register(tmp_path, "_b_tgt", tgt)
    try:
        cfg = get_detpre_cfg()
        cfg.DATASETS.TRAIN = ("_b_src", "_b_tgt")
        cfg.MODEL.SPCL.SOURCE_DATASETS = ["_b_src"]
        cfg.DATALOADER.SAMPLER_TRAIN = "IdentityBalancedSampler"
        cfg.DATALOADER.NUM_WORKERS, cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS = workers, False
        cfg.SOLVER.IMS_PER_BATCH, cfg.MODEL.SPCL.NUM_INSTANCES, cfg.SEED = 16, 4, 1
        cfg.MODEL.SPCL.CLUSTER_PERIOD = 3
        old, new = np.arange(40) // 4, (np.arange(40) * 7) % 10  # clusters of 4 images
        memory = HybridMemory(4, num_source=6, num_target=40)

        def run(labels_at_start, restart_at=None):
            loader = build_train_loader(cfg, mapper=lambda d: d)
            step = SimpleNamespace(data_loader=loader, _data_loader_iter=iter(loader))
            hook = ClusterRefresh(layout=None, mapper=lambda d: d, period=3)
            hook.trainer = SimpleNamespace(_trainer=step, iter=0)
            memory.set_target_labels(torch.as_tensor(labels_at_start))
            hook.follow_labels(memory, 0)  # before_train
            out = []
            for it in range(6):
                out.append(next(step._data_loader_iter))
                if it + 1 == restart_at:  # after_step of the last iteration of the epoch
                    memory.set_target_labels(torch.as_tensor(new))
                    hook.follow_labels(memory, it + 1)
            return [[(d["reid_dataset"], d["index"]) for d in b] for b in out]

        changed = run(old, restart_at=3)
        for it, b in enumerate(changed):
            assert [n for n, _ in b] == ["_b_src"] * 8 + ["_b_tgt"] * 8
            labels = old if it < 3 else new
            groups = [[labels[k] for _, k in b[g:g + 4]] for g in (8, 12)]
            assert all(len(set(g)) == 1 for g in groups) and groups[0][0] != groups[1][0]
        # from iteration 3 on: what a run started (or resumed) with the new labels draws
        assert changed[3:] == run(new)[3:]
        assert changed[:3] == run(old)[:3] and changed[3:] != run(old)[3:]
    finally:
        for n in ("_b_src", "_b_tgt"):
            DatasetCatalog.remove(n)


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "configs", "spcl", "spcl_*.yaml")))
                         + [os.path.join(REPO, "configs", "demo", "spcl_uda_R18_tiny.yaml")])
def test_every_spcl_config_resolves_to_the_balanced_batches(path):
    cfg = get_detpre_cfg(path)
    c = cfg.MODEL.SPCL
    assert cfg.DATALOADER.SAMPLER_TRAIN == "IdentityBalancedSampler" and c.NUM_INSTANCES == 4
    uda = bool(c.SOURCE_DATASETS)
    demo = "/demo/" in path
    assert cfg.SOLVER.IMS_PER_BATCH == ((48 if demo else 128) if uda else (32 if demo else 64))
    s = IdentityBalancedSampler(_source() if uda else [], _target(), cfg.SOLVER.IMS_PER_BATCH,
                                c.NUM_INSTANCES, seed=0, epoch_length=c.CLUSTER_PERIOD)
    s.set_target_labels(_clusters())
    n_src = cfg.SOLVER.IMS_PER_BATCH // 2 if uda else 0
    assert s.source_share == n_src  # 64 + 64 (demo: 24 + 24), USL: all target
    b = _batches(s, 1)[0][0]
    pid = {i: p for i, p, _ in _source()}
    cam = {i: c for i, _, c in _source()} | {i: c for i, _, c in _target()}
    label = {i: int(_clusters()[k]) for i, k, _ in _target()}
    assert set(b[:n_src]) <= set(pid) and set(b[n_src:]) <= set(label)
    if uda:
        _check_groups(b[:n_src], pid, cam)
    _check_groups(b[n_src:], label, cam)


def test_resumed_training_draws_the_batches_of_the_uninterrupted_run(tmp_path):
    """The real Trainer on the tiny re-ID demo, clustering every 2 iterations: resumed at
    iteration 3 (mid-epoch, from the checkpoint of iteration 2) it feeds the model the batches,
    and follows the clustering at iteration 4 with the batches, of the uninterrupted run."""
    from test_spcl import _tiny_cfg

    from detpre.engine.trainer import Trainer

    demo = registered_reid_demo(tmp_path)
    names = ("detpre_reid_demo_train", "detpre_reid_demo_test")

    def train(out, resume_from=None):
        cfg = _tiny_cfg(tmp_path, demo)
        cfg.MODEL.SPCL.CLUSTER_PERIOD, cfg.SOLVER.MAX_ITER, cfg.SOLVER.CHECKPOINT_PERIOD = 2, 6, 3
        cfg.DATALOADER.SAMPLER_TRAIN = "IdentityBalancedSampler"  # the USL demo's are random
        cfg.OUTPUT_DIR = str(tmp_path / out)
        if resume_from:
            os.makedirs(cfg.OUTPUT_DIR)
            shutil.copy(resume_from, cfg.OUTPUT_DIR)
            with open(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint"), "w") as f:
                f.write(os.path.basename(resume_from))
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=bool(resume_from))
        seen, forward = [], trainer.model.forward

        def recording(batch):
            seen.append((trainer.iter, [b["memory_index"] for b in batch]))
            return forward(batch)

        trainer.model.forward = recording
        trainer.train()
        return dict(seen), trainer.model.memory.labels.clone()

    try:
        full, labels = train("full")
        assert sorted(full) == list(range(6))
        resumed, labels_resumed = train("resumed", str(tmp_path / "full" / "model_0000002.pth"))
        assert sorted(resumed) == [3, 4, 5]
        assert all(resumed[it] == full[it] for it in (3, 4, 5))
        assert torch.equal(labels, labels_resumed)
    finally:
        for name in names:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
