"""
Starting the processes of a run, whichever way the user starts ``tools/train_net.py``:

* **detectron2's launch** (nothing set in the environment): ``--num-gpus G [--num-machines N
  --machine-rank i --dist-url tcp://host:port]`` spawns one process per GPU, as in detectron2;
  on a CPU config (``MODEL.DEVICE cpu``) the same processes are spawned with gloo.
* **torchrun** (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set; also ``torch.distributed.launch
  --use-env`` and other ``env://`` launchers): every process is already started, the process
  group is joined through ``MASTER_ADDR:MASTER_PORT``.
* **Slurm** (``srun`` with more than one task: ``SLURM_PROCID``, ``SLURM_STEP_NUM_TASKS`` or
  ``SLURM_NTASKS``, ``SLURM_LOCALID``, ``SLURM_NODEID``, the node list): one task per GPU, the
  first node of the step is the rendezvous (port ``MASTER_PORT`` or one derived from the job
  id). An sbatch script that runs train_net.py ``--num-gpus G`` itself (no srun step) spawns.

In the last two cases the process initializes detectron2's process groups itself, global and
local (``comm._LOCAL_PROCESS_GROUP``, as detectron2's launch worker does), NCCL when
``MODEL.DEVICE`` is a GPU and gloo on CPU, and then runs ``main`` in place.
"""
import dataclasses
import logging
import os
import re
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from detpre import _compat

__all__ = ["DistEnv", "detect_environment", "first_slurm_host", "argument_parser", "launch",
           "init_distributed", "LAUNCHERS"]

LAUNCHERS = ("auto", "spawn", "torchrun", "slurm")
DEFAULT_TIMEOUT = timedelta(minutes=30)  # detectron2's
logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DistEnv:
    """One process's place in a run started by torchrun or Slurm."""

    launcher: str  # "torchrun" or "slurm"
    rank: int
    world_size: int
    local_rank: int
    machine: str  # processes with the same value share a machine (the local process group)
    master_addr: str
    master_port: int

    @property
    def init_method(self):
        # torchrun's agent may already serve the store at MASTER_PORT: join it through env://
        if self.launcher == "torchrun":
            return "env://"
        return f"tcp://{self.master_addr}:{self.master_port}"


def _int(environ, key, default=None):
    value = environ.get(key, "")
    if value == "":
        if default is None:
            raise RuntimeError(f"{key} is not set")
        return default
    try:
        return int(value)
    except ValueError:
        raise RuntimeError(f"{key}={value!r} is not an integer") from None


