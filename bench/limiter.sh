#!/usr/bin/env bash
# Rate limiter micro-benchmark (crates/tenantry-limits/examples/limiter_bench.rs):
#   - local: in-process GCRA decision cost, ns/decision (1M checks over 1000 keys, 1 thread)
#   - redis: decisions/s and p50/p99 latency of check() at 64 concurrent tasks for 5 s, on one
#     single-threaded runtime (a gateway worker's shape: concurrent decisions share script calls)
#
#   bash bench/limiter.sh                                  # redis://127.0.0.1:6379
#   bash bench/limiter.sh --redis redis://127.0.0.1:6380 --seconds 10 --concurrency 128
#   bash bench/limiter.sh --no-redis                       # local figure only
#
# Only talks to the given Redis (keep it on 127.0.0.1); its keys expire within 100 ms and are
# deleted at the end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo run --release -p tenantry-limits --example limiter_bench -- "$@"
