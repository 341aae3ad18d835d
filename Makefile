# Two commands do all set-up on a fresh machine:
#   make demo   - the main job (creates .venv with pinned versions first)
#   make test   - the test suite (installs the optional mediapipe extra first where it coexists
#                 with the pinned packages: make video-extra)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= runs/demo

.PHONY: demo test bench clean venv video-extra

venv: $(STAMP)

$(STAMP): constraints.txt setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

# The optional mediapipe extra (`extract --detector mediapipe`, its test), the only way it
# coexists with the pins: the five packages by name (versions from constraints.txt) without
# their dependencies, which would add opencv-contrib-python, a second cv2 over the pinned one.
# It is kept only if exactly one package then provides cv2 and BlazePose runs; otherwise (no
# wheel for this Python, no network, a clash) mediapipe is removed and its tests skip.
VIDEO_STAMP := $(VENV)/.video-extra
VIDEO_PKGS := mediapipe absl-py attrs flatbuffers protobuf
VIDEO_CHECK := import numpy as np; from posesynth.posenet.detectors import MediaPipeDetector, cv2_distributions; \
	d = cv2_distributions(); assert len(d) == 1, d; m = MediaPipeDetector(); m([np.zeros((64, 64, 3), np.uint8)]); m.close()

video-extra: $(VIDEO_STAMP)

$(VIDEO_STAMP): $(STAMP) constraints.txt
	@if $(PY) -m pip install --quiet -c constraints.txt --no-deps $(VIDEO_PKGS) && $(PY) -c "$(VIDEO_CHECK)"; then \
		echo "video extra: mediapipe installed (one cv2, BlazePose runs)"; \
	else \
		echo "video extra: mediapipe does not work beside the pinned packages here; removed (its tests skip)"; \
		$(PY) -m pip uninstall --quiet -y mediapipe >/dev/null 2>&1 || true; \
	fi
	@touch $@

test: $(STAMP) $(VIDEO_STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(PY) -m posesynth demo --out $(DEMO_DIR)

bench: $(STAMP)
	$(PY) benchmarks/bench_posemaps.py
	$(PY) benchmarks/bench_synthetic.py
	$(PY) benchmarks/bench_gan.py
	$(PY) benchmarks/bench_posenet.py
	$(PY) benchmarks/bench_mixing.py
	$(PY) benchmarks/bench_generate.py
	$(PY) benchmarks/bench_refine.py
	$(PY) benchmarks/bench_d_targets.py

clean:
	rm -rf $(VENV) runs .pytest_cache