def first_slurm_host(nodelist):
    """The first host of a Slurm node list: ``"gpu[07-09,12],cpu1"`` -> ``"gpu07"``."""
    nodelist = nodelist.strip()
    m = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist)
    if not m:
        raise RuntimeError(f"cannot read the Slurm node list {nodelist!r}; set MASTER_ADDR")
    prefix, ranges = m.groups()
    if not ranges:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def _torchrun_env(environ):
    rank, world = _int(environ, "RANK"), _int(environ, "WORLD_SIZE")
    local_rank = _int(environ, "LOCAL_RANK")
    local_size = _int(environ, "LOCAL_WORLD_SIZE", 0)
    # torchrun sets GROUP_RANK (the node's index); other env:// launchers may not
    machine = environ.get("GROUP_RANK") or (str(rank // local_size) if local_size else "")
    return DistEnv("torchrun", rank, world, local_rank, machine or _hostname(),
                   environ.get("MASTER_ADDR", "127.0.0.1"), _int(environ, "MASTER_PORT", 29500))


def _slurm_env(environ):
    world = _int(environ, "SLURM_STEP_NUM_TASKS", _int(environ, "SLURM_NTASKS", 1))
    nodelist = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST") \
        or environ.get("SLURM_NODELIST", "")
    addr = environ.get("MASTER_ADDR") or (first_slurm_host(nodelist) if nodelist else "127.0.0.1")
    # every task of the job computes the same port; MASTER_PORT when two runs share a job
    port = _int(environ, "MASTER_PORT", 20000 + _int(environ, "SLURM_JOB_ID", 0) % 20000)
    machine = environ.get("SLURM_NODEID") or _hostname()
    return DistEnv("slurm", _int(environ, "SLURM_PROCID"), world, _int(environ, "SLURM_LOCALID", 0),
                   machine, addr, port)


def _hostname():
    import socket

    return socket.gethostname()


def _is_torchrun(environ):
    return all(environ.get(k, "") != "" for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def _is_slurm(environ):
    tasks = environ.get("SLURM_STEP_NUM_TASKS") or environ.get("SLURM_NTASKS") or "1"
    return environ.get("SLURM_PROCID", "") != "" and tasks.isdigit() and int(tasks) > 1


def detect_environment(environ=None, launcher="auto"):
    """
    The ``DistEnv`` of this process when torchrun (checked first: its variables are per
    process, also inside an ``srun`` step) or a multi-task Slurm step started it, else None
    (single process, or detectron2's launch spawns the processes). ``launcher`` forces one.
    """
    environ = os.environ if environ is None else environ
    if launcher not in LAUNCHERS:
        raise ValueError(f"--launcher {launcher!r}: use one of {', '.join(LAUNCHERS)}")
    if launcher == "spawn":
        return None
    if launcher in ("auto", "torchrun") and _is_torchrun(environ):
        return _torchrun_env(environ)
    if launcher in ("auto", "slurm") and _is_slurm(environ):
        return _slurm_env(environ)
    if launcher == "torchrun":
        raise RuntimeError("--launcher torchrun: RANK, WORLD_SIZE and LOCAL_RANK are not set; "
                           "start with `torchrun --nproc_per_node G tools/train_net.py ...`")
    if launcher == "slurm":
        if environ.get("SLURM_PROCID", "") != "":
            return _slurm_env(environ)  # a one-task step: a single process
        raise RuntimeError("--launcher slurm: SLURM_PROCID is not set; start with `srun`")
    return None


def argument_parser(epilog=None):
    """detectron2's ``default_argument_parser`` plus ``--launcher``."""
    from detectron2.engine import default_argument_parser

    parser = default_argument_parser(epilog)
    parser.add_argument("--launcher", default="auto", choices=LAUNCHERS,
                        help="how the processes are started: auto-detect torchrun/Slurm from the "
                             "environment, else spawn --num-gpus processes (detectron2's launch)")
    return parser


def config_device(args):
    """``MODEL.DEVICE`` of the run's config (what decides NCCL or gloo)."""
    if not getattr(args, "config_file", ""):
        return "cuda" if torch.cuda.is_available() else "cpu"
    from detpre.config import get_detpre_cfg

    return get_detpre_cfg(args.config_file, args.opts).MODEL.DEVICE


def _set_cuda_device(local_rank):
    n = torch.cuda.device_count()
    if n == 0:
        raise RuntimeError("MODEL.DEVICE is cuda but no GPU is visible; use MODEL.DEVICE cpu")
    if n == 1:  # one GPU per process (Slurm --gpus-per-task, CUDA_VISIBLE_DEVICES per task)
        torch.cuda.set_device(0)
    elif local_rank < n:
        torch.cuda.set_device(local_rank)
    else:
        raise RuntimeError(f"local rank {local_rank} but only {n} GPUs visible on this machine: "
                           "start one process per GPU")


def init_distributed(rank, world_size, local_rank, machine, init_method, device="cuda",
                     timeout=DEFAULT_TIMEOUT):
    """
    Join the run's process group (NCCL for a GPU ``device``, gloo for CPU) and create
    detectron2's local process group from the ``machine`` every process reports.
    """
    cuda = str(device).startswith("cuda")
    if cuda:
        _set_cuda_device(local_rank)
    backend = "nccl" if cuda else "gloo"
    try:
        dist.init_process_group(backend, init_method=init_method, world_size=world_size,
                                rank=rank, timeout=timeout)
    except Exception:
        logger.error("process group %s (%s), rank %d of %d", init_method, backend, rank, world_size)
        raise
    machines = [None] * world_size
    dist.all_gather_object(machines, str(machine))
    order = sorted(set(machines), key=machines.index)  # machines in the order of their first rank
    ranks = [[r for r, m in enumerate(machines) if m == name] for name in order]
    _compat.set_local_process_group(ranks, order.index(str(machine)))
    from detectron2.utils import comm

    comm.synchronize()
    return backend


def _shutdown():
    if dist.is_initialized():
        dist.destroy_process_group()
    _compat.reset_local_process_group()


def _spawned_worker(local_rank, main_func, world_size, per_machine, machine_rank, dist_url, args,
                    timeout):
    rank = machine_rank * per_machine + local_rank
    init_distributed(rank, world_size, local_rank, str(machine_rank), dist_url, "cpu", timeout)
    try:
        main_func(*args)
    finally:
        _shutdown()


def _spawn(main_func, args, device, timeout):
    """detectron2's launch; without a GPU config the same processes, with gloo."""
    from detectron2.engine import launch as d2_launch

    world = args.num_gpus * args.num_machines
    if world <= 1 or str(device).startswith("cuda"):
        return d2_launch(main_func, args.num_gpus, num_machines=args.num_machines,
                         machine_rank=args.machine_rank, dist_url=args.dist_url, args=(args,),
                         timeout=timeout)
    dist_url = args.dist_url
    if dist_url == "auto":
        if args.num_machines != 1:
            raise ValueError("--dist-url auto works on one machine only")
        from detectron2.engine.launch import _find_free_port

        dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    mp.spawn(_spawned_worker, nprocs=args.num_gpus, daemon=False,
             args=(main_func, world, args.num_gpus, args.machine_rank, dist_url, (args,), timeout))


def launch(main_func, args, timeout=DEFAULT_TIMEOUT, environ=None):
    """
    Run ``main_func(args)`` in every process of the run: in place under torchrun/Slurm (after
    joining the process groups), else through detectron2's launch (``args.num_gpus`` processes
    per machine). ``args`` is the namespace of ``argument_parser()``.
    """
    environ = os.environ if environ is None else environ
    launcher = getattr(args, "launcher", "auto")
    env = detect_environment(environ, launcher)
    if (env is not None and env.launcher == "slurm" and launcher == "auto" and args.num_gpus > 1
            and not environ.get("SLURM_STEP_NUM_TASKS")):
        # an sbatch script running train_net.py itself (no srun step): detectron2's launch
        logger.info("Slurm job without an srun step and --num-gpus %d: spawning", args.num_gpus)
        env = None
    device = config_device(args)
    if env is None:
        return _spawn(main_func, args, device, timeout)
    if args.num_gpus > 1 or args.num_machines > 1:
        raise ValueError(
            f"{env.launcher} started this process (rank {env.rank} of {env.world_size}): it "
            f"starts one process per GPU, so drop --num-gpus/--num-machines (got "
            f"{args.num_gpus}/{args.num_machines})")
    logger.info("%s: rank %d of %d, local rank %d on %s, rendezvous %s", env.launcher, env.rank,
                env.world_size, env.local_rank, env.machine, env.init_method)
    if env.world_size == 1:
        return main_func(args)
    init_distributed(env.rank, env.world_size, env.local_rank, env.machine, env.init_method,
                     device, timeout)
    try:
        return main_func(args)
    finally:
        _shutdown()
