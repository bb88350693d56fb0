#!/usr/bin/env bash
# The batchgate demo: build, start the provider simulator, a scheduler and a
# worker, submit the demo jobs, wait for every outcome, print the ledger and
# stop everything it started. Exits non-zero if any step does not go as
# expected.
#
# The demo runs in the RabbitMQ vhost `batchgate-demo` and under the Redis key
# prefix `batchgate-demo`, both emptied at the start, so each run starts from
# a fresh budget. After the run, `batchgate status JOB` and `batchgate ledger`
# still work with the environment printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
samples=${BATCHGATE_SAMPLES:-$root/../shared/samples}
work=$root/.demo
mkdir -p "$work"

step() { printf '\n== %s\n' "$*"; }
fail() { echo "demo failed: $*" >&2; exit 1; }

for sample in catalog-enrichment.openai.jsonl package-embeddings.openai.jsonl \
  docstring-review.anthropic.jsonl catalog-enrichment-full.openai.jsonl.gz; do
  [ -f "$samples/$sample" ] || fail "sample $samples/$sample not found (set BATCHGATE_SAMPLES to the samples folder)"
done

step "Starting RabbitMQ and Redis if needed"
bash scripts/services.sh

step "Building"
cargo build --workspace --bins
bin=$root/target/debug

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

step "Preparing a fresh vhost and key prefix"
vhost=batchgate-demo
rabbitmqctl -q delete_vhost "$vhost" >/dev/null 2>&1 || true
rabbitmqctl -q add_vhost "$vhost" >/dev/null
rabbitmqctl -q set_permissions -p "$vhost" guest '.*' '.*' '.*' >/dev/null
redis-cli --scan --pattern 'batchgate-demo:*' | xargs -r redis-cli del >/dev/null

step "Starting the provider simulator"
"$bin/batchgate-sim" --port 0 --seed 42 --validating-secs 1 --in-progress-secs 6 --finalizing-secs 1 \
  --failure-ratio 0.02 >"$work/simulator.out" 2>"$work/simulator.log" &
pids+=($!)
for _ in $(seq 1 50); do
  base_url=$(sed -n 's/^batchgate-sim listening on //p' "$work/simulator.out")
  [ -n "$base_url" ] && break
  sleep 0.2
done
[ -n "${base_url:-}" ] || fail "the simulator did not start; see $work/simulator.log"
echo "simulator at $base_url"

export BATCHGATE_CONFIG=$root/config/batchgate.toml
export BATCHGATE_BROKER_URL="amqp://guest:guest@127.0.0.1:5672/$vhost"
export BATCHGATE_BROKER_PREFIX=batchgate-demo
export BATCHGATE_REDIS_PREFIX=batchgate-demo
export BATCHGATE_OPENAI_BASE_URL=$base_url
export BATCHGATE_ANTHROPIC_BASE_URL=$base_url
export BATCHGATE_POLL_INTERVAL_SECS=2
export OPENAI_API_KEY=sk-demo-simulator-key
export ANTHROPIC_API_KEY=sk-ant-demo-simulator-key

step "Starting the scheduler and a worker"
"$bin/batchgate-scheduler" 2>"$work/scheduler.log" &
pids+=($!)
"$bin/batchgate-worker" 2>"$work/worker.log" &
pids+=($!)

step "Submitting catalog-enrichment (data-eng, 2,000 chat requests)"
"$bin/batchgate" submit --manifest demo/catalog-enrichment.toml --input "$samples/catalog-enrichment.openai.jsonl"
step "Submitting package-embeddings (search, 5,000 embedding requests)"
"$bin/batchgate" submit --manifest demo/package-embeddings.toml --input "$samples/package-embeddings.openai.jsonl"
"$bin/batchgate" wait demo-package-embeddings --timeout-secs 60 >/dev/null
step "Submitting docstring-review (ml-eval, 457 Anthropic requests, above ml-eval's review threshold)"
"$bin/batchgate" submit --manifest demo/docstring-review.toml --input "$samples/docstring-review.anthropic.jsonl"
for _ in $(seq 1 50); do
  "$bin/batchgate" review list --json | grep -q demo-docstring-review && break
  sleep 0.2
done
"$bin/batchgate" review list
step "Approving docstring-review"
"$bin/batchgate" review approve demo-docstring-review --by demo-lead --note "within the sprint plan"
step "Submitting catalog-enrichment-full (data-eng, 63,697 chat requests, gzip)"
"$bin/batchgate" submit --manifest demo/catalog-enrichment-full.toml --input "$samples/catalog-enrichment-full.openai.jsonl.gz"
step "Submitting a search job larger than its budget"
"$bin/batchgate" submit --manifest demo/search-over-budget.toml --input "$samples/catalog-enrichment.openai.jsonl"
step "Submitting a manifest without its cost center (rejected before publishing)"
if "$bin/batchgate" submit --manifest demo/missing-cost-center.toml \
  --input "$samples/catalog-enrichment.openai.jsonl" 2>"$work/missing.err"; then
  fail "submit accepted a manifest without cost_center"
fi
cat "$work/missing.err"
grep -q cost_center "$work/missing.err" || fail "the rejection does not name cost_center"

step "Waiting for every job to end"
jobs="demo-catalog-enrichment demo-package-embeddings demo-docstring-review demo-catalog-enrichment-full demo-search-over-budget"
# shellcheck disable=SC2086
"$bin/batchgate" wait $jobs --timeout-secs 150

expect_state() {
  local state
  state=$("$bin/batchgate" status "$1" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["job"]["state"])')
  [ "$state" = "$2" ] || fail "job $1 ended $state, expected $2 (logs in $work)"
}
expect_state demo-catalog-enrichment completed
expect_state demo-package-embeddings completed
expect_state demo-docstring-review completed
expect_state demo-catalog-enrichment-full completed
expect_state demo-search-over-budget rejected
parts=$("$bin/batchgate" status demo-catalog-enrichment-full --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["parts"]))')
[ "$parts" = 2 ] || fail "demo-catalog-enrichment-full ran as $parts provider batches, expected 2"

step "Job status"
for job in $jobs; do
  "$bin/batchgate" status "$job"
  echo
done

step "Ledger"
"$bin/batchgate" ledger --month "$(date -u +%Y-%m)"

cat <<TEXT

Demo finished. To look further, with the scheduler and worker stopped:
  export BATCHGATE_BROKER_URL=$BATCHGATE_BROKER_URL BATCHGATE_BROKER_PREFIX=batchgate-demo BATCHGATE_REDIS_PREFIX=batchgate-demo
  target/debug/batchgate status demo-catalog-enrichment
  target/debug/batchgate ledger --month $(date -u +%Y-%m) --json
TEXT
