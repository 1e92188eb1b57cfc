#!/usr/bin/env bash
# Prepared GPU check: ONE command, about 5-8 minutes on one H100/H200-class GPU.
#
#   bash benchmarks/gpu_check.sh            # suite "gpu": LightningDiT-XL/1 and REG SiT-XL/1 bf16 training
#                                           # steps (batch 32, fused AdamW, EMA) with and without
#                                           # torch.compile, and one tokenizer G+D step at 256 px;
#                                           # suite "gpu-sampling": sampling both XL nets at the paper
#                                           # protocol's fp32 (+TF32) vs bf16 (vfmvae sample --precision)
#   EXTRA=1 bash benchmarks/gpu_check.sh    # + suite "gpu-extra" (sampling at 250 steps, latent caching,
#                                           #   CKNNA n=10,000, fp32 and checkpointing rows): ~5 more minutes
#
# Writes the markdown table, the JSON report and nvidia-smi/environment info to $OUT (default
# outputs/bench/gpu; on the lent device machine $OUT is the folder that comes back). Each case also runs
# one extra step under torch.cuda.set_sync_debug_mode("warn") and lists any host syncs it finds.
# Extra arguments go to `python -m benchmarks` (e.g. --batch-size 64, --only LightningDiT).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
OUT=${OUT:-outputs/bench/gpu}
mkdir -p "$OUT"

{ date -u +"%Y-%m-%dT%H:%M:%SZ"; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true; } \
  | tee "$OUT/device.txt"
"$PY" - <<'PY' | tee -a "$OUT/device.txt"
import torch
assert torch.cuda.is_available(), "benchmarks/gpu_check.sh needs a CUDA device (CPU numbers: make bench)"
print("torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name(0))
PY

"$PY" -m benchmarks --suite gpu --sync-debug --out-dir "$OUT" "$@" 2> >(tee "$OUT/gpu.log" >&2) | tee "$OUT/gpu-table.md"
# Sampling precision: the fp32 (+TF32) paper protocol against opt-in bf16 (vfmvae sample --precision fp32|bf16).
"$PY" -m benchmarks --suite gpu-sampling --out-dir "$OUT" "$@" 2> >(tee "$OUT/gpu-sampling.log" >&2) \
  | tee "$OUT/gpu-sampling-table.md"
if [ -n "${EXTRA:-}" ]; then
  "$PY" -m benchmarks --suite gpu-extra --sync-debug --out-dir "$OUT" "$@" 2> >(tee "$OUT/gpu-extra.log" >&2) \
    | tee "$OUT/gpu-extra-table.md"
fi
echo "Paste $OUT/gpu-table.md into docs/benchmarks.md (GPU section) with the GPU name and date from $OUT/device.txt."
