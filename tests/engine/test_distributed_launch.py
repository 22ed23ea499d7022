"""
How train_net.py's processes start: torchrun and Slurm detected from their variables; a
simulated 2-node srun step joined into detectron2's global and local process groups; the CPU
spawn with gloo; the world-size scaling of the recipes (SOLVER.REFERENCE_WORLD_SIZE); each
recipe's reference batch stated once.
"""
import glob
import itertools
import json
import os
import re
import socket
import subprocess
import sys
from types import SimpleNamespace

import pytest
from torch import nn

from detpre import _compat
from detpre.config import get_detpre_cfg
from detpre.engine import Trainer
from detpre.engine.launch import detect_environment, first_slurm_host, launch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TORCHRUN = {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4",
            "GROUP_RANK": "1", "MASTER_ADDR": "node0", "MASTER_PORT": "29400",
            "TORCHELASTIC_RUN_ID": "x"}
SLURM = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_NODEID": "1",
         "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "123456"}


def test_torchrun_is_detected_and_joined_through_env():
    env = detect_environment(TORCHRUN)
    assert (env.launcher, env.rank, env.world_size, env.local_rank, env.machine) == \
        ("torchrun", 5, 8, 1, "1")
    assert env.init_method == "env://"
    # torchrun's variables are per process: they win inside an srun step too
    assert detect_environment({**SLURM, **TORCHRUN}).launcher == "torchrun"
    # without GROUP_RANK (other env:// launchers) the machine follows from LOCAL_WORLD_SIZE
    assert detect_environment({**TORCHRUN, "GROUP_RANK": ""}).machine == "1"


def test_slurm_is_detected_with_the_first_node_as_rendezvous():
    env = detect_environment(SLURM)
    assert (env.launcher, env.rank, env.world_size, env.local_rank, env.machine) == \
        ("slurm", 5, 8, 1, "1")
    assert env.init_method == "tcp://gpu07:" + str(20000 + 123456 % 20000)
    # a step's own task count and node list win over the job's; MASTER_* override
    step = detect_environment({**SLURM, "SLURM_STEP_NUM_TASKS": "4", "SLURM_STEP_NODELIST": "a1,b2",
                               "MASTER_PORT": "1234"})
    assert (step.world_size, step.init_method) == (4, "tcp://a1:1234")
    assert detect_environment({**SLURM, "MASTER_ADDR": "10.0.0.1"}).master_addr == "10.0.0.1"


def test_single_process_and_forced_launchers():
    assert detect_environment({}) is None
    assert detect_environment({**SLURM, "SLURM_NTASKS": "1"}) is None  # sbatch + --num-gpus
    assert detect_environment(TORCHRUN, launcher="spawn") is None
    assert detect_environment(SLURM, launcher="slurm").launcher == "slurm"
    with pytest.raises(RuntimeError, match="torchrun"):
        detect_environment(SLURM, launcher="torchrun")
    with pytest.raises(RuntimeError, match="srun"):
        detect_environment({}, launcher="slurm")
    with pytest.raises(RuntimeError, match="RANK='x'"):
        detect_environment({**TORCHRUN, "RANK": "x"})


@pytest.mark.parametrize("nodelist,host", [
    ("node1", "node1"), ("gpu[07-09,12],cpu1", "gpu07"), ("a-[001,003]", "a-001"),
    ("host1,host2", "host1"), ("rack[3]-n[1-2]", "rack3"),
])
def test_first_slurm_host(nodelist, host):
    assert first_slurm_host(nodelist) == host


def test_num_gpus_with_torchrun_is_an_error():
    args = SimpleNamespace(config_file="", opts=[], num_gpus=2, num_machines=1, launcher="auto")
    with pytest.raises(ValueError, match="drop --num-gpus"):
        launch(lambda a: None, args, environ=TORCHRUN)


def test_sbatch_script_with_num_gpus_spawns(monkeypatch):
    """No srun step (only the job's SLURM_NTASKS): train_net.py --num-gpus G spawns G processes."""
    import detpre.engine.launch as L

    spawned = []
    monkeypatch.setattr(L, "_spawn", lambda main_func, args, device, timeout: spawned.append(args))
    args = SimpleNamespace(config_file="", opts=[], num_gpus=8, num_machines=1, launcher="auto")
    L.launch(lambda a: None, args, environ=SLURM)
    assert spawned == [args]
    with pytest.raises(ValueError, match="drop --num-gpus"):  # inside an srun step
        L.launch(lambda a: None, args, environ={**SLURM, "SLURM_STEP_NUM_TASKS": "8"})


