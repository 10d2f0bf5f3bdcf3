# make demo: a fresh machine to a finished curation run on the sample pool.
# make test: whatever set-up is missing, then the test suite.
# make lint: ruff over the tree with pyproject.toml's rules (CI runs it before the tests).
# They are idempotent: a second call only redoes what changed.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.curate-installed
SVG_DIR := /usr/share/openclipart/svg
JAVA := /usr/bin/java
WORDNET := /usr/share/wordnet/data.noun
CHROMIUM := /usr/bin/chromium
PROTOC := /usr/bin/protoc
POOL := data/openclipart/summary.json
METADATA := data/openclipart/metadata.parquet
CONVERSATIONS := data/openclipart/conversations/train.json
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

DJ_VENV := bench/.venv-dj
CR_VENV := bench/.venv-cr
DUCKDB_VENV := bench/.venv-duckdb

.PHONY: demo test lint setup pool bench bench-dj bench-cr bench-duckdb clean

setup: $(STAMP)

# torch first, from the versions this machine keeps on disk (see DEVELOPERS.md), then the package
# (gcld3 builds from its source there: it needs protoc and the protobuf headers)
$(STAMP): pyproject.toml | $(PROTOC)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev,ray,spark,s3,safety]'
	touch $@

$(SVG_DIR):
	$(SUDO) apt-get update -q
	$(SUDO) apt-get install -y -q openclipart-svg

# Java: pycocoevalcap's PTB tokenizer and METEOR (captioning metrics), and Spark
$(JAVA):
	$(SUDO) apt-get update -q
	$(SUDO) apt-get install -y -q default-jre-headless

# WordNet's synsets: concept metadata (curate metadata build)
$(WORDNET):
	$(SUDO) apt-get update -q
	$(SUDO) apt-get install -y -q wordnet-base

# protobuf's compiler and headers: gcld3 (the language stage's CLD3 backend, DataComp's LAION-2B rule) builds
# from its PyPI source with them
$(PROTOC):
	$(SUDO) apt-get update -q
	$(SUDO) apt-get install -y -q protobuf-compiler libprotobuf-dev

# Chromium: the report test renders report.html in it, headless (driven by playwright, a dev extra)
$(CHROMIUM):
	$(SUDO) apt-get update -q
	$(SUDO) apt-get install -y -q chromium

$(POOL): | $(STAMP) $(SVG_DIR)
	$(BIN)/curate sample openclipart --out data/openclipart

# the concept metadata pipelines/metaclip_balance.yaml and the ablation's balanced recipe use
$(METADATA): $(POOL) | $(WORDNET)
	$(BIN)/curate metadata build --out $@ --corpus data/openclipart/pool

# the LLaVA stage-2 conversations (and eval.json's category questions) built from the pool's metadata
$(CONVERSATIONS): $(POOL)
	$(BIN)/python -m train.llava.conversations --pool data/openclipart/pool --out data/openclipart/conversations \
		--eval data/openclipart/eval --quiet

pool: $(POOL) $(METADATA) $(CONVERSATIONS)

demo: $(STAMP) $(POOL) $(METADATA) $(CONVERSATIONS)
	$(BIN)/curate run pipelines/quickstart.yaml --overwrite  # reused when nothing changed, redone when the pool did
	@echo
	@echo "demo finished: shards in out/quickstart/shards, report in out/quickstart/report.html"

test: $(STAMP) | $(SVG_DIR) $(JAVA) $(WORDNET) $(CHROMIUM)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

# Data-Juicer, the peer the heuristics benchmark compares against, in its own venv
$(DJ_VENV)/.installed:
	test -x $(DJ_VENV)/bin/python || $(PYTHON) -m venv $(DJ_VENV)
	$(DJ_VENV)/bin/pip install -q --upgrade pip
	$(DJ_VENV)/bin/pip install -q py-data-juicer aiohttp fasttext-predict "opencv-python-headless<5"  # image_face_blur_mapper (bench/safety.py): OpenCV 5 moved the Haar cascades out
	touch $@

bench-dj: $(DJ_VENV)/.installed

# clip-retrieval, the peer of the embedding-throughput benchmark (bench/dedup.py --embed), in its own venv;
# setuptools < 81 still ships pkg_resources, which its clip dependency imports
$(CR_VENV)/.installed:
	test -x $(CR_VENV)/bin/python || $(PYTHON) -m venv $(CR_VENV)
	$(CR_VENV)/bin/pip install -q --upgrade pip
	$(CR_VENV)/bin/pip install -q torch==2.14.1 torchvision==0.29.1
	$(CR_VENV)/bin/pip install -q clip-retrieval "setuptools<81"
	touch $@

bench-cr: $(CR_VENV)/.installed

# DuckDB, the peer of the scale benchmark (bench/scale.py: the same filter, dedup and top fraction in SQL), in its own venv
$(DUCKDB_VENV)/.installed:
	test -x $(DUCKDB_VENV)/bin/python || $(PYTHON) -m venv $(DUCKDB_VENV)
	$(DUCKDB_VENV)/bin/pip install -q --upgrade pip
	$(DUCKDB_VENV)/bin/pip install -q duckdb
	touch $@

bench-duckdb: $(DUCKDB_VENV)/.installed

bench: $(STAMP) $(POOL) bench-dj
	$(BIN)/python bench/heuristics.py

clean:
	rm -rf out .pytest_cache
