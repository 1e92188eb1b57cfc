# VFM-VAE + latent diffusion. `make help` lists the targets.
SHELL := /bin/bash
PYTHON_BOOTSTRAP ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Hub access off before any Python starts (timm/huggingface_hub ignore it when set later).
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export PYTHONUNBUFFERED := 1

.DEFAULT_GOAL := help
.PHONY: help install test test-fast lint format clean

help: ## List the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-22s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON_BOOTSTRAP) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install the project (a no-op when done)

test: install ## Run the whole test suite (slow and multi-process tests included); any skip fails it
	$(PY) -m pytest -q --fail-on-skip

test-fast: install ## Run the tests not marked slow
	$(PY) -m pytest -q --fail-on-skip -m "not slow"

lint: install ## Ruff lint and format check
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: install ## Ruff autofix and format
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

clean: ## Remove caches and demo outputs (keeps .venv)
	rm -rf .pytest_cache .ruff_cache outputs/demo outputs/demo_* outputs/demo_analyses

# ---------------------------------------------------------------- diffusion (configs/diffusion/*.yaml)
.PHONY: train-diffusion sample
train-diffusion: install ## Train: MODEL=lightningdit|reg LATENTS=dir TOKENIZER=path [DINOV2=.pth], or CONFIG=configs/diffusion/demo.yaml
	@config="$(CONFIG)"; extra=""; \
	if [ -z "$$config" ]; then \
	  case "$(MODEL)" in \
	    lightningdit) config=configs/diffusion/lightningdit_xl1_vfmvae.yaml ;; \
	    reg) config=configs/diffusion/reg_sitxl1_vfmvae.yaml ;; \
	    *) echo "train-diffusion: set MODEL=lightningdit|reg (paper runs) or CONFIG=file.yaml; the CPU demo needs no files: CONFIG=configs/diffusion/demo.yaml make train-diffusion" >&2; exit 2 ;; \
	  esac; \
	  [ -n "$(LATENTS)" ] && [ -d "$(LATENTS)" ] || { echo "train-diffusion: LATENTS='$(LATENTS)' must name the latent cache folder (lightning_modules/latent_cache.py); see configs/diffusion/demo.yaml for a run without external files" >&2; exit 2; }; \
	  [ -n "$(TOKENIZER)" ] || { echo "train-diffusion: TOKENIZER is not set (the tokenizer whose decoder draws the sample grids: a save_pretrained folder, or the official .pth with TOKENIZER_KWARGS=G_kwargs.yaml)" >&2; exit 2; }; \
	  if [ "$(MODEL)" = reg ] && [ -z "$(DINOV2)" ]; then echo "train-diffusion: DINOV2 is not set (torch.hub dinov2_vitb14 .pth for the REG alignment targets)" >&2; exit 2; fi; \
	fi; \
	if [ -n "$(LATENTS)" ]; then extra="--data.init_args.config.latent_root=$(LATENTS)"; fi; \
	[ -f "$$config" ] || { echo "train-diffusion: CONFIG=$$config does not exist" >&2; exit 2; }; \
	set -x; env $(if $(TOKENIZER),TOKENIZER="$(TOKENIZER)") $(if $(TOKENIZER_KWARGS),TOKENIZER_KWARGS="$(TOKENIZER_KWARGS)") \
	  $(if $(DINOV2),DINOV2="$(DINOV2)") $(PY) -m lightning_modules fit --config $$config \
	  $(if $(TRAINER_CONFIG),--config $(TRAINER_CONFIG)) $$extra $(ARGS)

sample: install ## Sample: CKPT=run.ckpt|official.pt TOKENIZER=path|none [STATS=latents_stats.pt] [NUM=50000] [OUT=dir] [DEVICES=auto]
	@[ -n "$(CKPT)" ] || { echo "sample: CKPT is not set (a DiffusionModule .ckpt, or an official .pt with MODEL=lightningdit|reg); e.g. after the demo: CKPT=outputs/demo/diffusion/tb/demo_diffusion/demo_lightningdit/checkpoints/last.ckpt TOKENIZER=none TOKENIZER_PRESET=debug" >&2; exit 2; }
	@[ -n "$(TOKENIZER)" ] || { echo "sample: TOKENIZER is not set (save_pretrained folder, official .pth + TOKENIZER_KWARGS, or 'none' for a random debug decoder)" >&2; exit 2; }
	$(PY) -m lightning_modules sample --ckpt "$(CKPT)" --tokenizer "$(TOKENIZER)" --out "$(or $(OUT),outputs/samples/$(basename $(notdir $(CKPT))))" \
	  --num-images $(or $(NUM),50000) --chunk-size $(or $(CHUNK),1000) --label-mode $(or $(LABELS),random) \
	  --seed $(or $(SEED),0) --devices $(or $(DEVICES),auto) $(if $(MODEL),--model $(MODEL)) \
	  $(if $(STATS),--latent-stats "$(STATS)") $(if $(TOKENIZER_PRESET),--tokenizer-preset $(TOKENIZER_PRESET)) \
	  $(if $(TOKENIZER_KWARGS),--tokenizer-kwargs "$(TOKENIZER_KWARGS)") $(SAMPLE_ARGS)

