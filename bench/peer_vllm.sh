#!/usr/bin/env bash
# One sitting against the peer: vLLM-CPU (built by ../shared/peer/build_vllm_cpu.sh into /tmp/vllm-cpu),
# our cluster (epd up) and our colocated server, each alone, the same two loads from `vllm bench serve`:
# 1 image 224px + 64 text tokens at concurrency 8, and 3 images 448px + 64 text tokens at concurrency 4,
# 32 output tokens with ignore_eos; each load warmed up with 16 requests, then measured, with every server
# process's CPU per request (bench.tree_cpu).
# Usage: [CKPT=dir] [OUT=dir] [N1=256] [N3=128] [REPO=checkout] bench/peer_vllm.sh [all|vllm|cluster|colocated]
set -u
CKPT=${CKPT:-$(cd "$(dirname "$0")/.." && pwd)/shared/assets/demo}
OUT=${OUT:-/tmp/peer/out}; mkdir -p $OUT
REPO=${REPO:-$(cd "$(dirname "$0")/.." && pwd)}
VB=/tmp/vllm-cpu/bin
PY="env PYTHONPATH=$REPO $REPO/.venv/bin/python"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=1
load() {  # name port label server-pid: each load warmed up (16 requests), then measured with the server's CPU
  local name=$1 port=$2 label=$3 pid=$4
  local common=(--backend openai-chat --base-url http://127.0.0.1:$port --endpoint /v1/chat/completions
    --model $CKPT --served-model-name demo --tokenizer $CKPT --dataset-name random-mm
    --random-output-len 32 --ignore-eos --random-mm-num-mm-items-range-ratio 0
    --percentile-metrics ttft,tpot,itl,e2el --metric-percentiles 50,90,99 --seed 0)
  local one=(--max-concurrency 8 --random-input-len 64 --random-mm-base-items-per-request 1
    --random-mm-limit-mm-per-prompt '{"image": 1, "video": 0}' --random-mm-bucket-config '{(224, 224, 1): 1.0}')
  local three=(--max-concurrency 4 --random-input-len 64 --random-mm-base-items-per-request 3
    --random-mm-limit-mm-per-prompt '{"image": 3, "video": 0}' --random-mm-bucket-config '{(448, 448, 1): 1.0}')
  for shape in 1img 3img; do
    local n=${N1:-32} args=("${one[@]}")
    [[ $shape == 3img ]] && n=${N3:-16} args=("${three[@]}")
    $VB/vllm bench serve "${common[@]}" "${args[@]}" --num-prompts 16 > /dev/null 2>&1  # warm-up
    $PY -m bench.tree_cpu $pid > $OUT/$label-$shape.cpu.json
    /usr/bin/time -f "client cpu user %U s sys %S s wall %e s" $VB/vllm bench serve "${common[@]}" "${args[@]}" \
      --num-prompts $n > $OUT/$label-$shape.txt 2>&1
    $PY -m bench.tree_cpu $pid --since $OUT/$label-$shape.cpu.json --requests $n >> $OUT/$label-$shape.txt
  done
  grep -E "Request throughput|Median TTFT|Median TPOT|client cpu|Successful|Failed|server cpu" $OUT/$label-1img.txt $OUT/$label-3img.txt
}
wait_http() { for i in $(seq 1 300); do curl -sf http://127.0.0.1:$1/v1/models >/dev/null && return 0; sleep 2; done; return 1; }
which=${1:-all}
if [[ $which == all || $which == vllm ]]; then
  $VB/vllm serve $CKPT --served-model-name demo --host 127.0.0.1 --port 8011 --max-model-len 4096 --max-num-seqs 8 \
    --limit-mm-per-prompt '{"image":{"count":3,"width":448,"height":448},"video":0}' > $OUT/vllm-server.log 2>&1 &
  VP=$!; wait_http 8011 && load vllm 8011 vllm $VP; kill $VP; wait $VP 2>/dev/null
fi
for mode in cluster colocated; do
  [[ $which == all || $which == $mode ]] || continue
  flags=(); [[ $mode == colocated ]] && flags=(--colocated)
  (cd $REPO && PYTHONPATH=$REPO exec $REPO/.venv/bin/python -m router.cli up --model $CKPT --port 8012 --torch-threads 1 --log-dir $OUT/$mode-logs "${flags[@]}" > $OUT/$mode-server.log 2>&1) &
  EP=$!; for i in $(seq 1 300); do grep -q "cluster ready" $OUT/$mode-server.log && break; sleep 2; done; sleep 2; load $mode 8012 $mode $EP; kill -INT $EP; wait $EP 2>/dev/null; sleep 3
done
