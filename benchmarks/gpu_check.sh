#!/usr/bin/env bash
# The GPU checks in one go (about 10 minutes on one GPU): overhead of the prompts in fp32 and bf16,
# clips/s of a full prompt-tuning step (ViT-B/16, 224 px, 8 frames, batch 8 + one anchor clip)
# against the reference-style step and plain full fine-tuning, fp16 with a GradScaler, torchrun
# with nccl, and peak memory with and without gradient checkpointing.
#
#   bash benchmarks/gpu_check.sh OUT_DIR            # on a machine with a GPU
#   bash benchmarks/gpu_check.sh OUT_DIR --dry-run  # the same steps on a tiny model on the CPU (seconds)
#
# Every figure lands in OUT_DIR as JSON (with spreads and the load); the log is OUT_DIR/gpu_check.log.
set -euo pipefail
out=${1:?usage: gpu_check.sh OUT_DIR [--dry-run]}
mode=${2:-}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
exec > >(tee "$out/gpu_check.log") 2>&1

if [ "$mode" = "--dry-run" ]; then
  device=cpu; size=(--tiny --reps 1 --classes 4 --memory-classes 8 --batch 2); nproc=1
else
  device=cuda; size=(--reps 10 --classes 100,400 --memory-classes 400 --batch 8); nproc=$(python -c "import torch; print(torch.cuda.device_count())")
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
fi
python -c "import torch, promptcouple; print('torch', torch.__version__, 'promptcouple', promptcouple.__version__, 'cuda', torch.cuda.is_available())"

bench="python $here/bench_overhead.py --device $device ${size[*]}"
echo "== overhead and throughput, fp32"
$bench --precision fp32 --parts vision,text,step,throughput --json "$out/overhead_fp32.json"
echo "== overhead and throughput, bf16 autocast"
$bench --precision bf16 --parts vision,text,step,throughput --json "$out/overhead_bf16.json"
echo "== fp16 autocast with GradScaler, compiled step beside eager"
$bench --precision fp16 --parts step,throughput --compile ${mode:+--compile-backend aot_eager} \
  --json "$out/overhead_fp16_compiled.json"
echo "== peak memory with and without gradient checkpointing (bf16)"
$bench --precision bf16 --parts memory --json "$out/memory_bf16.json"
echo "== torchrun ($nproc process(es); nccl on CUDA)"
python "$here/ddp_check.py" --out "$out/ddp" --nproc "$nproc" --device "$device" \
  --precision "$([ "$device" = cuda ] && echo bf16 || echo fp32)"
echo "== done: figures in $out"
