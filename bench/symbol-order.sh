#!/usr/bin/env bash
# Writes Sources/mesh/symbol-order.txt: the functions a running sidecar pair executes (start-up,
# HTTP/1.1, HTTP/2, gRPC-shaped calls, tracing, a metrics scrape), hottest first. The release
# link (Package.swift) places them together at the front of the binary's code.
#
# Why: the kernel maps a binary's code 64 KB at a time around each page the process touches,
# and what is mapped counts in its RSS. The ~3 MB of code a sidecar runs were spread over the
# ~35 MB in `mesh` (control plane, stores, CLI, libraries) and kept 20 MB of it resident; packed
# together they span about 8 MB (the toolchain's static libraries come in whole object files),
# of which a sidecar under load touches ~7 MB. Functions without a symbol cannot be listed:
# Sources/mesh/code-layout.ld gathers those.
#
# Run it after changes that add or rename much of the data path (stale names are skipped by
# the linker; the benchmark's RSS column shows when the list needs refreshing). It takes a few
# minutes: the proxies run under valgrind's callgrind, which counts every function executed.
# KEEP=1 keeps the work directory (callgrind's files) for a look with callgrind_annotate.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

need=()
for tool in nginx wrk openssl valgrind; do command -v "$tool" >/dev/null || need+=("$tool"); done
command -v h2load >/dev/null || need+=(nghttp2-client)
if (( ${#need[@]} )); then
  echo "== installing ${need[*]} from Debian"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

echo "== building mesh (release, as deployed: scripts/build-release.sh)"
BIN=$(scripts/build-release.sh 2> >(tail -1 >&2))

WORK=$(mktemp -d /tmp/swiftmesh-order.XXXXXX)
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; [[ -n "${KEEP:-}" ]] || rm -rf "$WORK"; }
trap cleanup EXIT
# valgrind cannot read lld's debug information: it runs a copy without it (same symbols).
objcopy --strip-debug "$BIN" "$WORK/mesh"
MESH=$WORK/mesh

cd "$WORK"
source "$ROOT/bench/lib.sh"
start nginx -c "$WORK/nginx-backend/nginx.conf" -p "$WORK/nginx-backend"; wait_port $BACKEND

# The pair as the benchmark runs it, with tracing on (so that the exporter's code is listed
# too): once with HTTP/1.1 traffic to the HTTP/1.1 backend, once with HTTP/2 and gRPC-shaped
# calls to the h2c backend (an app gets the protocol its caller used).
sed -e "s/18102/18162/; s/18104/18164/; s/18105/18165/; s/127.0.0.1:$BACKEND\$/127.0.0.1:$BACKEND_H2/" api.yaml > api-h2.yaml
sed -e "s/18100/18160/; s/18101/18161/; s/18103/18163/; s/18102/18162/" web.yaml > web-h2.yaml
for f in api.yaml web.yaml api-h2.yaml web-h2.yaml; do
  printf '%s\n' "tracing: {endpoint: \"http://127.0.0.1:$OTLP_SINK/v1/traces\", sampling: 0.5}" >> "$f"
done
printf '\x00\x00\x00\x00\x05hello' > grpc-body.bin
traffic_http1() {
  for _ in $(seq 20); do curl -sf -H "Host: api" http://127.0.0.1:18101/ >/dev/null; done
  wrk -t1 -c8 -d5s -H "Host: api" http://127.0.0.1:18101/ >/dev/null
  curl -sf http://127.0.0.1:18103/metrics >/dev/null
  curl -sf http://127.0.0.1:18105/metrics >/dev/null
}
traffic_http2() {
  h2load -n 400 -c4 -m4 -H ":authority: api" http://127.0.0.1:18161/ | grep -E " [1-9][0-9]* succeeded" >/dev/null
  h2load -n 400 -c4 -m4 -H ":authority: api" -d grpc-body.bin -H "content-type: application/grpc" -H "te: trailers" \
    http://127.0.0.1:18161/bench.Echo/Unary | grep -E " [1-9][0-9]* succeeded" >/dev/null
}
# wait_ready ADMIN_PORT: until the proxy has its endpoints (its listeners open before that).
wait_ready() { for _ in $(seq 360); do curl -sf "http://127.0.0.1:$1/ready" >/dev/null && return 0; sleep 0.5; done; echo "the proxy with admin port $1 never got ready" >&2; exit 1; }
# profile NAME PORT_OFFSET TRAFFIC: runs the pair NAME (api-NAME.yaml/web-NAME.yaml, or
# api.yaml/web.yaml for "http1") under callgrind, sends TRAFFIC, stops it.
profile() {
  local name=$1 off=$2 traffic=$3 suffix=""
  [[ $name == http1 ]] || suffix="-$name"
  local callgrind=(valgrind --tool=callgrind --demangle=no --dump-instr=no)
  start "${callgrind[@]}" --callgrind-out-file="$WORK/api-$name.cg" "$MESH" proxy --config "api$suffix.yaml" --log-level warning; local a=$LAST
  start "${callgrind[@]}" --callgrind-out-file="$WORK/web-$name.cg" "$MESH" proxy --config "web$suffix.yaml" --log-level warning; local w=$LAST
  wait_ready $((18103 + off)); wait_ready $((18105 + off))
  "$traffic"
  sleep 6 # a trace export
  kill -INT "$w" "$a"; wait "$w" "$a" 2>/dev/null || true
}
echo "== running the pairs under callgrind"
profile http1 0 traffic_http1
profile h2 60 traffic_http2

# Self cost per function in the given callgrind files, summed over both proxies, hottest first.
executed() {
  awk '
    /^fn=/ { name = $0; sub(/^fn=\([0-9]+\) ?/, "", name); id = $0; sub(/^fn=/, "", id); sub(/\).*/, ")", id)
             if (name != "") names[id] = name; current = names[id]; skip = 0; next }
    /^c(fn|fi|fe|ob)=/ { if ($0 ~ /^cfn=\([0-9]+\) ./) { n = $0; sub(/^cfn=\([0-9]+\) /, "", n); i = $0; sub(/^cfn=/, "", i); sub(/\).*/, ")", i); names[i] = n } next }
    /^calls=/ { skip = 1; next }
    /^[0-9+*-]/ { if (skip) { skip = 0; next } cost[current] += $2; next }
    END { for (f in cost) printf "%d %s\n", cost[f], f }
  ' "$@" | awk '{ c[$2] += $1 } END { for (f in c) print c[f], f }' | sort -rn | awk '{print $2}'
}
# The HTTP/1.1 pair's functions (start-up included) first, then those only the HTTP/2 pair
# ran: a sidecar that serves one protocol keeps the other's code out of its windows (ordered
# by cost over both runs, the list interleaved them and a pair under HTTP/1.1 load kept
# ~0.5 MB more resident). Only names the binary defines.
nm --defined-only "$BIN" | awk '$2 ~ /^[tTwW]$/ {print $3}' | sort -u > defined.txt
executed "$WORK"/*-http1.cg* > executed.txt
executed "$WORK"/*-h2.cg* | grep -vFxf executed.txt >> executed.txt || true
grep -Fxf defined.txt executed.txt > "$ROOT/Sources/mesh/symbol-order.txt"
# What valgrind cannot run, so callgrind never lists: the program's entry point (run before
# valgrind takes over) and BoringSSL's code for CPUs with ADX, AVX2 and AVX-512 (valgrind's
# virtual CPU has none of them, and BoringSSL picks its code by CPU at run time: on this
# machine TLS records are sealed by the AVX-512 AES-GCM and key shares made by the ADX X25519).
# Each left out kept a 64 KB window of code resident on its own.
cat >> "$ROOT/Sources/mesh/symbol-order.txt" <<'EOF'
_start
CNIOBoringSSL_aes_gcm_enc_update_vaes_avx512
CNIOBoringSSL_aes_gcm_enc_update_vaes_avx2
_ZN4bssl13CNIOBoringSSL29x25519_ge_scalarmult_base_adxEPA32_hPKh
_ZN4bssl13CNIOBoringSSL22x25519_scalar_mult_adxEPhPKhS3_
_ZL22inline_x25519_ge_dbl_4P7ge_p3_4PKS_b
CNIOBoringSSL_fiat_curve25519_adx_mul
EOF
echo "== $(wc -l < "$ROOT/Sources/mesh/symbol-order.txt") functions written to Sources/mesh/symbol-order.txt"
