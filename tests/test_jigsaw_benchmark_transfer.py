import json

import pytest

from detpre.config import get_detpre_cfg
from detpre.engine.transfer_benchmark import final_metrics, schedule_opts, seconds_per_iter


def test_schedule_is_scaled_to_the_iteration_budget():
    cfg = get_detpre_cfg()
    cfg.SOLVER.MAX_ITER, cfg.SOLVER.STEPS, cfg.SOLVER.WARMUP_ITERS = 1000, (600, 900), 100
    opts = dict(zip(*[iter(schedule_opts(cfg, 250))] * 2))
    assert opts == {"SOLVER.MAX_ITER": "250", "SOLVER.STEPS": "(150, 225)",
                    "SOLVER.WARMUP_ITERS": "25", "SOLVER.CHECKPOINT_PERIOD": "250"}
    cfg.merge_from_list(schedule_opts(cfg, 3))  # the overrides merge; tiny budgets stay valid
    assert cfg.SOLVER.MAX_ITER == 3 and all(0 < s < 3 for s in cfg.SOLVER.STEPS)
    assert cfg.SOLVER.WARMUP_ITERS <= 1


def test_step_time_and_final_metrics_from_metrics_json(tmp_path):
    recs = [{"iteration": 19, "time": 0.5}, {"iteration": 39, "time": 0.3},
            {"iteration": 59, "time": 0.4}, {"iteration": 59, "bbox/AP": 12.5, "segm/AP": 10.0}]
    (tmp_path / "metrics.json").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    assert seconds_per_iter(str(tmp_path)) == 0.4
    assert final_metrics(str(tmp_path))["bbox/AP"] == 12.5
    assert final_metrics(str(tmp_path / "none")) == {}
    with pytest.raises(RuntimeError, match="no step times"):
        seconds_per_iter(str(tmp_path / "none"))
