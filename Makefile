# Common entry points. The scripts do the work; see each one's header.
#   make test                 the test suite (scripts/test.sh)
#   make book                 build the executable book (scripts/build_book.sh; SSVI_PRESET picks the scale)
#   make grid PRESET=cpu      every run of every experiment at a preset, resumably, with a progress
#                             bar and an ETA (scripts/run_grid.py; stop and start it at any time)
#   make grid PRESET=cpu GRID_ARGS="--commit"   ... git-committing each results file as it lands
#   make grid-dry-run PRESET=cpu                list the runs and which are stored / stale / missing
PYTHON ?= $(if $(wildcard .venv/bin/python),.venv/bin/python,python)
GRID_ARGS ?=
PRESET ?= $(or $(SSVI_PRESET),cpu)

.PHONY: test book grid grid-dry-run

test:
	bash scripts/test.sh

book:
	bash scripts/build_book.sh

grid:
	$(PYTHON) scripts/run_grid.py --preset $(PRESET) $(GRID_ARGS)

grid-dry-run:
	$(PYTHON) scripts/run_grid.py --preset $(PRESET) --dry-run $(GRID_ARGS)