# ---------------------------------------------------------------- latent cache (vfmvae cache-latents)
.PHONY: cache-latents
cache-latents: install ## Cache latents: DATA_ROOT=split TOKENIZER=export OUT=dir [DEVICES=auto STORE_IMAGES=1 FILTER=keys.txt]
	@[ -n "$(DATA_ROOT)" ] || { echo "cache-latents: DATA_ROOT is not set (an ImageFolder split, e.g. /data/imagenet/train); 'make demo' shows a run on embedded data" >&2; exit 2; }
	@[ -n "$(TOKENIZER)" ] || { echo "cache-latents: TOKENIZER is not set (a save_pretrained export folder, or an official .pth with TOKENIZER_KWARGS=G_kwargs.yaml)" >&2; exit 2; }
	@[ -n "$(OUT)" ] || { echo "cache-latents: OUT is not set (the cache folder; an existing one is resumed)" >&2; exit 2; }
	$(PY) -m lightning_modules cache-latents --data-root "$(DATA_ROOT)" --tokenizer "$(TOKENIZER)" --out "$(OUT)" \
	  --devices $(or $(DEVICES),auto) --num-nodes $(or $(NUM_NODES),1) --image-size $(or $(IMAGE_SIZE),256) \
	  --batch-size $(or $(BATCH),64) $(if $(STORE_IMAGES),--store-images) $(if $(FILTER),--filter-keys "$(FILTER)") \
	  $(if $(VFM_PATH),--vfm-path "$(VFM_PATH)") $(if $(TOKENIZER_KWARGS),--tokenizer-kwargs "$(TOKENIZER_KWARGS)") $(CACHE_ARGS)

# ---------------------------------------------------------------- benchmarks (docs/benchmarks.md)
.PHONY: bench
# One CPU thread: on a shared 2-core machine OpenMP threads under contention ran ~8x slower.
BENCH_ARGS ?= --suite cpu --threads 1 --max-seconds 200
bench: install ## Benchmark throughput/memory/MFU (CPU tiny+small; BENCH_ARGS="--suite gpu" on a GPU); JSON in outputs/bench/
	$(PY) -m lightning_modules bench $(BENCH_ARGS)

# ---------------------------------------------------------------- metrics (vfmvae/metrics)
.PHONY: evaluate se-cknna
evaluate: install ## ADM suite: SAMPLES=npz|dir REF=VIRTUAL_imagenet256_labeled.npz [INCEPTION=weights.pth] [NUM=50000] [OUT=json] [PR_DTYPE=float32 (default float16 = ADM)]
	@[ -n "$(SAMPLES)" ] || { echo "evaluate: SAMPLES is not set (an .npz from 'make sample' or a folder of PNGs)" >&2; exit 2; }
	@[ -n "$(REF)" ] || { echo "evaluate: REF is not set (ADM's VIRTUAL_imagenet256_labeled.npz, or a folder/npz of reference images)" >&2; exit 2; }
	$(PY) -m lightning_modules evaluate $(SAMPLES) $(REF) $(if $(INCEPTION),--inception-weights $(INCEPTION)) $(if $(NUM),--num-samples $(NUM)) $(if $(OUT),--out $(OUT)) $(if $(PR_DTYPE),--pr-distance-dtype $(PR_DTYPE)) $(EVAL_ARGS)

se-cknna: install ## SE-CKNNA CSV+PNG: IMAGES=dir MODELS="tokenizer:P@ckpt vfm:P@w lightningdit:P@ckpt" [REF=dinov2-large@w] [OUT=dir]; DEMO=N = N photos, tiny random models
	$(PY) -m lightning_modules se-cknna $(SE_ARGS) $(if $(DEMO),--demo $(if $(filter 1,$(DEMO)),16,$(DEMO)) --reference debug-dinov2 --model vfm:debug-siglip --model tokenizer:debug,--images $(IMAGES) --reference $(or $(REF),dinov2-large) $(foreach m,$(MODELS),--model $(m)) $(if $(TOKENIZER),--tokenizer $(TOKENIZER)) $(if $(STATS),--latent-stats $(STATS)) $(if $(TOKENIZER_KWARGS),--tokenizer-kwargs $(TOKENIZER_KWARGS))) --out-dir $(or $(OUT),outputs/se_cknna)