def test_cpu_models_get_no_device_ids():
    import detectron2.engine.defaults as d2_defaults

    assert _compat._ddp_device_ids(nn.Linear(2, 2)) is None
    assert d2_defaults.create_ddp_model.detpre_device_aware
    model = nn.Linear(2, 2)
    assert d2_defaults.create_ddp_model(model, broadcast_buffers=False) is model  # 1 process


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _args(out, **kw):
    return SimpleNamespace(config_file=os.path.join(REPO, "configs/demo/fastmoco_R18_tiny.yaml"),
                           opts=["OUTPUT_DIR", str(out)], num_gpus=1, num_machines=1,
                           machine_rank=0, dist_url="auto", launcher="auto", **kw)


def _reports(out, local_size):
    for r in range(2):
        rep = json.loads((out / f"rank{r}.json").read_text())
        assert rep == {"rank": r, "world": 2, "local_rank": r % local_size,
                       "local_size": local_size, "backend": "gloo", "sum": 3.0}


def test_srun_step_joins_detectron2s_global_and_local_groups(tmp_path):
    """A 2-task srun step over two "nodes": task 1 a process started with Slurm's variables,
    task 0 this one (with them as its environment)."""
    from detpre.engine.launch import _shutdown

    slurm = {"SLURM_NTASKS": "2", "SLURM_LOCALID": "0", "SLURM_JOB_NODELIST": "localhost",
             "SLURM_JOB_ID": "7", "MASTER_PORT": str(_free_port())}
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k not in TORCHRUN}
    env.update(slurm, SLURM_PROCID="1", SLURM_NODEID="1", OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    task1 = subprocess.Popen(
        [sys.executable, os.path.join(REPO, "tests", "_dist_launch_probe.py"), "--config-file",
         _args(tmp_path).config_file, "OUTPUT_DIR", str(tmp_path)], cwd=REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        from _dist_launch_probe import report

        launch(report, _args(tmp_path), environ={**slurm, "SLURM_PROCID": "0", "SLURM_NODEID": "0"})
    finally:
        out, _ = task1.communicate(timeout=180)
        _shutdown()
    assert task1.returncode == 0, out.decode()[-3000:]
    _reports(tmp_path, local_size=1)


def test_cpu_spawn_runs_gloo_workers(tmp_path, monkeypatch):
    """--num-gpus 2 on a CPU config: detectron2's launch would assert CUDA; detpre spawns the
    same workers with gloo (one run here, in a world of 1)."""
    import detpre.engine.launch as L

    calls = []
    monkeypatch.setattr(L.mp, "spawn", lambda fn, nprocs, args, daemon: calls.append((fn, nprocs, args)))
    L.launch(print, SimpleNamespace(**{**vars(_args(tmp_path)), "num_gpus": 2}), environ={})
    (fn, nprocs, args), = calls
    assert fn is L._spawned_worker and nprocs == 2
    main_func, world, per_machine, machine_rank, url, main_args, _ = args
    assert (main_func, world, per_machine, machine_rank) == (print, 2, 2, 0)
    assert url.startswith("tcp://127.0.0.1:")
    seen = []

    def main(a):
        import torch.distributed as dist
        from detectron2.utils import comm

        seen.append((comm.get_world_size(), comm.get_local_size(), dist.get_backend()))

    fn(0, main, 1, 1, 0, f"tcp://127.0.0.1:{_free_port()}", main_args, L.DEFAULT_TIMEOUT)
    assert seen == [(1, 1, "gloo")]
    import torch.distributed as dist
    from detectron2.utils import comm

    assert not dist.is_initialized() and comm._LOCAL_PROCESS_GROUP is None  # shut down after


def _cfg(path, **opts):
    cfg = get_detpre_cfg(os.path.join(REPO, path))
    cfg.merge_from_list([x for kv in opts.items() for x in kv])
    return cfg


def test_reference_world_size_scales_every_recipe_key():
    # SoCo (LARS): 2048 images on 16 processes -> the same 128 per process on 8
    soco = _cfg("configs/soco/soco_R50_FPN_100ep.yaml", **{"SOLVER.REFERENCE_WORLD_SIZE": 16})
    s = Trainer.auto_scale_workers(soco, 8)
    assert (s.SOLVER.IMS_PER_BATCH, s.SOLVER.BASE_LR) == (1024, pytest.approx(4.0))
    assert s.SOLVER.MAX_ITER == 2 * soco.SOLVER.MAX_ITER
    assert s.SOLVER.WARMUP_ITERS == 2 * soco.SOLVER.WARMUP_ITERS
    assert s.SOLVER.OPTIMIZER == "LARS" and s.SOLVER.REFERENCE_WORLD_SIZE == 8
    # SpCL (Adam): the clustering period is one epoch in iterations, and scales with them
    spcl = _cfg("configs/spcl/spcl_usl_R50_market1501.yaml", **{"SOLVER.REFERENCE_WORLD_SIZE": 4})
    s = Trainer.auto_scale_workers(spcl, 8)
    assert s.SOLVER.IMS_PER_BATCH == 128 and s.SOLVER.BASE_LR == pytest.approx(0.0007)
    assert s.MODEL.SPCL.CLUSTER_PERIOD == spcl.MODEL.SPCL.CLUSTER_PERIOD // 2
    assert s.SOLVER.STEPS == tuple(x // 2 for x in spcl.SOLVER.STEPS)
    jig = _cfg("configs/jigsaw/jigsaw_R50_COCO.yaml", **{"SOLVER.REFERENCE_WORLD_SIZE": 8})
    assert Trainer.auto_scale_workers(jig, 16).MODEL.JIGSAW.ERF_PERIOD == \
        jig.MODEL.JIGSAW.ERF_PERIOD // 2
    st = _cfg("configs/self_training/retinanet_R50_FPN_COCO_student.yaml",
              **{"SOLVER.REFERENCE_WORLD_SIZE": 8, "MODEL.SELF_TRAINING.REFRESH_PERIOD": 1000})
    s = Trainer.auto_scale_workers(st, 4)
    assert (s.MODEL.SELF_TRAINING.REFRESH_PERIOD, s.MODEL.SELF_TRAINING.LOSS_NORM_WARMUP) == \
        (2000, 2 * st.MODEL.SELF_TRAINING.LOSS_NORM_WARMUP)
    # off (0) or already at the reference: the config itself
    plain = _cfg("configs/spcl/spcl_usl_R50_market1501.yaml")
    assert Trainer.auto_scale_workers(plain, 8) is plain
    assert Trainer.auto_scale_workers(spcl, 4) is spcl


PAPER_CONFIGS = sorted(p for d in ("soco", "fastmoco", "jigsaw", "spcl", "self_training", "finetune")
                       for p in glob.glob(os.path.join(REPO, "configs", d, "*.yaml")))
STATED = re.compile(r"Reference batch: (\d+) ")


def _chain(path):
    while path:
        with open(path) as f:
            text = f.read()
        yield path, text
        m = re.search(r'^_BASE_:\s*"?([^"\n]+)"?', text, re.M)
        path = os.path.normpath(os.path.join(os.path.dirname(path), m.group(1))) if m else None


@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=os.path.basename)
def test_each_recipe_states_its_reference_batch_once(path):
    """The config that sets the batch states it in its header, and nothing else in the chain."""
    batch = get_detpre_cfg(path).SOLVER.IMS_PER_BATCH
    stated = []
    for p, text in _chain(path):
        header = "".join(itertools.takewhile(lambda line: line.startswith("#"),
                                             text.splitlines(True)))
        found = STATED.findall(header)
        sets = re.search(r"^\s+IMS_PER_BATCH:", text, re.M) is not None
        assert len(found) == int(sets), f"{p}: sets IMS_PER_BATCH={sets}, states {found}"
        stated += [int(n) for n in found]
    assert stated and stated[0] == batch, (path, stated, batch)


def _submit_slurm():
    import importlib.util

    spec = importlib.util.spec_from_file_location("submit_slurm",
                                                  os.path.join(REPO, "tools", "submit_slurm.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_submit_slurm_asks_one_task_per_gpu_and_requeues_with_resume():
    tool = _submit_slurm()
    args = tool.parse_args(["--nodes", "2", "--gpus-per-node", "4", "--partition", "gpu", "--",
                            "--config-file", "c.yaml", "OUTPUT_DIR", "o"])
    params = tool.executor_parameters(args)
    assert (params["nodes"], params["tasks_per_node"], params["gpus_per_node"]) == (2, 4, 4)
    assert params["slurm_partition"] == "gpu" and "slurm_account" not in params
    assert args.train_argv == ["--config-file", "c.yaml", "OUTPUT_DIR", "o"]
    with pytest.raises(SystemExit):
        tool.parse_args(["--nodes", "2"])  # no train_net.py arguments
    try:
        import submitit  # noqa: F401
    except ImportError:
        with pytest.raises(SystemExit, match="needs submitit"):
            tool.main(["--", "--config-file", "c.yaml"])
    else:
        requeued = tool.Train(args.train_argv).checkpoint()
        assert requeued.function.train_argv[0] == "--resume"
