# Purser developer entry points. `make run` starts the whole stack locally.
VENV ?= .venv
PY = $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: all install browser run demo test test-all test-unit lint docs bench bench-wait bench-load chaos migrate mutants mutants-ledger mutants-curated clean

all: test

# The stamp makes a second `make` skip the install until a requirements file changes.
$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed

# The console's browser tests (tests/console) drive Debian's Chromium through its driver:
# installed here when missing, so a clean clone's `make test` has it (needs root or sudo).
CHROMIUM ?= /usr/bin/chromium
browser:
	@if [ ! -x $(CHROMIUM) ] || [ ! -x /usr/bin/chromedriver ]; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium chromium-driver; \
	fi

run: $(VENV)/.installed
	$(PY) -m devstack run

# `make run` plus demo accounts, content and money through the API (README, "Try it").
# `make run DEMO=1` does the same: make exports command-line variables to the launcher.
demo: $(VENV)/.installed
	$(PY) -m devstack demo

# Test lanes (docs/testing.md). `make test`: what CI must prove on every change, <= 8 min on
# 2 cores: every suite but chaos, plus the chaos smoke (marker `smoke`, CI scale), in two
# pytest-xdist workers (a file stays on one worker; each worker starts its own stores).
# `make test-all`: everything, the chaos suite and the long fuzz at full scale (.ci/run),
# in one process: the chaos timings must not share the cores with other suites.
XDIST ?= -n 2 --dist loadfile
test: $(VENV)/.installed browser
	$(PY) -m pytest -q -p no:cacheprovider -m "not chaos or smoke" $(XDIST) $(PYTEST_ARGS)

test-all: $(VENV)/.installed browser
	CHAOS_SCALE=$${CHAOS_SCALE:-full} $(PY) -m pytest -q -p no:cacheprovider --durations=15 $(PYTEST_ARGS)

test-unit: $(VENV)/.installed
	$(PY) -m pytest -q -p no:cacheprovider tests/unit $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

# Regenerate what docs/operations.md lists as production's required variables (infra/config_docs.py).
docs: $(VENV)/.installed
	$(PY) -m infra.config_docs --write

bench: $(VENV)/.installed
	@if [ -f loadtest/bench.py ]; then $(PY) -m loadtest.bench; else echo "bench: not yet (issue 9)"; fi
	$(PY) -m loadtest.wait_bench

# Only the waiting scenario (issue 15): 500 clients waiting on their jobs, 20 reading balances.
bench-wait: $(VENV)/.installed
	$(PY) -m loadtest.wait_bench

# The seed's load profile by arrival rate (issue 24): locust on an isolated stack, 30 s warm-up,
# 100 requests/s for 5 min, 200 requests/s for 1 min, a verdict per phase (~8 min with seeding).
# `make bench-load LOAD_ARGS=--quick` for a 2-minute sanity run.
LOAD_ARGS ?=
bench-load: $(VENV)/.installed
	$(PY) -m loadtest.run_locust --profile rate $(LOAD_ARGS)

chaos: $(VENV)/.installed
	$(PY) -m pytest tests/chaos -q $(PYTEST_ARGS)

# Mutation testing (issue 17, docs/testing.md); not part of `make test`.
# mutmut over ledger/ with tests/unit (setup.cfg), then the curated I/O mutants.
mutants: mutants-ledger mutants-curated

mutants-ledger: $(VENV)/.installed
	rm -rf mutants
	$(VENV)/bin/mutmut run --max-children 2
	$(PY) tests/mutants/mutmut_score.py

mutants-curated: $(VENV)/.installed
	$(PY) tests/mutants/run.py --record docs/testing.md

migrate: $(VENV)/.installed
	$(PY) -m migrations up

clean:
	rm -rf var .pytest_cache mutants
