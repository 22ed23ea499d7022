# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Both create .venv first when it is missing (scripts/bootstrap.sh; idempotent).
PY := .venv/bin/python
STAMP := .venv/.detpre-bootstrapped

.PHONY: demo demo-smoke test lint venv clean-demo

$(STAMP): scripts/bootstrap.sh scripts/build_detectron2_wheel.py requirements.txt setup.py
	bash scripts/bootstrap.sh
	touch $(STAMP)

venv: $(STAMP)

# two runs at once, one thread each (tools/demo.py --jobs)
demo: $(STAMP)
	$(PY) tools/demo.py

# every method's pipeline at a few iterations: what CI runs after the tests
demo-smoke: $(STAMP)
	$(PY) tools/demo.py --smoke

test: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(PY) -m pytest -q tests

lint: $(STAMP)
	$(PY) -m ruff check .

clean-demo:
	rm -rf output/demo output/demo_smoke

# wheels for scripts/gpu_check.sh on a GPU machine without network (Python 3.12; no torch)
.PHONY: wheelhouse
wheelhouse: $(STAMP)
	bash scripts/build_wheelhouse.sh
