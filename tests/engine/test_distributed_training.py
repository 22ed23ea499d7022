"""
A real 2-process run on CPU: ``torchrun --nproc_per_node 2`` (gloo) starts ``tools/train_net.py``
(through tests/_dist_run.py, which adds a probe hook) on the tiny SoCo, Fast-MoCo and SpCL
configs for 4 iterations, then SoCo again killed before iteration 2 and resumed.

Per run: the processes trained under DDP and end with identical parameters (momentum targets
included) and hybrid memory; each iteration's two shards are disjoint and two iterations cover
the 8-image epoch; SoCo's batch, LR and iterations follow SOLVER.REFERENCE_WORLD_SIZE; the
resumed run continues on both processes from the checkpoint with the uninterrupted run's data
and ends with its weights.
"""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from detpre.data.datasets.reid_demo import generate_reid_demo
from detpre.data.proposals import write_proposal_file

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
N_IMAGES, WORLD, ITERS = 8, 2, 4
COMMON = ["SOLVER.IMS_PER_BATCH", "4", "SOLVER.MAX_ITER", str(ITERS), "SOLVER.CHECKPOINT_PERIOD",
          "2", "SOLVER.WARMUP_ITERS", "1", "SEED", "7", "DATALOADER.NUM_WORKERS", "0",
          "MODEL.RESNETS.DEPTH", "18"]


def _images(root):
    rng = np.random.RandomState(0)
    os.makedirs(root)
    ids, boxes = [], []
    for i in range(N_IMAGES):
        Image.fromarray(rng.randint(0, 256, (72, 88, 3), dtype=np.uint8)).save(f"{root}/im{i}.png")
        ids.append(f"im{i}.png")  # DATASETS.FOLDER's image_id: the path relative to the folder
        x0, y0 = rng.uniform(0, 40, size=(2, 5))
        boxes.append(np.stack([x0, y0, x0 + 30, y0 + 25], axis=1))
    return ids, boxes


def _jobs(tmp):
    images = str(tmp / "images")
    props = str(tmp / "props.pkl")
    write_proposal_file(props, *_images(images))
    reid = str(tmp / "reid")
    generate_reid_demo(reid, num_train_ids=2, num_test_ids=2, num_cameras=2, views_per_camera=2,
                       num_distractors=1, num_junk=1, size=32)
    # every job registers the re-ID demo: the same root for all (one process runs them all)
    common = COMMON + ["DATASETS.REID_DEMO_ROOT", reid]
    folder = ["DATASETS.FOLDER", str([["dist_test_images", images]]),
              "DATASETS.TRAIN", "('dist_test_images',)"]
    # SoCo's recipe for one process (2 images per step, 8 iterations), scaled to 2 processes
    soco = ["--config-file", "configs/demo/soco_R18_FPN_tiny.yaml", *common, *folder,
            "DATASETS.PROPOSAL_FILES_TRAIN", str((props,)),
            "SOLVER.REFERENCE_WORLD_SIZE", "1", "SOLVER.IMS_PER_BATCH", "2",
            "SOLVER.MAX_ITER", str(2 * ITERS), "SOLVER.CHECKPOINT_PERIOD", "4",
            "SOLVER.WARMUP_ITERS", "2", "SOLVER.BASE_LR", "0.5",
            "INPUT.SOCO.VIEW_SIZE", "64", "INPUT.SOCO.SMALL_VIEW_SIZE", "32",
            "MODEL.SOCO.CANONICAL_BOX_SIZE", "24", "MODEL.SOCO.HIDDEN_DIM", "32",
            "MODEL.SOCO.PROJ_DIM", "16", "DETPRE.HOOKS", "['MomentumUpdate','DistProbe']"]
    fastmoco = ["--config-file", "configs/demo/fastmoco_R18_tiny.yaml", *common, *folder,
                "INPUT.TWO_VIEW.SIZE", "64", "MODEL.FASTMOCO.HIDDEN_DIM", "32",
                "MODEL.FASTMOCO.PROJ_DIM", "16", "DETPRE.HOOKS", "['MomentumUpdate','DistProbe']"]
    spcl = ["--config-file", "configs/demo/spcl_usl_R18_tiny.yaml", *common, "DATASETS.TEST", "()",
            "MODEL.SPCL.NUM_TARGET_INSTANCES", "0", "MODEL.SPCL.CLUSTER_PERIOD", "1",
            "MODEL.SPCL.K1", "3", "MODEL.SPCL.K2", "2", "MODEL.SPCL.MIN_SAMPLES", "2",
            "MODEL.SPCL.EXTRACT_BATCH_SIZE", "8", "INPUT.REID.SIZE", "(32, 32)",
            "SOLVER.STEPS", "()", "DETPRE.HOOKS", "['ClusterRefresh','DistProbe']"]
    out = {name: str(tmp / name) for name in ("soco", "fastmoco", "spcl", "soco_killed")}
    first = [{"argv": soco + ["OUTPUT_DIR", out["soco"]]},
             {"argv": fastmoco + ["OUTPUT_DIR", out["fastmoco"]]},
             {"argv": spcl + ["OUTPUT_DIR", out["spcl"]]},
             {"argv": soco + ["OUTPUT_DIR", out["soco_killed"]], "kill_at": 2}]
    resume = [{"argv": ["--resume"] + soco + ["OUTPUT_DIR", out["soco_killed"]]}]
    return out, first, resume


