# The two commands a fresh clone needs: `make run` and `make test`. `make ui` opens Dagster's UI.
UV := $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
export DAGSTER_HOME ?= $(CURDIR)/.trueup/dagster

.PHONY: run test ui setup bench lock

setup:
	@$(UV) --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	@$(UV) sync --frozen --quiet --extra servers
	@mkdir -p $(DAGSTER_HOME)

run: setup                   ## the nightly reconciliation on the demo landscape, end to end
	$(UV) run trueup run

test: setup                  ## the whole test suite
	$(UV) run pytest

ui: setup                    ## Dagster's UI with the full lineage (http://127.0.0.1:3000)
	$(UV) run trueup demo build --if-absent
	$(UV) run dagster dev -w workspace.yaml

lock:                        ## re-resolve and pin every dependency
	$(UV) lock
