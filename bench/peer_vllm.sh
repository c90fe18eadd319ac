#!/usr/bin/env bash
# One sitting against the peer: vLLM-CPU (built by ../shared/peer/build_vllm_cpu.sh into /tmp/vllm-cpu),
# our cluster (epd up) and our colocated server, under the same two loads from `vllm bench serve`:
# 1 image 224px + 64 text tokens at concurrency 8, and 3 images 448px + 64 text tokens at concurrency 4,
# 32 output tokens with ignore_eos.
#
# The servers are started together and stay up, idle but for the one under load (their idle CPU is
# measured and printed first); then ROUNDS rounds, the order of the servers rotating each round, run
# each load on each server: 16 warm-up requests, then the measured ones, with every server
# process's CPU per request (bench.tree_cpu). Every run has its own seed, the same on every server
# of a round: no server sees a prompt or an image twice (caches would answer repeats). This machine's speed drifts by tens of percent within
# an hour: alternating in one sitting is what makes the servers' figures comparable.
# bench/peer_report.py prints the medians as a table. `paced` is the cluster with its decode steps at
# least PACE_MS apart (--step-interval-ms, default 2); `base` is the cluster of another checkout
# (BASE_REPO, e.g. a `git worktree` of the commit before a change, with this checkout's venv).
# Usage: [CKPT=dir] [OUT=dir] [N1=256] [N3=128] [ROUNDS=3] [REPO=checkout] [PACE_MS=2] [BASE_REPO=checkout]
#        bench/peer_vllm.sh [vllm,cluster,colocated,paced,base]
set -u
CKPT=${CKPT:-$(cd "$(dirname "$0")/.." && pwd)/shared/assets/demo}
OUT=${OUT:-/tmp/peer/out}; mkdir -p $OUT
REPO=${REPO:-$(cd "$(dirname "$0")/.." && pwd)}
VB=/tmp/vllm-cpu/bin
PY="env PYTHONPATH=$REPO $REPO/.venv/bin/python"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=1
IFS=, read -r -a SERVERS <<< "${1:-vllm,cluster,colocated}"
declare -A PORT=([vllm]=8011 [cluster]=8012 [colocated]=8013 [paced]=8014 [base]=8015) PID=()

start() {  # server
  case $1 in
    vllm) $VB/vllm serve $CKPT --served-model-name demo --host 127.0.0.1 --port ${PORT[vllm]} --max-model-len 4096 \
            --max-num-seqs 8 --limit-mm-per-prompt '{"image":{"count":3,"width":448,"height":448},"video":0}' \
            > $OUT/vllm-server.log 2>&1 & ;;
    cluster|colocated|paced|base)
      local flags=() src=$REPO; [[ $1 == colocated ]] && flags=(--colocated)
      [[ $1 == paced ]] && flags=("--decode-arg=--step-interval-ms=${PACE_MS:-2}")
      [[ $1 == base ]] && src=${BASE_REPO:?BASE_REPO: the checkout whose cluster is the base}
      (cd $src && PYTHONPATH=$src exec $REPO/.venv/bin/python -m router.cli up --model $CKPT --port ${PORT[$1]} \
        --base-port 0 --torch-threads 1 --log-dir $OUT/$1-logs "${flags[@]}" \
        > $OUT/$1-server.log 2>&1) & ;;
  esac
  PID[$1]=$!
}
ready() { for i in $(seq 1 300); do curl -sf http://127.0.0.1:${PORT[$1]}/v1/models >/dev/null && return 0; sleep 2; done; return 1; }
load() {  # server shape round
  local server=$1 shape=$2 round=$3
  local common=(--backend openai-chat --base-url http://127.0.0.1:${PORT[$server]} --endpoint /v1/chat/completions
    --model $CKPT --served-model-name demo --tokenizer $CKPT --dataset-name random-mm
    --random-output-len 32 --ignore-eos --random-mm-num-mm-items-range-ratio 0
    --percentile-metrics ttft,tpot,itl,e2el --metric-percentiles 50,90,99)
  local args=(--max-concurrency 8 --random-input-len 64 --random-mm-base-items-per-request 1
    --random-mm-limit-mm-per-prompt '{"image": 1, "video": 0}' --random-mm-bucket-config '{(224, 224, 1): 1.0}')
  local n=${N1:-256}
  if [[ $shape == 3img ]]; then
    n=${N3:-128}
    args=(--max-concurrency 4 --random-input-len 64 --random-mm-base-items-per-request 3
      --random-mm-limit-mm-per-prompt '{"image": 3, "video": 0}' --random-mm-bucket-config '{(448, 448, 1): 1.0}')
  fi
  local txt=$OUT/$server-$shape-r$round.txt
  # Seeds: the warm-up's and every round's prompts and images are new to every server (no cache hits).
  $VB/vllm bench serve "${common[@]}" "${args[@]}" --num-prompts 16 --seed $((1000 + round)) > /dev/null 2>&1
  $PY -m bench.tree_cpu ${PID[$server]} > $txt.cpu.json
  /usr/bin/time -f "client cpu user %U s sys %S s wall %e s" $VB/vllm bench serve "${common[@]}" "${args[@]}" \
    --num-prompts $n --seed $round > $txt 2>&1
  $PY -m bench.tree_cpu ${PID[$server]} --since $txt.cpu.json --requests $n >> $txt
  echo "round $round $server $shape: $(grep -E 'Request throughput|Median TTFT|Median TPOT' $txt | tr -s ' ' | tr '\n' ' ')"
}

for s in "${SERVERS[@]}"; do start $s; done
for s in "${SERVERS[@]}"; do ready $s || { echo "$s did not become ready: $OUT/$s-server.log"; exit 1; }; done
sleep 5
for s in "${SERVERS[@]}"; do  # idle cost: what the others spend while one is under load
  $PY -m bench.tree_cpu ${PID[$s]} > $OUT/$s-idle.json; sleep 10
  echo "$s idle: $($PY -m bench.tree_cpu ${PID[$s]} --since $OUT/$s-idle.json --requests 10 | tail -1 | sed 's/ms\/request/ms per second/')"
done
for round in $(seq 1 ${ROUNDS:-3}); do
  order=("${SERVERS[@]:$(( (round - 1) % ${#SERVERS[@]} ))}" "${SERVERS[@]:0:$(( (round - 1) % ${#SERVERS[@]} ))}")
  for s in "${order[@]}"; do for shape in 1img 3img; do load $s $shape $round; done; done
done
for s in "${SERVERS[@]}"; do kill -INT ${PID[$s]} 2>/dev/null; done; sleep 5
for s in "${SERVERS[@]}"; do kill ${PID[$s]} 2>/dev/null; done; pkill -f "vllm serve $CKPT"; wait
$PY -m bench.peer_report $OUT