# ---------------------------------------------------------------- tokenizer (configs/tokenizer/*.yaml)
.PHONY: train-tokenizer eval-reconstruction
TOKENIZER_STAGE_CONFIG_0 := configs/tokenizer/stage0_strong_alignment.yaml
TOKENIZER_STAGE_CONFIG_1 := configs/tokenizer/stage1_weak_alignment.yaml
TOKENIZER_STAGE_CONFIG_2 := configs/tokenizer/stage2_ssim_fine_tuning.yaml
TOKENIZER_STAGE_CONFIG_3 := configs/tokenizer/stage3_patchgan_fine_tuning.yaml
TOKENIZER_DEMO_HINT := the CPU demo needs no files: CONFIG=configs/tokenizer/demo.yaml make train-tokenizer
train-tokenizer: install ## Tokenizer stage: STAGE=0|1|2|3 DATA_ROOT VFM_PATH DINO_PATH VGG_PATH FILTER_LIST [INIT_CKPT] [INCEPTION_PATH] [TRAINER_CONFIG], or CONFIG=configs/tokenizer/demo.yaml
	@config="$(CONFIG)"; extra=""; \
	if [ -z "$$config" ]; then \
	  case "$(STAGE)" in \
	    0) config=$(TOKENIZER_STAGE_CONFIG_0) ;; 1) config=$(TOKENIZER_STAGE_CONFIG_1) ;; \
	    2) config=$(TOKENIZER_STAGE_CONFIG_2) ;; 3) config=$(TOKENIZER_STAGE_CONFIG_3) ;; \
	    *) echo "train-tokenizer: set STAGE=0|1|2|3 (paper stages) or CONFIG=file.yaml; $(TOKENIZER_DEMO_HINT)" >&2; exit 2 ;; \
	  esac; \
	  for var in DATA_ROOT:"$(DATA_ROOT)":"ImageNet folder with train/ and val/ class folders" \
	             VFM_PATH:"$(VFM_PATH)":"local google/siglip2-large-patch16-512 folder (transformers save_pretrained)" \
	             DINO_PATH:"$(DINO_PATH)":"local DINO ViT-S/16 weights file for the projected discriminator" \
	             VGG_PATH:"$(VGG_PATH)":"torchvision vgg16-397923af.pth for LPIPS" \
	             FILTER_LIST:"$(FILTER_LIST)":"short side >= 256 key list, from vfmvae make-filter-list (make filter-list)"; do \
	    name=$${var%%:*}; rest=$${var#*:}; value=$${rest%%:*}; what=$${rest#*:}; \
	    [ -n "$$value" ] || { echo "train-tokenizer: $$name is not set ($$what); $(TOKENIZER_DEMO_HINT)" >&2; exit 2; }; \
	    [ -e "$$value" ] || { echo "train-tokenizer: $$name=$$value does not exist ($$what)" >&2; exit 2; }; \
	  done; \
	  if [ "$(STAGE)" != 0 ]; then \
	    [ -n "$(INIT_CKPT)" ] || { echo "train-tokenizer: INIT_CKPT is not set (stage $(STAGE) starts from the stage-$$(( $(STAGE) - 1 )) checkpoint, e.g. .../checkpoints/last.ckpt); $(TOKENIZER_DEMO_HINT)" >&2; exit 2; }; \
	    [ -f "$(INIT_CKPT)" ] || { echo "train-tokenizer: INIT_CKPT=$(INIT_CKPT) does not exist" >&2; exit 2; }; \
	    extra="--model.init_args.init_checkpoint=$(INIT_CKPT)"; \
	  fi; \
	  extra="$$extra --data.init_args.config.root=$(DATA_ROOT) --data.init_args.config.filter_keys_path=$(FILTER_LIST) \
	    --model.init_args.vfm_pretrained=$(VFM_PATH) --model.init_args.dino_pretrained=$(DINO_PATH) \
	    --model.init_args.vgg_path=$(VGG_PATH) --config $(or $(TRAINER_CONFIG),configs/trainer/ddp_bf16.yaml)"; \
	else \
	  [ -f "$$config" ] || { echo "train-tokenizer: CONFIG=$$config does not exist" >&2; exit 2; }; \
	  $(if $(TRAINER_CONFIG),extra="--config $(TRAINER_CONFIG)";) \
	fi; \
	$(if $(INCEPTION_PATH),extra="$$extra --model.init_args.val_inception_path=$(INCEPTION_PATH)";) \
	set -x; $(PY) -m lightning_modules fit --config $$config $$extra $(if $(CKPT),--ckpt_path $(CKPT)) $(ARGS)

eval-reconstruction: install ## rFID/rIS/PSNR/SSIM/LPIPS (official tools/reconstruct): TOKENIZER=export|official.pth DATA_ROOT=val dir INCEPTION_PATH VGG_PATH [NUM] [OUT] [UINT8_MODE=round (default truncate = official)] (NO_FID=1 / NO_LPIPS=1 skip)
	@[ -n "$(TOKENIZER)" ] || { echo "eval-reconstruction: TOKENIZER is not set (a save_pretrained export folder, or an official .pth with TOKENIZER_KWARGS=G_kwargs.yaml); after the demo (CONFIG=configs/tokenizer/demo.yaml make train-tokenizer): TOKENIZER=outputs/demo/tokenizer/export DATA_ROOT=outputs/demo_data/val IMAGE_SIZE=64 NO_FID=1 NO_LPIPS=1" >&2; exit 2; }
	@[ -n "$(DATA_ROOT)" ] || { echo "eval-reconstruction: DATA_ROOT is not set (folder of validation images, e.g. ImageNet val; all files below it are used); demo: DATA_ROOT=outputs/demo_data/val" >&2; exit 2; }
	@[ -n "$(INCEPTION_PATH)$(NO_FID)" ] || { echo "eval-reconstruction: INCEPTION_PATH is not set (torch-fidelity weights-inception-2015-12-05-6726825d.pth for rFID/rIS; NO_FID=1 skips them)" >&2; exit 2; }
	@[ -n "$(VGG_PATH)$(NO_LPIPS)" ] || { echo "eval-reconstruction: VGG_PATH is not set (torchvision vgg16-397923af.pth for LPIPS; NO_LPIPS=1 skips it)" >&2; exit 2; }
	$(PY) -m lightning_modules eval-reconstruction --tokenizer "$(TOKENIZER)" --data-root "$(DATA_ROOT)" \
	  $(if $(NO_FID),,--inception-weights "$(INCEPTION_PATH)") $(if $(NO_LPIPS),,--vgg-weights "$(VGG_PATH)") \
	  $(if $(TOKENIZER_KWARGS),--tokenizer-kwargs "$(TOKENIZER_KWARGS)") $(if $(VFM_PATH),--vfm-path "$(VFM_PATH)") \
	  --resolution $(or $(IMAGE_SIZE),256) --batch-size $(or $(BATCH),50) $(if $(NUM),--num-images $(NUM)) \
	  --device $(or $(DEVICE),auto) $(if $(OUT),--out "$(OUT)") $(if $(UINT8_MODE),--uint8-mode $(UINT8_MODE)) $(EVAL_ARGS)

# ---------------------------------------------------------------- demo (docs/demo.md)
.PHONY: demo
demo: install ## Whole pipeline on embedded photos, CPU, minutes: outputs/demo [SIZE=demo|ci VFM=siglip2|dinov2|eva|mae|qwen2_5_vl (outputs/demo_<VFM>) REDO=phase DEMO_ARGS=...]
	$(PY) -m lightning_modules demo --size $(or $(SIZE),demo)$(if $(VFM),+$(VFM)) --out $(or $(OUT),outputs/demo$(if $(VFM),_$(VFM))) $(if $(REDO),--redo $(REDO)) $(DEMO_ARGS)

# ---------------------------------------------------------------- commands (docs/commands.md)
.PHONY: report filter-list export-dit push-to-hub commands
report: install ## Run report: RUN=run folder or a root of runs (e.g. outputs/demo) [OUT=dir] -> RUN/report.html
	@[ -n "$(RUN)" ] || { echo "report: RUN is not set (a run's log folder or a folder holding runs, e.g. RUN=outputs/demo after make demo)" >&2; exit 2; }
	$(PY) -m lightning_modules report "$(RUN)" $(if $(OUT),--out "$(OUT)")

filter-list: install ## Key list of images with short side >= 256: ROOT=split OUT=keys.txt [SOURCE=imagefolder|webdataset] [WORKERS=0]
	@[ -n "$(ROOT)" ] || { echo "filter-list: ROOT is not set (an ImageFolder split, or the WebDataset shard folder with SOURCE=webdataset)" >&2; exit 2; }
	@[ -n "$(OUT)" ] || { echo "filter-list: OUT is not set (the key list to write: .txt, or .pkl for the official format)" >&2; exit 2; }
	$(PY) -m lightning_modules make-filter-list --source $(or $(SOURCE),imagefolder) --root "$(ROOT)" --out "$(OUT)" --workers $(or $(WORKERS),0)

export-dit: install ## Hub folder of a diffusion checkpoint's network: CKPT=run.ckpt OUT=dir [METRICS="adm.json ..."] [WEIGHTS=ema|raw]
	@[ -n "$(CKPT)" ] || { echo "export-dit: CKPT is not set (a DiffusionModule training checkpoint, e.g. .../checkpoints/last.ckpt)" >&2; exit 2; }
	@[ -n "$(OUT)" ] || { echo "export-dit: OUT is not set (the export folder to write)" >&2; exit 2; }
	$(PY) -m lightning_modules export-dit --ckpt "$(CKPT)" --out "$(OUT)" --weights $(or $(WEIGHTS),ema) $(if $(METRICS),--metrics $(METRICS))

push-to-hub: install ## Upload an export folder: FOLDER=dir REPO=owner/name [METRICS="rec.json ..."] (needs HF_HUB_OFFLINE=0 and a token)
	@[ -n "$(FOLDER)" ] || { echo "push-to-hub: FOLDER is not set (a tokenizer export or a vfmvae export-dit folder)" >&2; exit 2; }
	@[ -n "$(REPO)" ] || { echo "push-to-hub: REPO is not set (the Hub repository, owner/name)" >&2; exit 2; }
	$(PY) -m lightning_modules push-to-hub "$(FOLDER)" "$(REPO)" $(if $(METRICS),--metrics $(METRICS))

commands: install ## List the vfmvae commands (vfmvae --help)
	@$(PY) -m lightning_modules --help

# ---------------------------------------------------------------- text-to-image (docs/text_to_image.md)
.PHONY: train-t2i sample-t2i
train-t2i: install ## Text-to-image training: CONFIG=configs/t2i/tiny.yaml (CPU, no files) or configs/t2i/paper.yaml with LATENTS=dir TEXT_ENCODER=folder [TRAINER_CONFIG=...]
	@config="$(or $(CONFIG),configs/t2i/tiny.yaml)"; extra=""; \
	[ -f "$$config" ] || { echo "train-t2i: CONFIG=$$config does not exist" >&2; exit 2; }; \
	if [ -n "$(LATENTS)" ]; then extra="--data.init_args.latent_root=$(LATENTS)"; fi; \
	if [ -n "$(TEXT_ENCODER)" ]; then extra="$$extra --model.init_args.network_overrides.text_encoder_path=$(TEXT_ENCODER)"; fi; \
	set -x; $(PY) -m lightning_modules fit --config $$config $(if $(TRAINER_CONFIG),--config $(TRAINER_CONFIG)) $$extra $(if $(CKPT),--ckpt_path $(CKPT)) $(ARGS)

sample-t2i: install ## Text-to-image samples: CKPT=run.ckpt PROMPTS=prompts.txt TOKENIZER=path|none [TOKENIZER_PRESET] [OUT] [PER_PROMPT=1] [CFG] [STEPS]
	@[ -n "$(CKPT)" ] || { echo "sample-t2i: CKPT is not set (a text_dit DiffusionModule checkpoint, e.g. after 'make train-t2i': outputs/t2i_tiny/tb/t2i/tiny/checkpoints/last.ckpt TOKENIZER=none TOKENIZER_PRESET=debug)" >&2; exit 2; }
	@[ -n "$(PROMPTS)" ] || { echo "sample-t2i: PROMPTS is not set (a .txt file with one prompt per line, or a .jsonl with 'prompt')" >&2; exit 2; }
	@[ -n "$(TOKENIZER)" ] || { echo "sample-t2i: TOKENIZER is not set (the VFM-VAE save_pretrained folder whose latents the run trained on, or 'none' with TOKENIZER_PRESET=debug)" >&2; exit 2; }
	$(PY) -m lightning_modules sample-t2i --ckpt "$(CKPT)" --prompts "$(PROMPTS)" --tokenizer "$(TOKENIZER)" \
	  --out "$(or $(OUT),outputs/t2i_samples/$(basename $(notdir $(PROMPTS))))" --per-prompt $(or $(PER_PROMPT),1) \
	  $(if $(TOKENIZER_PRESET),--tokenizer-preset $(TOKENIZER_PRESET)) $(if $(CFG),--cfg-scale $(CFG)) \
	  $(if $(STEPS),--num-steps $(STEPS)) $(if $(DEVICES),--devices $(DEVICES)) $(SAMPLE_ARGS)

# ---------------------------------------------------------------- analyses: component ablation, representation dynamics (docs/analyses.md)
.PHONY: train-ablation ablation dynamics
ABLATION_ROWS := baseline fusion blocks full
train-ablation: install ## Component-ablation row (5M images, weak alignment): ROW=baseline|fusion|blocks|full DATA_ROOT VFM_PATH DINO_PATH VGG_PATH FILTER_LIST [TRAINER_CONFIG] [INCEPTION_PATH]
	@case " $(ABLATION_ROWS) " in *" $(ROW) "*) [ -n "$(ROW)" ] ;; *) false ;; esac || { echo "train-ablation: set ROW to one of: $(ABLATION_ROWS) (configs/ablation/ROW.yaml)" >&2; exit 2; }
	@for var in DATA_ROOT:"$(DATA_ROOT)" VFM_PATH:"$(VFM_PATH)" DINO_PATH:"$(DINO_PATH)" VGG_PATH:"$(VGG_PATH)" FILTER_LIST:"$(FILTER_LIST)"; do \
	  name=$${var%%:*}; value=$${var#*:}; \
	  [ -n "$$value" ] || { echo "train-ablation: $$name is not set (the same inputs as make train-tokenizer STAGE=1)" >&2; exit 2; }; \
	  [ -e "$$value" ] || { echo "train-ablation: $$name=$$value does not exist" >&2; exit 2; }; \
	done
	$(PY) -m lightning_modules fit --config configs/ablation/$(ROW).yaml \
	  --data.init_args.config.root=$(DATA_ROOT) --data.init_args.config.filter_keys_path=$(FILTER_LIST) \
	  --model.init_args.vfm_pretrained=$(VFM_PATH) --model.init_args.dino_pretrained=$(DINO_PATH) \
	  --model.init_args.vgg_path=$(VGG_PATH) $(if $(INCEPTION_PATH),--model.init_args.val_inception_path=$(INCEPTION_PATH)) \
	  --config $(or $(TRAINER_CONFIG),configs/trainer/ddp_bf16.yaml) $(if $(CKPT),--ckpt_path $(CKPT)) $(ARGS)

ablation: install ## Ablation table vs the paper: RECORDS="ROW=eval.json ..." and/or TOKENIZERS="ROW=export ..." IMAGES=dir [INCEPTION_PATH VGG_PATH PAPER=numbers.yaml OUT=table.json]
	@[ -n "$(RECORDS)$(TOKENIZERS)" ] || { echo "ablation: set RECORDS=\"ROW=eval.json ...\" (from make eval-reconstruction / make evaluate) and/or TOKENIZERS=\"ROW=export ...\" with IMAGES=dir; ROW in: $(ABLATION_ROWS)" >&2; exit 2; }
	@[ -z "$(TOKENIZERS)" ] || [ -n "$(IMAGES)" ] || { echo "ablation: IMAGES is not set (folder of validation images to evaluate TOKENIZERS on)" >&2; exit 2; }
	$(PY) -m lightning_modules ablation $(foreach r,$(RECORDS),--record $(r)) $(foreach t,$(TOKENIZERS),--tokenizer $(t)) \
	  $(if $(IMAGES),--images "$(IMAGES)") $(if $(INCEPTION_PATH),--inception-weights "$(INCEPTION_PATH)") \
	  $(if $(VGG_PATH),--vgg-weights "$(VGG_PATH)") $(if $(VFM_PATH),--vfm-path "$(VFM_PATH)") $(if $(NUM),--num-images $(NUM)) \
	  $(if $(IMAGE_SIZE),--resolution $(IMAGE_SIZE)) $(if $(PAPER),--paper "$(PAPER)") $(if $(OUT),--out "$(OUT)") $(ABLATION_ARGS)

dynamics: install ## SE-CKNNA per diffusion block over training: CKPTS="a.ckpt b.ckpt ..." IMAGES=png dir TOKENIZER=export REF=dinov2-large@weights [CLS_VFM STATS NUM OUT]
	@[ -n "$(CKPTS)" ] || { echo "dynamics: CKPTS is not set (diffusion checkpoints in training order, e.g. CKPTS=\"run/checkpoints/*.ckpt\")" >&2; exit 2; }
	@[ -n "$(IMAGES)" ] || { echo "dynamics: IMAGES is not set (folder of PNG probe images; the paper uses 10k ImageNet val images)" >&2; exit 2; }
	@[ -n "$(TOKENIZER)" ] || { echo "dynamics: TOKENIZER is not set (the export folder that encoded the diffusion run's latents)" >&2; exit 2; }
	@[ -n "$(REF)" ] || { echo "dynamics: REF is not set (reference VFM as PRESET@WEIGHTS, e.g. dinov2-large@weights/dinov2-large)" >&2; exit 2; }
	$(PY) -m lightning_modules dynamics --config configs/analyses/dynamics.yaml --checkpoints $(CKPTS) \
	  --images "$(IMAGES)" --tokenizer "$(TOKENIZER)" --reference "$(REF)" $(if $(CLS_VFM),--cls-vfm "$(CLS_VFM)") \
	  $(if $(STATS),--latent-stats "$(STATS)") $(if $(NUM),--num-images $(NUM)) $(if $(OUT),--out-dir "$(OUT)") $(DYNAMICS_ARGS)

# ---------------------------------------------------------------- analyses: linear probe, Table 1 (docs/analyses.md)
.PHONY: linear-probe table1 demo-analyses export-tokenizer
export-tokenizer: install ## Released VA-VAE / SD-VAE / VFM-VAE -> export folder every command takes: TOKENIZER=file|folder OUT=dir [TOKENIZER_PRESET=vavae-f16d32] [TOKENIZER_KWARGS]
	@[ -n "$(TOKENIZER)" ] || { echo "export-tokenizer: TOKENIZER is not set (a released VA-VAE .pt with TOKENIZER_PRESET=vavae-f16d32, a diffusers SD-VAE folder, or a VFM-VAE .pth with TOKENIZER_KWARGS)" >&2; exit 2; }
	@[ -n "$(OUT)" ] || { echo "export-tokenizer: OUT is not set (the export folder to write)" >&2; exit 2; }
	$(PY) -m lightning_modules export-tokenizer --tokenizer "$(TOKENIZER)" --out "$(OUT)" \
	  $(if $(TOKENIZER_PRESET),--tokenizer-preset $(TOKENIZER_PRESET)) $(if $(TOKENIZER_KWARGS),--tokenizer-kwargs "$(TOKENIZER_KWARGS)")

linear-probe: install ## Linear probe of tokenizer latents (paper Table 1): TOKENIZER=export folder|file|none DATA_ROOT=dir with train/ val/ [TOKENIZER_PRESET] [TOKENIZER_KWARGS] [IMAGE_SIZE=256] [DEVICES] [OUT] [PROBE_ARGS]
	@[ -n "$(TOKENIZER)" ] || { echo "linear-probe: TOKENIZER is not set (an export folder of any tokenizer, a released file with TOKENIZER_PRESET/TOKENIZER_KWARGS, or none with TOKENIZER_PRESET=debug for a random one); demo: make demo-analyses" >&2; exit 2; }
	@[ -n "$(DATA_ROOT)" ] || { echo "linear-probe: DATA_ROOT is not set (an ImageFolder root with train/ and val/ class folders, e.g. ImageNet)" >&2; exit 2; }
	@[ -d "$(DATA_ROOT)/train" ] && [ -d "$(DATA_ROOT)/val" ] || { echo "linear-probe: DATA_ROOT=$(DATA_ROOT) must hold train/ and val/" >&2; exit 2; }
	$(PY) -m lightning_modules linear-probe --tokenizer "$(TOKENIZER)" --data-root "$(DATA_ROOT)" \
	  $(if $(TOKENIZER_PRESET),--tokenizer-preset $(TOKENIZER_PRESET)) $(if $(TOKENIZER_KWARGS),--tokenizer-kwargs "$(TOKENIZER_KWARGS)") \
	  $(if $(VFM_PATH),--vfm-path "$(VFM_PATH)") --image-size $(or $(IMAGE_SIZE),256) $(if $(DEVICES),--devices $(DEVICES)) \
	  --out $(or $(OUT),outputs/linear_probe) $(PROBE_ARGS)

table1: install ## Paper Table 1 from your metric records beside the paper's numbers [CONFIG=configs/analyses/table1.yaml] [OUT=table1.md]
	$(PY) -m lightning_modules table1 --config $(or $(CONFIG),configs/analyses/table1.yaml) $(if $(OUT),--out $(OUT))

demo-analyses: install ## Table 1 at demo size for a tiny random VFM-VAE and VA-VAE, every column (CPU, minutes): outputs/demo_analyses
	$(PY) -m lightning_modules table1 --config configs/analyses/table1_demo.yaml --out outputs/demo_analyses/table1.md

# ---------------------------------------------------------------- 512 px, reference statistics, VFM comparison (docs/resolution_512.md, docs/vfm_comparison.md)
.PHONY: train-tokenizer-512 cache-latents-512 reference-stats vfm-comparison
# The `args:` mapping of a step YAML (configs/latent_cache/*.yaml, configs/vfm_comparison/*/{cache_latents,evaluate}.yaml)
# as command-line options: `key: value` -> --key value, `key: true` -> --key, null/false left out.
step_args = $(shell $(STEP_ARGS_PY) -c 'import sys, yaml; a = yaml.safe_load(open(sys.argv[1]))["args"]; print(" ".join("--" + k + ("" if v is True else " " + str(v)) for k, v in a.items() if v is not None and v is not False))' $(1))
VFM_COMPARISON := configs/vfm_comparison
STEP_ARGS_PY ?= $(PY)

train-tokenizer-512: install ## Tokenizer stage at 512 px (configs/tokenizer/*_512.yaml): STAGE=0|1|2|3 and the train-tokenizer variables
	@case "$(STAGE)" in 0|1|2|3) ;; *) echo "train-tokenizer-512: set STAGE=0|1|2|3 (the 512 px twins of the paper stages); the variables are train-tokenizer's (make help)" >&2; exit 2 ;; esac
	$(MAKE) --no-print-directory train-tokenizer STAGE=$(STAGE) TOKENIZER_STAGE_CONFIG_$(STAGE)=$(patsubst %.yaml,%_512.yaml,$(TOKENIZER_STAGE_CONFIG_$(STAGE)))

