# All set-up is here: `make demo` and `make test` work on a fresh clone (they run `make setup`).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SETUP_STAMP := $(VENV)/.dcfm-setup
MSGS_STAMP := $(VENV)/.dcfm-msgs
OUT ?= out

.PHONY: setup test lint bench bench-node demo clean

setup: $(SETUP_STAMP) $(MSGS_STAMP)

$(SETUP_STAMP): requirements/runtime.txt requirements/build.txt requirements/dev.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check \
	  -r requirements/runtime.txt -r requirements/build.txt -r requirements/dev.txt
	# compat mode: a plain path entry, so the source package and the generated dcfm_ros.msg join
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation \
	  --config-settings editable_mode=compat -e .
	# OpenVINO sends a usage event to Google Analytics on every `import openvino` unless opted out
	# (package openvino-telemetry); a robot's node must not phone home. OpenVINO's own switch, which
	# writes ~/intel/openvino_telemetry:
	$(VENV)/bin/opt_in_out --opt_out > /dev/null
	touch $@

$(MSGS_STAMP): $(SETUP_STAMP) msg/*.msg CMakeLists.txt package.xml scripts/build_msgs.sh
	bash scripts/build_msgs.sh $(VENV)
	touch $@

test: setup
	$(VENV)/bin/ruff check dcfm_ros test launch
	$(PY) -m pytest -q -rs test

lint: setup
	$(VENV)/bin/ruff check dcfm_ros test launch

bench: setup
	$(VENV)/bin/dcfm-bench --backbone mit-b2 --size 480x853 --frames 20

demo: setup
	$(VENV)/bin/dcfm-bag-eval demo/camvid_val_0016E5 --image-topic /camera/image/compressed \
	  --gt-topic /camera/labels --max --out $(OUT)/demo --overwrite

clean:
	rm -rf build install log $(OUT)
