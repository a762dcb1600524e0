#!/bin/bash
# Usage: bench/grpc_vs_rest.sh HTTP_PORT GRPC_PORT  (a modeldock serving the MLP on 127.0.0.1)
# gRPC vs REST on the MLP, same server, same run, perf_analyzer (Triton's load tool) for both.
PA=${PA:-.venv/peers/perf_analyzer/perf_analyzer}  # make perf-analyzer
HP=$1; GP=$2
for round in 1 2; do
for proto in http grpc; do
  for c in 1 32; do
    url=127.0.0.1:$HP; [ $proto = grpc ] && url=127.0.0.1:$GP
    out=$(timeout 120 $PA -m mlp -i $proto -u $url --concurrency-range $c:$c --measurement-interval 4000 --stability-percentage 50 --max-trials 3 2>&1)
    thr=$(echo "$out" | grep -m1 "Throughput:" | awk '{print $2}')
    p50=$(echo "$out" | grep -m1 "p50 latency:" | awk '{print $3}')
    p99=$(echo "$out" | grep -m1 "p99 latency:" | awk '{print $3}')
    echo "round $round $proto C=$c throughput $thr infer/s p50 ${p50}us p99 ${p99}us"
  done
done
done