def _torchrun(tmp, jobs, name):
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(jobs))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO, DETPRE_TEST_THREADS="1")
    env.pop("DETPRE_TEST_KILL_AT", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           str(WORLD), os.path.join(REPO, "tests", "_dist_run.py"), str(path)]
    t = time.time()
    proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=240)
    (tmp / f"{name}.log").write_text(proc.stdout)
    print(f"{name}: {time.time() - t:.1f} s", file=sys.stderr)
    return proc


def _probes(out, start):
    found = [torch.load(os.path.join(out, f"probe_{r}_{start}.pt"), weights_only=False)
             for r in range(WORLD)]
    assert [p["rank"] for p in found] == list(range(WORLD))
    for p in found:
        assert p["ddp"] == "DistributedDataParallel"
        assert (p["world"], p["local_size"], p["local_rank"]) == (WORLD, WORLD, p["rank"])
    return found


def _assert_same_state(probes, keys=None):
    a, b = probes[0]["state"], probes[1]["state"]
    assert set(a) == set(b) and (keys is None or keys <= set(a))
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs between the processes"


def _assert_shards(probes, iters):
    """Per iteration 2 images per process, disjoint; every 2 iterations the whole data set."""
    files = [p["files"] for p in probes]
    assert all(len(f) == len(iters) for f in files)
    for f in files:
        assert all(len(batch) == 2 for batch in f)
    for i in range(0, len(iters), 2):
        epoch = [name for f in files for batch in f[i:i + 2] for name in batch]
        assert len(epoch) == N_IMAGES and len(set(epoch)) == N_IMAGES, epoch


def _final(out):
    return torch.load(os.path.join(out, "model_final.pth"), weights_only=False)["model"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    out, first, resume = _jobs(tmp)
    proc = _torchrun(tmp, first, "first")
    # the last job kills both processes: torchrun reports the failure
    assert proc.returncode != 0 and os.path.isfile(os.path.join(out["soco_killed"],
                                                                "probe_0_0.pt")), proc.stdout[-3000:]
    killed = sorted(os.listdir(out["soco_killed"]))
    proc2 = _torchrun(tmp, resume, "resume")
    assert proc2.returncode == 0, proc2.stdout[-3000:]
    return out, killed


@pytest.mark.parametrize("name", ["soco", "fastmoco", "spcl"])
def test_processes_train_one_model_on_disjoint_shards(runs, name):
    out, _ = runs
    probes = _probes(out[name], 0)
    assert all(p["end"] == ITERS for p in probes)
    _assert_shards(probes, range(ITERS))
    keys = {"memory.features", "memory.labels"} if name == "spcl" else None
    _assert_same_state(probes, keys)
    state = probes[0]["state"]
    if name != "spcl":  # the momentum target exists, agrees, and moved away from the online net
        target = [k for k in state if k.startswith("target.")]
        assert target and any(not torch.equal(state[k], state[k[len("target."):]]) for k in target)
    else:
        assert (state["memory.features"].norm(dim=1) - 1).abs().max() < 1e-5
    final = _final(out[name])
    for k, v in state.items():
        assert torch.equal(final[k], v), k


def test_reference_world_size_scales_the_soco_recipe(runs):
    out, _ = runs
    probes = _probes(out["soco"], 0)
    # 2 images x 8 iterations on 1 process -> 4 images x 4 iterations on 2; LR 0.5 -> 1.0
    assert all(p["ims_per_batch"] == 4 and p["end"] == ITERS for p in probes)
    assert all(p["initial_lr"] == pytest.approx(1.0) for p in probes)


def test_resume_after_a_kill_continues_both_processes(runs):
    out, killed = runs
    assert "model_0000001.pth" in killed and "model_final.pth" not in killed
    before = _probes(out["soco_killed"], 0)
    assert all(p["end"] == 2 for p in before)
    resumed = _probes(out["soco_killed"], 2)
    assert all(p["end"] == ITERS for p in resumed)
    _assert_same_state(resumed)
    full = _probes(out["soco"], 0)
    for r in range(WORLD):
        # the same data, process by process, as the uninterrupted run, and the same weights
        assert before[r]["files"] == full[r]["files"][:2]
        assert resumed[r]["files"] == full[r]["files"][2:]
        for k, v in full[r]["state"].items():
            assert torch.equal(resumed[r]["state"][k], v), k
