"""
Steps of multi-run jobs (the demo, the transfer benchmark, self-training rounds): each runs the
command a user would type, logs to a file, is skipped when its output exists, and resumes when
it was killed; results are read back from detectron2's ``metrics.json``.
"""
import json
import os
import subprocess
import sys
import time

__all__ = ["run_logged", "train_step", "metrics_records", "final_metrics"]


def run_logged(cmd, log):
    """Run ``cmd`` with its output appended to ``log``; returns seconds, raises with the log's tail."""
    cmd = [str(c) for c in cmd]
    os.makedirs(os.path.dirname(os.path.abspath(log)), exist_ok=True)
    print("$ " + " ".join(cmd[1:] if cmd[0] == sys.executable else cmd), flush=True)
    t = time.time()
    with open(log, "a") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        with open(log) as f:
            tail = "".join(f.readlines()[-30:])
        raise RuntimeError(f"command failed (exit {rc}); last lines of {log}:\n{tail}")
    return time.time() - t


def train_step(config, out_dir, opts=(), log_name="log_steps.txt"):
    """``tools/train_net.py --resume`` into ``out_dir``; None (skipped) when it already finished."""
    if os.path.isfile(os.path.join(out_dir, "model_final.pth")):
        return None
    return run_logged([sys.executable, "tools/train_net.py", "--config-file", config, "--resume",
                       "OUTPUT_DIR", out_dir, *opts], os.path.join(out_dir, log_name))


def metrics_records(out_dir):
    path = os.path.join(out_dir, "metrics.json")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def final_metrics(out_dir):
    """The last evaluation record (one with ``bbox/AP``) in ``out_dir/metrics.json``, or {}."""
    found = {}
    for r in metrics_records(out_dir):
        if "bbox/AP" in r:
            found = r
    return found
