# make test: the whole check, from a fresh clone, the same on a laptop and in CI.
#   venv (python3.11) -> install with constraints -> Kafka and S3Proxy jars -> kustomize ->
#   promtool -> chromium (installed under CI when missing, for the dashboard's browser tests) ->
#   ruff -> a normal install of the package tree -> import-linter and mypy over it -> Kafka up ->
#   pytest -> Kafka down (always).

PYTHON ?= python3.11
VENV ?= .venv
BUILD := .ci-build
PYTEST_ARGS ?= -q --durations=15
BIN := $(VENV)/bin

.PHONY: test install kafka-jars s3proxy-jars kustomize promtool browser lint site typecheck pytest dev clean \
	ui-screenshots chaos

test: install kafka-jars s3proxy-jars kustomize promtool browser lint typecheck pytest

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

kafka-jars: install
	$(BIN)/taskstream kafka install

# S3Proxy (org.gaul:s3proxy, Maven Central): the S3-compatible server the storage tests
# start themselves (D36); resolved once into ~/.cache/taskstream/s3proxy.
s3proxy-jars: install
	$(BIN)/taskstream storage install

# kustomize renders k8s/ for tests/test_deploy_k8s.py: the pinned release, built once
# with the Go toolchain into .ci-build/bin (Go's module and build caches keep later
# runs offline). Without Go, the tests fall back to `kubectl kustomize`.
KUSTOMIZE_VERSION := v5.5.0
KUSTOMIZE_STAMP := $(BUILD)/bin/.kustomize-$(KUSTOMIZE_VERSION)

kustomize: $(KUSTOMIZE_STAMP)

$(KUSTOMIZE_STAMP):
	@mkdir -p $(BUILD)/bin
	@if command -v go >/dev/null; then \
		GOBIN=$(CURDIR)/$(BUILD)/bin GOFLAGS=-mod=mod \
			go install sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION) && touch $@; \
	elif command -v kubectl >/dev/null; then \
		echo "kustomize: no Go toolchain; the tests use kubectl kustomize ($$(kubectl version --client | grep -i kustomize))"; \
	else \
		echo "kustomize: install Go (to build kustomize $(KUSTOMIZE_VERSION)) or kubectl" >&2; exit 1; \
	fi

# promtool and prometheus for the monitoring tests (tests/test_observability_*.py: promtool
# check config/rules, promtool test rules, a real Prometheus scraping a running platform):
# Debian's prometheus package, installed when missing (as root, as CI runs; the package's
# service is not needed and is not started where policy-rc.d forbids it).
promtool:
	@if command -v promtool >/dev/null && command -v prometheus >/dev/null; then \
		echo "promtool: $$(promtool --version 2>&1 | head -1)"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq --no-install-recommends prometheus; \
	else \
		echo "promtool: install Debian's prometheus package (apt-get install prometheus)" >&2; \
		exit 1; \
	fi

# The dashboard's browser tests (tests/test_ui_browser.py, part of `make test`) drive
# Debian's chromium through chromium-driver. Under CI (CI=true, set by .ci/run) they are
# installed with apt when missing (as root, or through passwordless sudo); a CI machine
# without apt fails here and in those tests. Elsewhere a machine without them skips the
# browser tests, saying how to install them.
BROWSER_PACKAGES := chromium chromium-driver
APT_INSTALL := apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $(BROWSER_PACKAGES)

browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then \
		echo "browser: $$(chromium --version 2>/dev/null), $$(chromedriver --version | cut -d' ' -f1-2)"; \
	elif [ "$$CI" != "true" ]; then \
		echo "browser: no chromium/chromedriver: the dashboard's browser tests will skip" \
			"($(APT_INSTALL))"; \
	elif ! command -v apt-get >/dev/null; then \
		echo "browser: CI needs chromium and chromedriver, and this machine has no apt-get;" \
			"install Debian's $(BROWSER_PACKAGES) (or equivalents on PATH)" >&2; exit 1; \
	elif [ "$$(id -u)" = 0 ]; then \
		sh -c '$(APT_INSTALL)'; \
	elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then \
		sudo sh -c '$(APT_INSTALL)'; \
	else \
		echo "browser: CI needs chromium and chromedriver: run as root or with passwordless" \
			"sudo, or install them first ($(APT_INSTALL))" >&2; exit 1; \
	fi

# ruff over the sources; import-linter (the contracts in pyproject.toml) over the
# installed tree, the module graph mypy sees.
lint: install site
	$(BIN)/ruff check .
	cd $(BUILD)/site && PYTHONPATH=$(CURDIR)/$(BUILD)/site \
		$(CURDIR)/$(BIN)/lint-imports --no-cache $(CURDIR)/pyproject.toml

# The editable install uses an import hook mypy and import-linter cannot follow, so
# they check a normal install of the same mapping; package_tree.py proves the trees match.
site: install
	rm -rf $(BUILD)/site build  # build/: setuptools leftovers, maybe of an older layout
	$(BIN)/python scripts/package_tree.py $(BUILD)/site

typecheck: install site
	cd $(BUILD)/site && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml \
		--cache-dir $(CURDIR)/$(BUILD)/mypy-cache -p taskstream

pytest: install
	VENV=$(VENV) KAFKA_DATA_DIR=$(CURDIR)/$(BUILD)/kafka scripts/test-with-kafka.sh $(PYTEST_ARGS)

# The README's screenshots of the dashboard (docs/ui/*.png), taken by its browser tests.
ui-screenshots: install kafka-jars browser
	TASKSTREAM_UI_SCREENSHOTS=$(CURDIR)/docs/ui VENV=$(VENV) \
		KAFKA_DATA_DIR=$(CURDIR)/$(BUILD)/kafka scripts/test-with-kafka.sh tests/test_ui_browser.py -q

clean:
	rm -rf $(BUILD) $(VENV)

# make dev: the whole platform on this machine with a demo workload (README's first command).
dev: install
	$(BIN)/taskstream dev $(DEV_ARGS)

# make bench: every benchmark, side by side with Celery + Redis; results in bench/results/.
# Needs redis-server (Debian/Ubuntu: apt-get install -y redis-server).
BENCH_ARGS ?=
$(VENV)/.installed-bench: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[bench]"
	touch $@

bench: $(VENV)/.installed-bench kafka-jars s3proxy-jars
	$(BIN)/python bench/run.py $(BENCH_ARGS)

bench-quick: $(VENV)/.installed-bench kafka-jars
	$(BIN)/python bench/run.py --quick --out bench/results/tmp $(BENCH_ARGS)

# make chaos: the full fault-injection run (docs/chaos.md): a 3-node Kafka, 3 replicas,
# 3 workers, every fault kind, >= 20 minutes and >= 30 faults; the report goes to
# bench/results/chaos/<stamp>.json and .md. CI runs a short seeded run (tests/test_chaos.py).
CHAOS_ARGS ?= --seed 42 --faults all --count 32 --gap 30 --duration 1200
chaos: install kafka-jars
	$(BIN)/taskstream chaos run $(CHAOS_ARGS)