cache-latents-512: install ## Latent cache at 512 px (32x32x32; configs/latent_cache/imagenet512.yaml): DATA_ROOT TOKENIZER OUT [DEVICES STORE_IMAGES=1]
	$(MAKE) --no-print-directory cache-latents IMAGE_SIZE=512 CACHE_ARGS="$(call step_args,configs/latent_cache/imagenet512.yaml) $(CACHE_ARGS)"

reference-stats: install ## ADM reference statistics of an image folder: DATA_ROOT=dir OUT=ref.npz [IMAGE_SIZE=256|512 INCEPTION=weights.pth STORE_IMAGES=1 REF_ARGS=...]
	@[ -n "$(DATA_ROOT)" ] || { echo "reference-stats: DATA_ROOT is not set (a folder of reference images, e.g. /data/imagenet/train; searched at any depth)" >&2; exit 2; }
	@[ -n "$(OUT)" ] || { echo "reference-stats: OUT is not set (the .npz to write, ADM reference-batch layout; e.g. OUT=data/imagenet512_ref.npz)" >&2; exit 2; }
	$(PY) -m lightning_modules reference-stats --data-root "$(DATA_ROOT)" --out "$(OUT)" --image-size $(or $(IMAGE_SIZE),256) \
	  $(if $(INCEPTION),--inception-weights "$(INCEPTION)") $(if $(STORE_IMAGES),--store-images) $(REF_ARGS)

