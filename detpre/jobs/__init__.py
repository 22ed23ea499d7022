"""
Multi-run jobs: the demo, the transfer benchmark and self-training rounds. Each is a sequence
of the commands a user would type (``tools/train_net.py``, exports, evaluations), run by one
job runner (``runner``) that logs, shows progress, skips finished steps and resumes killed ones.
Library code returns rows; ``tools/`` prints them.
"""
from .runner import REPO_ROOT, final_metrics, is_finished, metrics_records, repo_path, run_logged, train
from .stats import mean_std, paired_difference

__all__ = ["REPO_ROOT", "repo_path", "run_logged", "train", "is_finished", "metrics_records",
           "final_metrics", "mean_std", "paired_difference"]
