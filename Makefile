# ScaleRec — two commands do all set-up on a fresh machine:
#   make demo   the whole pipeline on embedded backends, with a report
#   make test   unit, contract, chart, images (built with podman, run as the chart runs them), the chart
#               installed on a real API server, integration (real Kafka, HBase, Memcached, Triton) and
#               end-to-end tests
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SERVICES := collector preprocessor trainer ranker evaluator
PYPROJECTS := libs/pyproject.toml $(foreach s,$(SERVICES),services/$(s)/pyproject.toml) cli/pyproject.toml requirements-dev.txt requirements-nodeps.txt
# Every third-party package pinned (scripts/lock.py): the venv and every image install with it as constraints.
LOCK := requirements.lock
# The stamp is remade only when a pyproject or the lock changes, so torch (a few GB) is installed once
# and reused: pip keeps what already matches the lock.
STAMP := $(VENV)/.scalerec-installed
STACK := scripts/stack/stack.sh
IMAGES_BUILD := scripts/images/build.sh
CLUSTER := scripts/cluster/cluster.sh
PYTEST_ARGS ?=
# $(call WITH_STACK,command): run it against the stack, started first unless it is already up (this
# checkout's, or the one SCALEREC_STACK_DIR names), and stopped after, whatever the outcome, only if this
# run started it: a stack a developer (or another checkout, through SCALEREC_STACK_DIR) runs is left alone.
WITH_STACK = started=0; if ! $(STACK) status >/dev/null 2>&1; then $(STACK) up || exit 1; started=1; fi; \
	rc=0; $(1) || rc=$$?; if [ $$started = 1 ]; then $(STACK) down; fi; exit $$rc

.PHONY: venv lock demo demo-stack test test-fast test-e2e test-images test-cluster test-deploy images lint helm tools bench stack-up stack-down cluster-build cluster-up cluster-down loadtest serve clean

venv: $(STAMP)

$(STAMP): $(PYPROJECTS) $(LOCK)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip wheel
	$(BIN)/pip install -q -c $(LOCK) -r requirements-dev.txt \
		-e 'libs[ml,serving,baselines,kafka,hbase,memcached,triton]' \
		$(foreach s,$(SERVICES),-e services/$(s)) -e cli
	@# Only the tritonserver binary of nvidia-pytriton is used (tests); its Python deps would pin numpy<2.
	$(BIN)/pip install -q --no-deps -c $(LOCK) -r requirements-nodeps.txt
	@touch $@

# Relock after adding or changing a dependency in any pyproject or requirements file: every other pin
# stays; UPGRADE=1 moves all of them to the newest allowed. Needs only uv (installed here if missing).
lock:
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@test -x $(BIN)/uv || $(BIN)/pip install -q -c $(LOCK) uv packaging
	$(BIN)/python scripts/lock.py $(if $(UPGRADE),--upgrade)

# Writes var/demo/report.json and the HTML report var/demo/report.html (the path is printed at the end).
demo: venv
	$(BIN)/scalerec demo

# The same demo with all five services on real Kafka, HBase and Memcached (started fresh: reset wipes their data).
demo-stack: venv
	$(STACK) reset
	$(STACK) up
	$(BIN)/scalerec demo --data-dir var/demo-stack $$($(STACK) env | sed 's/^/--env /')

helm:
	@scripts/helm/install-helm.sh >/dev/null

# Debian tools the tests and benchmarks drive: wrk as the HTTP load generator (benchmarks), chromium to
# render the HTML report in a real browser (tests/e2e/test_report_browser.py, through Playwright), rclone to
# run the chart's model-repository sync sidecar (tests/charts/test_model_sync.py).
DEBIAN_TOOLS := wrk chromium rclone
tools:
	@for pkg in $(DEBIAN_TOOLS); do command -v $$pkg >/dev/null || { export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -qq $$pkg >/dev/null 2>&1 || { apt-get update -qq >/dev/null && apt-get install -y -qq $$pkg >/dev/null; }; } \
		|| { echo "$$pkg is needed (as root: apt-get install -y $$pkg)" >&2; exit 1; }; done

