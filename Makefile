# `make demo` sets everything up and runs the main job on the embedded models;
# `make test` sets everything up and runs the test suite. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo app test test-slow bench quality eval-table evidence evidence-bars evidence-report toy-v2 toy-v2-snapshot clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(PY) scripts/run.py +experiment=demo

# edit in the browser: a local web app on http://127.0.0.1:7860/ (APP_ARGS: --port 8000 model=sd-v1 ...)
app: $(STAMP)
	$(PY) scripts/app.py $(APP_ARGS)

test: $(STAMP)
	$(PY) -m pytest

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

bench: $(STAMP)
	$(PY) bench/unet_step.py

# the embedded models' quality bars, also written into msbd/toy/weights/MODEL_CARD.md and README.md
quality: $(STAMP)
	rm -f outputs/toy_quality/latest/DONE
	$(PY) scripts/run.py +experiment=toy_quality toy_quality.update_card=true hydra.run.dir=outputs/toy_quality/latest
	$(PY) scripts/readme_section.py QUALITY outputs/toy_quality/latest/results.md

# regenerate the first benchmark table (docs/BENCHMARKS.md) from the eval experiment
# That table is a reduced run (n = 2 per variant, 1 MP, large masks: ~20 min on 2 cores);
# `make eval-table EVAL_ARGS=` runs the full default benchmark (1-16 MP, both masks: many hours on a CPU).
EVAL_ARGS ?= eval.tasks=[0,1] eval.sizes=[1024] eval.masks=[large] msbd.decoder_opt.iterations=20

eval-table: $(STAMP)
	rm -f outputs/eval/readme/DONE
	$(PY) scripts/run.py +experiment=eval hydra.run.dir=outputs/eval/readme $(EVAL_ARGS)
	$(PY) scripts/readme_section.py RESULTS outputs/eval/readme/results.md docs/BENCHMARKS.md

# issue 21's claim table (docs/evidence.md). `make evidence` starts the readme preset in the background (about two
# hours on 2 cores); run it again after a stop and it resumes (finished edits are skipped). `make evidence-bars`
# runs the issue's 4 MP bars the same way (about 5 minutes a task at one thread; 40 tasks). EVIDENCE_PRESET=full
# is the >= 40-task benchmark at 1 and 4 MP (days on a CPU). `make evidence-report` rebuilds claims.md, results.md
# and the figures from the rows on disk, without editing (bars.md too when the bars' rows exist), and puts the claims
# into README's CLAIMS section.
EVIDENCE_PRESET ?= readme
EVIDENCE_DIR ?= outputs/evidence/$(EVIDENCE_PRESET)
BARS_DIR ?= outputs/evidence/readme_bars

evidence: $(STAMP)
	mkdir -p $(EVIDENCE_DIR)
	nohup $(PY) scripts/run.py +experiment=evidence evidence.preset=$(EVIDENCE_PRESET) hydra.run.dir=$(EVIDENCE_DIR) \
		>> $(EVIDENCE_DIR)/nohup.log 2>&1 &
	@echo "running in the background: tail -f $(EVIDENCE_DIR)/nohup.log (one row per edit in $(EVIDENCE_DIR)/rows.jsonl)"

evidence-bars: $(STAMP)
	mkdir -p $(BARS_DIR)
	nohup $(PY) scripts/run.py +experiment=evidence evidence.preset=readme 'evidence.groups=[bars]' \
		hydra.run.dir=$(BARS_DIR) >> $(BARS_DIR)/nohup.log 2>&1 &
	@echo "running in the background: tail -f $(BARS_DIR)/nohup.log (one row per edit in $(BARS_DIR)/rows.jsonl)"

evidence-report: $(STAMP)
	$(PY) -m experiments.evidence_report $(EVIDENCE_DIR)
	if [ -f $(BARS_DIR)/rows.jsonl ]; then $(PY) -m experiments.evidence_report $(BARS_DIR); fi
	if grep -q "<!-- CLAIMS:BEGIN -->" README.md; then $(PY) scripts/readme_section.py CLAIMS $(EVIDENCE_DIR)/claims.md; fi

# Toy world v2 (issue 18): a VAE with 8 latent channels and a 10 M-parameter UNet (width 48, 16 GroupNorm groups) on
# twice the single-object scenes, then its VAE decoder fine-tuned (encoder frozen), about 100 + 200 + 30 minutes on 2
# cores, in the background. Resumable: run it again after a stop, or with a stage's budget raised, and that stage
# continues from its last.ckpt (the VAE only while no UNet or decoder fine-tune is built on it). It writes into
# $(TOY_V2_DIR)/export, not over the shipped weights; measure it with `python scripts/run.py +experiment=toy_quality
# model.ckpt=$(TOY_V2_DIR)/export/toy-ldm.safetensors model.ldm_config=$(TOY_V2_DIR)/export/toy-ldm.json`.
TOY_V2_DIR ?= train_runs/toy_v2
TOY_V2 := run_dir=$(TOY_V2_DIR) export_dir=$(TOY_V2_DIR)/export 'stages=[vae,ldm,decoder]' arch.latent_channels=8 \
	arch.unet_channels=48 arch.unet_head_channels=24 arch.unet_norm_groups=16 data.n_single=16000 \
	vae.max_minutes=100 ldm.max_minutes=200 ldm.max_steps=5000 ldm.decay_start=500 decoder.max_minutes=30
toy-v2: $(STAMP)
	mkdir -p $(TOY_V2_DIR)
	@if [ -f $(TOY_V2_DIR)/train.pid ] && kill -0 $$(cat $(TOY_V2_DIR)/train.pid) 2>/dev/null; then \
		echo "error: a toy-v2 training is already running (pid $$(cat $(TOY_V2_DIR)/train.pid))"; exit 2; fi
	$(PY) scripts/train_toy.py $(TOY_V2) dry_run=true      # a bad option stops here, in the foreground
	nohup $(PY) scripts/train_toy.py $(TOY_V2) >> $(TOY_V2_DIR)/nohup.log 2>&1 & echo $$! > $(TOY_V2_DIR)/train.pid
	@echo "training in the background: tail -f $(TOY_V2_DIR)/nohup.log"

toy-v2-snapshot: $(STAMP)     # the UNet as it stands, beside the running training: $(TOY_V2_DIR)/snapshots/step<N>/
	$(PY) scripts/train_toy.py $(TOY_V2) snapshot=true

clean-venv:
	rm -rf $(VENV)