vfm-comparison: install ## Paper's VFM table (configs/vfm_comparison/VFM): VFM=siglip2|dinov2|eva STEP=tokenizer (STAGE=0..3)|cache|diffusion|sample|evaluate + that step's variables
	@[ -d "$(VFM_COMPARISON)/$(VFM)" ] && [ -n "$(VFM)" ] || { echo "vfm-comparison: set VFM to one of: $$(ls $(VFM_COMPARISON) | tr '\n' ' ')(the paper's VFM table; docs/vfm_comparison.md)" >&2; exit 2; }
	@case "$(STEP)" in tokenizer|cache|diffusion|sample|evaluate) ;; *) echo "vfm-comparison: set STEP=tokenizer (with STAGE=0..3), cache, diffusion, sample or evaluate, in this order (docs/vfm_comparison.md)" >&2; exit 2 ;; esac
	@if [ "$(STEP)" = tokenizer ]; then case "$(STAGE)" in 0|1|2|3) ;; *) echo "vfm-comparison: STEP=tokenizer needs STAGE=0|1|2|3" >&2; exit 2 ;; esac; fi
	$(MAKE) --no-print-directory $(if $(filter tokenizer,$(STEP)),train-tokenizer STAGE=$(STAGE) TOKENIZER_STAGE_CONFIG_$(STAGE)=$(wildcard $(VFM_COMPARISON)/$(VFM)/tokenizer_stage$(STAGE)_*.yaml)) \
	  $(if $(filter cache,$(STEP)),cache-latents CACHE_ARGS="$(call step_args,$(VFM_COMPARISON)/$(VFM)/cache_latents.yaml) $(CACHE_ARGS)") \
	  $(if $(filter diffusion,$(STEP)),train-diffusion CONFIG=$(VFM_COMPARISON)/$(VFM)/lightningdit_l1_100k.yaml) \
	  $(if $(filter sample,$(STEP)),sample SAMPLE_ARGS="$(call step_args,$(VFM_COMPARISON)/$(VFM)/sample.yaml) $(SAMPLE_ARGS)") \
	  $(if $(filter evaluate,$(STEP)),evaluate EVAL_ARGS="$(call step_args,$(VFM_COMPARISON)/$(VFM)/evaluate.yaml) $(EVAL_ARGS)")