# Throughput against its floor, measured in the same run (docs/benchmarks.md). Needs `make demo` first;
# the ingest benchmark runs the preprocessor and collector on the stack's Kafka and HBase too (started
# here if they are not up).
bench: venv tools
	$(BIN)/python benchmarks/ranker_throughput.py --profile
	$(BIN)/python benchmarks/ranker_request_cpu.py
	$(BIN)/python benchmarks/ranker_gc_pauses.py
	$(BIN)/python benchmarks/telemetry_cost.py
	$(BIN)/python benchmarks/accept_balance.py
	$(BIN)/python benchmarks/triton_client.py
	$(BIN)/python benchmarks/http_protocol.py
	$(STACK) up kafka hbase thrift
	$(BIN)/python benchmarks/ingest_throughput.py

stack-up:
	$(STACK) up

stack-down:
	$(STACK) down

# A real Kubernetes control plane (etcd, kube-apiserver, controller-manager, scheduler; kwok's fake
# nodes, one with GPUs) with the CRDs the chart uses. The binaries build once from the Go module
# proxy (~15 min on 2 cores, cached in ~/.cache/scalerec); docs/kubernetes.md "On a real control plane".
cluster-build:
	$(CLUSTER) build

cluster-up:
	$(CLUSTER) up

cluster-down:
	$(CLUSTER) down

# Everything: the images are built (cached after the first run), the real servers are started first
# and stopped after, whatever the outcome (unless they were up already: WITH_STACK).
test: venv helm tools images cluster-build
	@$(call WITH_STACK,SCALEREC_IMAGES_BUILT=1 $(BIN)/pytest tests --ignore=tests/deploy $(PYTEST_ARGS))

# The chart's own pods (helm template -> podman kube play, single-machine example) against the stack's
# Kafka, HBase and Memcached, and the whole pipeline through them. Needs every image, the trainer's
# (torch: several GB, ~20 min to build the first time) included. .ci/run runs it after make test with SCALEREC_CI_DEPLOY=1, while its 60-min budget allows.
test-deploy: venv helm
	IMAGES=all $(IMAGES_BUILD)
	@$(call WITH_STACK,IMAGES=all SCALEREC_IMAGES_BUILT=1 $(BIN)/pytest tests/deploy $(PYTEST_ARGS))

# The images from the project's Dockerfiles, built with podman here (as root: it installs podman,
# buildah, runc and debootstrap, and makes the base image once). IMAGES=all adds the trainer
# (torch: several GB). docs/kubernetes.md "Images" has the times and sizes.
images:
	$(IMAGES_BUILD)

# Build, then run each image as the chart runs it: probes answer, everything it imports is there.
test-images: venv helm images
	SCALEREC_IMAGES_BUILT=1 $(BIN)/pytest tests/images $(PYTEST_ARGS)

# The chart installed on that control plane: the dev and prod-gpu examples, scheduling, PDBs, HPAs,
# KEDA, topics, upgrade and rollback (also part of `make test`; the cluster stops again after).
test-cluster: venv helm cluster-build
	$(BIN)/pytest tests/cluster $(PYTEST_ARGS)

test-fast: venv
	SCALEREC_REAL_BACKENDS=0 $(BIN)/pytest tests/unit tests/contract -x -q

test-e2e: venv
	$(BIN)/pytest tests/e2e -x

# Run the five services on embedded backends until Ctrl-C (used by `make loadtest` in another shell), on the
# demo's data by default: what `make demo` trained serves, and the load test's report goes beside it.
SERVE_DATA_DIR ?= var/demo
serve: venv
	$(BIN)/scalerec serve --data-dir $(SERVE_DATA_DIR)

# Locust against `make serve` (or any stack: COLLECTOR_URL, RANKER_URL). Its CSV files, log and own HTML
# report (locust.html) are kept in LOADTEST_DIR, where `scalerec report` (default --data-dir var/demo) finds them.
LOADTEST_DIR ?= var/demo/loadtest
loadtest: venv
	$(BIN)/python loadtests/run.py --csv-dir $(LOADTEST_DIR)

lint: venv
	$(BIN)/ruff check libs services cli tests scripts loadtests benchmarks
	$(BIN)/ruff format --check libs services cli tests scripts loadtests benchmarks
	$(BIN)/mypy libs $(foreach s,$(SERVICES),services/$(s)/src) cli/src

clean:
	rm -rf var .pytest_cache
