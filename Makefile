# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Both create .venv first when it is missing (scripts/bootstrap.sh; idempotent).
PY := .venv/bin/python
STAMP := .venv/.detpre-bootstrapped

.PHONY: demo demo-soco demo-long demo-smoke demo-self-training test lint venv clean-demo

$(STAMP): scripts/bootstrap.sh scripts/build_detectron2_wheel.py requirements.txt setup.py
	bash scripts/bootstrap.sh
	touch $(STAMP)

venv: $(STAMP)

# box pretraining vs random init (same fine-tuning iterations) and vs random init given its 300
# extra iterations (same total), 3 seeds; two runs at once, one thread each; ~20 min on 2 cores
demo: $(STAMP)
	$(PY) tools/demo.py

# SoCo's row added to make demo's results in output/demo (their runs are reused: SoCo's
# pretraining and 3 fine-tuning runs, ~8 min after make demo, ~25 from scratch)
demo-soco: $(STAMP)
	$(PY) tools/demo.py --methods soco,agnostic

# SoCo and Jigsaw vs random init, at 600 fine-tuning iterations (the demo runs 160), where
# SoCo's ResNet + FPN and Jigsaw's ResNet inits were ahead of random init over 7-9 seeds
# (docs/results.md; 3 seeds are too few to show it), and Jigsaw vs random init given its 300
# iterations too (900); ~55 min on 2 cores
demo-long: $(STAMP)
	$(PY) tools/demo.py --methods soco,jigsaw --output-dir output/demo_long SOLVER.MAX_ITER 600 SOLVER.STEPS "(480,)"

# fine-tuning to a plateau (best checkpoint on a selection split, scored on a report split) at 60 and 600
# labeled images, 3 paired seeds: random init, SoCo, Jigsaw, Fast-MoCo, box pretraining and the same-total
# controls (docs/converged.md; hours on 2 cores, the expected time printed first; rerunning continues)
.PHONY: demo-converged demo-converged-smoke
demo-converged: $(STAMP)
	$(PY) tools/demo_converged.py

# the converged comparison's whole pipeline at a few iterations (CI); its runs are deleted after
demo-converged-smoke: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) tools/demo_converged.py --smoke
	rm -rf output/demo_converged_smoke

# every method's pipeline at a few iterations: what CI runs after the tests
demo-smoke: $(STAMP)
	$(PY) tools/demo.py --smoke

# self-training, fair: online mode (an EMA teacher labels each unlabeled batch) with 20 labeled images
# (where 200 more supervised iterations no longer pay) from a 1000-iteration teacher, 4 paired seeds
# (with 3 the seeds' noise alone can hide the gain); the student and its EMA teacher each against a
# control trained the same iterations on the labeled images alone, the pseudo-labels' precision /
# recall at the threshold (~30 minutes on 2 cores;
# configs/demo/self_training_20_labels_teacher.yaml, self_training_online_20_labels_student.yaml).
# Re-running continues a killed run. Other regimes: docs/results.md#self-training.
demo-self-training: $(STAMP)
	$(PY) tools/benchmark_self_training.py --mode online --seeds 0,1,2,3 --jobs 2 \
		--teacher-config configs/demo/self_training_20_labels_teacher.yaml \
		--student-config configs/demo/self_training_online_20_labels_student.yaml \
		--output-dir output/demo/self_training_20_labels

test: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(PY) -m pytest -q tests

lint: $(STAMP)
	$(PY) -m ruff check .

clean-demo:
	rm -rf output/demo output/demo_smoke

# wheels for scripts/gpu_check.sh on the GPU machine (Python 3.12, no network): only what it lacks
# (scripts/gpu_machine_packages.txt): detectron2 + scripts/requirements-gpu.txt; <= 40 MiB
.PHONY: wheelhouse gpu-check-dry
wheelhouse: $(STAMP)
	bash scripts/build_wheelhouse.sh

# the GPU check's every section, tiny, on CPU, installing from build/wheelhouse into a venv over a
# stand-in of the GPU machine's packages (output/gpu_check_dry/; what CI runs after the demo smoke)
gpu-check-dry: $(STAMP)
	@test -f build/wheelhouse/detectron2-0.6-py3-none-any.whl || { echo "run make wheelhouse first"; exit 1; }
	OUT=$(CURDIR)/output/gpu_check_dry GPU_CHECK_DEVICE=cpu OMP_NUM_THREADS=1 bash scripts/gpu_check.sh
