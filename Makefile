# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Both create .venv first when it is missing (scripts/bootstrap.sh; idempotent).
PY := .venv/bin/python
STAMP := .venv/.detpre-bootstrapped
export OMP_NUM_THREADS ?= 2

.PHONY: demo test venv clean-demo

$(STAMP): scripts/bootstrap.sh scripts/build_detectron2_wheel.py requirements.txt setup.py
	bash scripts/bootstrap.sh
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) tools/demo.py

test: $(STAMP)
	$(PY) -m pytest -q tests

clean-demo:
	rm -rf output/demo

# wheels for scripts/gpu_check.sh on a GPU machine without network (Python 3.12; no torch)
.PHONY: wheelhouse
wheelhouse: $(STAMP)
	bash scripts/build_wheelhouse.sh
