# Common entry points. The scripts do the work; see each one's header.
#   make test                 the test suite (scripts/test.sh)
#   make book                 build the executable book (scripts/build_book.sh; SSVI_PRESET picks the scale)
#   make grid                 every experiment at the paper preset on a GPU (scripts/run_grid.py)
#   make grid GRID_ARGS="--dry-run"     list the runs and which already exist
PYTHON ?= $(if $(wildcard .venv/bin/python),.venv/bin/python,python)
GRID_ARGS ?=

.PHONY: test book grid grid-dry-run

test:
	bash scripts/test.sh

book:
	bash scripts/build_book.sh

grid:
	$(PYTHON) scripts/run_grid.py $(GRID_ARGS)

grid-dry-run:
	$(PYTHON) scripts/run_grid.py --dry-run $(GRID_ARGS)
