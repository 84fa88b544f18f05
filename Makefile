# make test: the whole check, from a fresh clone, the same on a laptop and in CI.
#   venv (python3.11) -> install with constraints -> Kafka jars -> ruff -> a normal
#   install of the package tree -> import-linter and mypy over it -> Kafka up -> pytest ->
#   Kafka down (always).

PYTHON ?= python3.11
VENV ?= .venv
BUILD := .ci-build
PYTEST_ARGS ?= -q --durations=15
BIN := $(VENV)/bin

.PHONY: test install kafka-jars lint site typecheck pytest dev clean

test: install kafka-jars lint typecheck pytest

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

kafka-jars: install
	$(BIN)/taskstream kafka install

# ruff over the sources; import-linter (the contracts in pyproject.toml) over the
# installed tree, the module graph mypy sees.
lint: install site
	$(BIN)/ruff check .
	cd $(BUILD)/site && PYTHONPATH=$(CURDIR)/$(BUILD)/site \
		$(CURDIR)/$(BIN)/lint-imports --no-cache $(CURDIR)/pyproject.toml

# The editable install uses an import hook mypy and import-linter cannot follow, so
# they check a normal install of the same mapping; package_tree.py proves the trees match.
site: install
	rm -rf $(BUILD)/site
	$(BIN)/python scripts/package_tree.py $(BUILD)/site

typecheck: install site
	cd $(BUILD)/site && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml \
		--cache-dir $(CURDIR)/$(BUILD)/mypy-cache -p taskstream

pytest: install
	VENV=$(VENV) KAFKA_DATA_DIR=$(CURDIR)/$(BUILD)/kafka scripts/test-with-kafka.sh $(PYTEST_ARGS)

# The whole platform on this machine with a demo workload (see `taskstream dev --help`).
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

bench: $(VENV)/.installed-bench kafka-jars
	$(BIN)/python bench/run.py $(BENCH_ARGS)

bench-quick: $(VENV)/.installed-bench kafka-jars
	$(BIN)/python bench/run.py --quick --out bench/results/tmp $(BENCH_ARGS)