# ---- text-to-image data and evaluation (docs/text_to_image.md)
.PHONY: cache-captions evaluate-t2i
cache-captions: install ## Captions (and SigLIP2 text features) beside a latent cache: CACHE=latent cache DATA_ROOT=caption folder|shards [SOURCE=folder|webdataset] [EMPTY_CAPTION=skip|null|error] [TEXT_FEATURES=1 TEXT_ENCODER=folder] [CAPTIONS_ARGS]
	@[ -n "$(CACHE)" ] || { echo "cache-captions: CACHE is not set (the latent cache folder of 'make cache-latents' whose images the captions describe)" >&2; exit 2; }
	@[ -n "$(DATA_ROOT)" ] || { echo "cache-captions: DATA_ROOT is not set (a caption folder with captions.jsonl, or a folder/glob of WebDataset shards with SOURCE=webdataset)" >&2; exit 2; }
	$(PY) -m lightning_modules cache-captions --cache "$(CACHE)" --data-root "$(DATA_ROOT)" --source $(or $(SOURCE),folder) \
	  $(if $(EMPTY_CAPTION),--empty-caption $(EMPTY_CAPTION)) $(if $(TEXT_FEATURES),--text-features) \
	  $(if $(TEXT_ENCODER),--text-encoder-path "$(TEXT_ENCODER)") $(CAPTIONS_ARGS)

evaluate-t2i: install ## FID and CLIP score of sample-t2i output: SAMPLES=dir [REFERENCE=dir INCEPTION=weights.pth] [CLIP=folder] [OUT=metrics.json] [EVAL_ARGS]
	@[ -n "$(SAMPLES)" ] || { echo "evaluate-t2i: SAMPLES is not set (a 'make sample-t2i' output folder with images/ and prompts.jsonl)" >&2; exit 2; }
	@[ -n "$(REFERENCE)$(CLIP)" ] || { echo "evaluate-t2i: set REFERENCE=dir with INCEPTION=weights.pth (FID) and/or CLIP=folder (CLIP score)" >&2; exit 2; }
	@[ -z "$(REFERENCE)" ] || [ -n "$(INCEPTION)" ] || { echo "evaluate-t2i: INCEPTION is not set (torch-fidelity Inception weights .pth, needed for FID with REFERENCE)" >&2; exit 2; }
	$(PY) -m lightning_modules evaluate-t2i --samples "$(SAMPLES)" $(if $(REFERENCE),--reference "$(REFERENCE)" --inception-weights "$(INCEPTION)") \
	  $(if $(CLIP),--clip "$(CLIP)") $(if $(OUT),--out "$(OUT)") $(EVAL_ARGS)
