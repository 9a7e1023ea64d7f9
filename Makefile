# The documented commands. `make test` and `make demo` set everything up on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch: from the package index pip is configured with (the CUDA build, several GB, on Linux). A wheelhouse that pip
# already knows (its find-links) holding the pinned torch is used as it is, offline. For another build, name the
# PyTorch wheel index that serves it (the CPU-only one: a few hundred MB): make setup TORCH_INDEX=<index URL>; its
# build wins over the configured index's (a +cpu / +cuXYZ version sorts higher).
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
RECIPES := $(sort $(basename $(notdir $(wildcard recipes/*.yaml))))

.PHONY: setup test test-all test-oldest lint format tiny sample-data train smoke demo demo-phi4mm demo-learn docker-build docker-train docker-smoke bench bench-data bench-memory bench-fullsize gpu-check gpu-wheels bench-phi4mm bench-errors app docs docs-serve slurm test-cluster demo-grpo demo-dpo

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --no-index --no-deps "$(TORCH)" 2>/dev/null \
		|| $(BIN)/pip install --quiet "$(TORCH)" $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/python -c "from phi3v_recipe.config import known_keys; known_keys()"  # the key list errors are checked by at once
	touch $@

test: setup
	$(BIN)/python -m pytest -q

test-all: setup
	$(BIN)/python -m pytest -q -m ""

# The model's tests on the oldest transformers the package allows (make test runs the newest that installs).
OLDEST_TRANSFORMERS := 5.23.0
test-oldest: setup
	$(BIN)/pip install --quiet --no-deps --target $(VENV)/transformers-$(OLDEST_TRANSFORMERS) transformers==$(OLDEST_TRANSFORMERS)
	PYTHONPATH=$(VENV)/transformers-$(OLDEST_TRANSFORMERS) $(BIN)/python -m pytest -q tests/test_inlibrary.py \
		tests/test_model.py tests/test_processor.py tests/test_vlm.py tests/test_collator.py

# The SLURM launcher against a real SLURM on this machine (slurmctld, slurmd and munge from apt; needs root).
test-cluster: setup
	@command -v slurmctld >/dev/null && command -v munged >/dev/null || { apt-get update -qq \
		&& DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge; } \
		|| echo "Could not install SLURM (apt-get install slurmctld slurmd slurm-client munge, as root): its tests skip."
	$(BIN)/python -m pytest -q -m "" tests/test_cluster.py

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

tiny: outputs/tiny-phi3v/config.json outputs/tiny-phi4mm/config.json

outputs/tiny-phi3v/config.json: | setup
	$(BIN)/python -m phi3v_recipe.tiny outputs/tiny-phi3v

outputs/tiny-phi4mm/config.json: | setup
	$(BIN)/python -m phi3v_recipe.tiny outputs/tiny-phi4mm --family phi4mm

# The synthetic Burberry-like set and one stand-in per official task (for the demo_* twins of their recipes); each set
# is its own target, so a set written by hand first (sample-data --task docvqa) never hides the others.
TASK_SETS := $(foreach task,docvqa nlvr2 frames messages,data/sample/$(task)/$(task).jsonl)
sample-data: data/sample/burberry.csv $(TASK_SETS)

data/sample/burberry.csv: | setup
	$(BIN)/python -m phi3v_recipe.synthetic --task burberry --rows 3040 --seed 0 --out data/sample

$(TASK_SETS): data/sample/%.jsonl: | setup
	$(BIN)/python -m phi3v_recipe.synthetic --task $(notdir $*) --seed 0 --out $(dir $@)

# make train RECIPE=burberry_lora [ACCELERATE_CONFIG=accelerate_configs/fsdp.yaml] [ARGS="--learning_rate 1e-4"] [RESUME=1]
# RESUME=auto resumes when the output folder holds a complete checkpoint and starts otherwise (a recovered cloud job);
# LAUNCH_ARGS are more accelerate launch flags (several machines: --num_machines, --machine_rank, ...).
# phi3v-recipe launch is accelerate launch with the run's own errors as they are: one line, status 2 (accelerate adds
# its own report of the failed processes and exits 1).
# RECIPE is a name (burberry_lora), a recipe's path (recipes/burberry_lora.yaml) or any recipe file of yours.
RECIPE ?=
RECIPE_FILE = $(if $(wildcard $(RECIPE)),$(RECIPE),recipes/$(basename $(notdir $(RECIPE))).yaml)
CLOSEST = $(PYTHON) -c 'import difflib, sys; m = difflib.get_close_matches(sys.argv[1], sys.argv[2:], 1); print(f" Did you mean {m[0]}?" if m else "")'
ACCELERATE_CONFIG ?= accelerate_configs/single_gpu.yaml
ARGS ?=
LAUNCH_ARGS ?=
RESUME ?=
# What an interrupted run prints as the command that resumes it: the make command the user ran.
RESUME_TRAIN = make train RECIPE=$(RECIPE)$(if $(filter-out accelerate_configs/single_gpu.yaml,$(ACCELERATE_CONFIG)), ACCELERATE_CONFIG=$(ACCELERATE_CONFIG))$(if $(LAUNCH_ARGS), LAUNCH_ARGS="$(LAUNCH_ARGS)")$(if $(ARGS), ARGS="$(ARGS)") RESUME=1
# The recipe is named and found before anything is set up (a typo answers at once, not after building .venv).
CHECK_RECIPE = @test -n "$(RECIPE)" || { echo "error: say which recipe: make $@ RECIPE=<name>. Recipes: $(RECIPES)." >&2; exit 2; }; \
	test -f $(RECIPE_FILE) || { echo "error: $(RECIPE_FILE) does not exist.$$($(CLOSEST) $(basename $(notdir $(RECIPE))) $(RECIPES)) Recipes: $(RECIPES)." >&2; exit 2; }
train:
	$(CHECK_RECIPE)
	@$(MAKE) --no-print-directory setup
	PHI3V_RESUME_COMMAND='$(RESUME_TRAIN)' $(BIN)/phi3v-recipe launch --config_file $(ACCELERATE_CONFIG) $(LAUNCH_ARGS) \
		--config $(RECIPE_FILE) $(if $(RESUME),--resume_from_checkpoint $(if $(filter auto,$(RESUME)),auto,true)) $(ARGS)

# A recipe on a SLURM cluster, checked here and queued with sbatch (launch/slurm.sbatch: one accelerate launch per node,
# checkpoint and requeue before the time limit, resumed by itself):
# make slurm RECIPE=burberry_lora [ACCELERATE_CONFIG=accelerate_configs/fsdp.yaml] [ARGS="..."] SBATCH_OPTIONS="--nodes 2 --gpus-per-node 8"
SBATCH_OPTIONS ?=
slurm:
	$(CHECK_RECIPE)
	@$(MAKE) --no-print-directory setup
	SBATCH_OPTIONS='$(SBATCH_OPTIONS)' launch/slurm.sbatch $(RECIPE_FILE) \
		$(filter-out accelerate_configs/single_gpu.yaml,$(ACCELERATE_CONFIG)) $(ARGS)

# A recipe for 2 steps on the CPU, on its family's tiny model and its task's synthetic twin data (seconds each):
# make smoke RECIPE=burberry_qlora [ARGS="--lora_r 8"]
smoke:
	$(CHECK_RECIPE)
	@$(MAKE) --no-print-directory tiny sample-data
	$(BIN)/phi3v-recipe smoke --config $(RECIPE_FILE) $(ARGS)

# The answer the demo's prediction is scored against: the sample row's fields in the recipe's answer template.
export DEMO_TRUTH := import csv; from phi3v_recipe.answers import format_number; \
	from phi3v_recipe.arguments import DEFAULT_ANSWER_TEMPLATE as template; \
	row = next(r for r in csv.DictReader(open("data/sample/burberry.csv")) if r["product_code"] == "SYN000000000"); \
	print("Truth:", template.format(**row | {"full_price": format_number(row["full_price"])}))

# The whole pipeline on the embedded default: tiny model + synthetic sample set, on the CPU, offline.
demo: setup outputs/tiny-phi3v/config.json data/sample/burberry.csv
	PHI3V_RESUME_COMMAND='make demo$(if $(ARGS), ARGS="$(ARGS)") RESUME=1' \
		$(BIN)/python -m phi3v_recipe.train --config recipes/demo.yaml $(if $(RESUME),--resume_from_checkpoint true,--overwrite_output_dir true) $(ARGS)
	@echo "One prediction with the trained model, on a sample photo, then the truth it is scored against:"
	$(BIN)/python -m phi3v_recipe.predict --adapter outputs/demo --image data/sample/images/SYN000000000.png --max_new_tokens 32
	@$(BIN)/python -c "$$DEMO_TRUTH"
	@echo
	@echo "Demo outputs:"
	@echo "  tiny base model        outputs/tiny-phi3v"
	@echo "  sample data            data/sample/burberry.csv (+ images/)"
	@echo "  model + model card     outputs/demo (model.safetensors, README.md, metrics.json, plots/)"
	@echo "  scored evaluation      outputs/demo/metrics.json, outputs/demo/predictions.jsonl"
	@echo "  skipped rows           outputs/demo/skipped_rows.csv"
	@echo "  W&B offline run        $${WANDB_DIR:-outputs/demo}/wandb (upload: .venv/bin/wandb sync $${WANDB_DIR:-outputs/demo}/wandb/offline-run-*)"

# The same pipeline on Phi-4-multimodal: its tiny twin, its vision LoRA trained with the image embedding (CPU, offline).
demo-phi4mm: setup outputs/tiny-phi4mm/config.json data/sample/burberry.csv
	PHI3V_RESUME_COMMAND='make demo-phi4mm$(if $(ARGS), ARGS="$(ARGS)") RESUME=1' \
		$(BIN)/python -m phi3v_recipe.train --config recipes/demo_phi4mm.yaml $(if $(RESUME),--resume_from_checkpoint true,--overwrite_output_dir true) $(ARGS)
	@echo "One prediction with the trained adapter, on a sample photo. The tiny random model's answer does not parse"
	@echo "(<|unusedNNNN|> tokens are expected): this demo shows the pipeline, not learning (see recipes/demo_phi4mm.yaml)."
	$(BIN)/python -m phi3v_recipe.predict --adapter outputs/demo-phi4mm --image data/sample/images/SYN000000000.png --max_new_tokens 32

# GRPO after the demo's SFT (run make demo first): the demo model trained on with a new LoRA, rewarded by the recipe's
# metric; the scored evaluation at the end puts it beside its base with the adapter off, the SFT model (CPU, minutes).
demo-grpo: setup outputs/tiny-phi3v/config.json data/sample/burberry.csv
	@test -f outputs/demo/model.safetensors || { echo "error: outputs/demo does not exist: run make demo first (GRPO starts from its SFT model)." >&2; exit 2; }
	PHI3V_RESUME_COMMAND='make demo-grpo$(if $(ARGS), ARGS="$(ARGS)") RESUME=1' \
		$(BIN)/python -m phi3v_recipe.train --config recipes/demo_grpo.yaml $(if $(RESUME),--resume_from_checkpoint true,--overwrite_output_dir true) $(ARGS)

# DPO after the demo's SFT (run make demo first): pairs from the demo model's own samples (best against worst by the
# metric), DPO with a new LoRA, then the scored evaluation beside the SFT model (the adapter off) (CPU, minutes).
demo-dpo: setup outputs/tiny-phi3v/config.json data/sample/burberry.csv
	@test -f outputs/demo/model.safetensors || { echo "error: outputs/demo does not exist: run make demo first (DPO starts from its SFT model)." >&2; exit 2; }
	rm -rf outputs/demo-pairs
	$(BIN)/phi3v-recipe pairs --config recipes/demo.yaml --adapter outputs/demo --out outputs/demo-pairs/pairs.jsonl --samples 4 --max_new_tokens 32
	PHI3V_RESUME_COMMAND='make demo-dpo RESUME=1' \
		$(BIN)/python -m phi3v_recipe.train --config recipes/demo_dpo.yaml $(if $(RESUME),--resume_from_checkpoint true,--overwrite_output_dir true) $(ARGS)
	$(BIN)/phi3v-recipe evaluate --config recipes/demo.yaml --adapter outputs/demo-dpo

# Full fine-tuning of the tiny model until the scored evaluation beats the trivial baselines (CPU, ~12 min).
demo-learn: setup outputs/tiny-phi3v/config.json data/sample/burberry.csv
	$(BIN)/python -m phi3v_recipe.train --config recipes/demo_learn.yaml --overwrite_output_dir true $(ARGS)

# A web page to try a trained output beside its base model: make app ADAPTER=outputs/demo [ARGS="--share"]
ADAPTER ?= outputs/demo
app: setup
	$(BIN)/phi3v-recipe app --adapter $(ADAPTER) $(ARGS)

# Benchmarks: ours beside the official cookbook recipe, the W&B guide and TRL's generic VLM path (tables + outputs/bench.json).
# On a GPU: make bench ARGS="--sweep 1,2,4,8" (full-size model, num_crops 16).
bench: setup
	$(BIN)/python -m phi3v_recipe.bench --out outputs/bench.json $(ARGS)

# Data preparation at 1k, 10k and 50k photo-sized rows: ours (first and second start) beside the previous way.
bench-data: setup
	$(BIN)/python -m phi3v_recipe.bench.prepare --out outputs/bench-prepare.json $(ARGS)

# GPU memory of a full-size LoRA step, estimated per batch size and activation checkpointing policy (seconds, CPU).
bench-memory: setup
	$(BIN)/python -m phi3v_recipe.bench.memory --out outputs/bench-memory.json $(ARGS)

# The real size on the CPU (phi3v_recipe/bench/fullsize.py): a random full-size Phi-3-Vision written from the hub's
# files, the GPU recipes trained on it and resumed, the steps' memory beside the estimate (FSDP on a 2-layer cut),
# merges of both families, numerics (also past 4,096 tokens) and the bench in bf16: hours, 24 GiB of memory.
# A part: ARGS="--points merge,numerics". HUB_DIR: a folder with the model's config.json and
# model.safetensors.index.json (huggingface-cli download microsoft/Phi-3-vision-128k-instruct --include "*.json").
bench-fullsize: setup
	@test -n "$(HUB_DIR)" || { echo "error: set HUB_DIR to the hub files of Phi-3-vision-128k-instruct (config.json, index)"; exit 2; }
	$(BIN)/python -m phi3v_recipe.bench.fullsize --hub_dir $(HUB_DIR) --out outputs/bench-fullsize.json $(ARGS)

# One GPU command (make gpu-check on a lent or rented GPU, a few minutes): the full-size step, ours beside the cookbook's,
# its peak memory beside plan's estimate, numerics, a training run with resume (needs TRL). On a CPU: the tiny model.
gpu-check:
	$(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON)) -m phi3v_recipe.bench.gpu --out outputs/gpu-check.json $(ARGS)

# The wheels a lent GPU machine lacks for gpu-check's training part (it has torch, transformers, peft, pandas, pyarrow;
# not TRL or datasets; older transformers), for its Python (PYVER, default 3.12), into .whl/ (git-ignored: carry it):
# python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && PYTHONPATH=/tmp/site make gpu-check
PYVER ?= 3.12
GPU_WHEELS = trl datasets dill multiprocess transformers peft accelerate
gpu-wheels: setup
	$(BIN)/pip download --quiet --no-deps --only-binary=:all: --python-version $(PYVER) --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
		$$($(BIN)/python -c "import importlib.metadata as m; print(' '.join(f'{n}=={m.version(n)}' for n in '$(GPU_WHEELS)'.split()))")
	du -sh .whl

# Time to a user error through each entry point, beside the full parse after the heavy imports (~3 min, CPU).
bench-errors: setup
	$(BIN)/python -m phi3v_recipe.bench.errors $(ARGS)

# Phi-4-multimodal training: ours beside Microsoft's sample_finetune_vision.py restated (tiny model, CPU, ~7-10 min).
bench-phi4mm: setup
	$(BIN)/python -m phi3v_recipe.bench.phi4mm --out outputs/bench-phi4mm.json $(ARGS)

# The documentation site from docs/ (mkdocs.yml), built strict: a broken link, anchor or a page left out fails.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

docs-serve: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --dev-addr 127.0.0.1:8000

# Docker: build the CUDA image, and run a recipe in it with the Hub/W&B credentials and cache/outputs on volumes.
IMAGE ?= phi3v-recipe
docker-build:
	docker build -f docker/Dockerfile -t $(IMAGE) .

# The image built and run on this machine, with no package index in the build: pip reads a local wheelhouse
# (downloaded here first), the base is a local Debian (debootstrap) when the CUDA base cannot be pulled, and
# `make demo` runs inside. Needs root, buildah, podman and debootstrap (apt-get install buildah podman debootstrap).
SMOKE_BASE ?= localhost/debian-bookworm-local
# debootstrap's own default mirror unless set
DEBIAN_MIRROR ?=
docker-smoke: setup
	mkdir -p docker/wheelhouse
	$(BIN)/pip download --quiet --no-index --no-deps --dest docker/wheelhouse "$(TORCH)" 2>/dev/null \
		|| $(BIN)/pip download --quiet --no-deps --dest docker/wheelhouse "$(TORCH)" $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
	$(BIN)/pip download --quiet --find-links docker/wheelhouse --dest docker/wheelhouse ".[dev]" pip setuptools wheel
	buildah inspect --type image $(SMOKE_BASE) >/dev/null 2>&1 || { rm -rf /tmp/phi3v-rootfs \
		&& debootstrap --variant=minbase bookworm /tmp/phi3v-rootfs $(DEBIAN_MIRROR) \
		&& tar -C /tmp/phi3v-rootfs -c . | podman import - $(SMOKE_BASE); }
	buildah bud --isolation chroot --build-arg BASE_IMAGE=$(SMOKE_BASE) --build-arg WHEELHOUSE=1 \
		-f docker/Dockerfile -t localhost/phi3v-recipe-smoke .
	ctr=$$(buildah from localhost/phi3v-recipe-smoke) && { buildah run --isolation chroot $$ctr -- make demo; \
		status=$$?; buildah rm $$ctr >/dev/null; exit $$status; }

docker-train:
	docker run --gpus all --ipc=host --rm -e HF_TOKEN -e WANDB_API_KEY \
		-v $(HOME)/.cache/huggingface:/home/phi3v/.cache/huggingface -v $(CURDIR)/outputs:/app/outputs \
		$(IMAGE) make train RECIPE=$(RECIPE) ACCELERATE_CONFIG=$(ACCELERATE_CONFIG) ARGS='$(ARGS)'
