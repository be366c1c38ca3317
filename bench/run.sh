#!/usr/bin/env bash
# Side-by-side data-path benchmark on loopback, in one run:
#   DIRECT     load generator → backend
#   swiftmesh  load generator → outbound sidecar → mTLS 1.3 → inbound sidecar → backend
#   haproxy    the same shape with two HAProxy processes
#   nginx      the same shape with two nginx processes
# Every sidecar gets one worker thread; all mTLS hops use the same CA and certificates.
# Reports closed-loop throughput (wrk -c32), open-loop latency at a fixed rate (corrected for
# coordinated omission, bench/tools/openloop.c), CPU time per request and peak RSS per sidecar.
# Then the same four shapes with HTTP/2 end to end (h2load: h2c in, h2 over mTLS between the
# sidecars, h2c to an nginx backend), for plain requests and for gRPC-shaped unary calls.
#
#   bench/run.sh            full run (≈ 10 min of load after the build): the head-to-head rows
#                           in 3 interleaved rounds (ROUNDS=N to change), medians reported
#   bench/run.sh --quick    short runs, one round, for a regression check (< 2 min including setup)
#
# Installs haproxy, nginx, wrk and openssl from Debian when missing. Results go to stdout and
# to bench/results/DATE-COMMIT.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

QUICK=0
[[ "${1:-}" == "--quick" ]] && QUICK=1
if (( QUICK )); then WARM=1; DURATION=3; RATE_SECONDS=4; else WARM=3; DURATION=10; RATE_SECONDS=15; fi
RATE=${RATE:-1000}
CONNS=32

need=()
for tool in haproxy nginx wrk openssl gcc; do command -v "$tool" >/dev/null || need+=("$tool"); done
command -v h2load >/dev/null || need+=(nghttp2-client)
if (( ${#need[@]} )); then
  echo "== installing ${need[*]} from Debian"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

echo "== building mesh (release, as deployed: scripts/build-release.sh)"
MESH=$(scripts/build-release.sh 2> >(tail -1 >&2))

WORK=$(mktemp -d /tmp/swiftmesh-bench.XXXXXX)
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
gcc -O2 -o "$WORK/openloop" bench/tools/openloop.c

cd "$WORK"
source "$ROOT/bench/lib.sh"

# HAProxy pair: plain in, mTLS 1.3 between them (client certificate checked against the CA),
# keep-alive everywhere.
haproxy_common() {
  printf '%s\n' "global" "  nbthread 1" "  maxconn 4000" "defaults" "  mode http" "  timeout connect 5s" \
    "  timeout client 60s" "  timeout server 60s" "  http-reuse always"
}
{ haproxy_common; cat <<CONF
frontend out
  bind 127.0.0.1:18201
  default_backend peer
backend peer
  server api 127.0.0.1:18202 ssl crt $WORK/web-combined.pem ca-file $WORK/ca.pem verify required ssl-min-ver TLSv1.3
CONF
} > haproxy-out.cfg
{ haproxy_common; cat <<CONF
frontend in
  bind 127.0.0.1:18202 ssl crt $WORK/api-combined.pem ca-file $WORK/ca.pem verify required ssl-min-ver TLSv1.3
  default_backend app
backend app
  server app 127.0.0.1:$BACKEND
CONF
} > haproxy-in.cfg

# nginx pair. nginx cannot check a URI SAN when it verifies its upstream (it matches host
# names only), so the outbound side does not verify the server: less work than the others do.
mkdir -p nginx-out nginx-in
cat > nginx-out/nginx.conf <<CONF
worker_processes 1; daemon off; pid $WORK/nginx-out/pid; error_log $WORK/nginx-out/error.log;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  upstream peer { server 127.0.0.1:18302; keepalive 64; keepalive_requests 1000000; }
  server { listen 127.0.0.1:18301;
    location / { proxy_pass https://peer; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_ssl_certificate $WORK/web.pem; proxy_ssl_certificate_key $WORK/web-key.pem;
      proxy_ssl_protocols TLSv1.3; proxy_ssl_session_reuse on; } } }
CONF
cat > nginx-in/nginx.conf <<CONF
worker_processes 1; daemon off; pid $WORK/nginx-in/pid; error_log $WORK/nginx-in/error.log;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  upstream app { server 127.0.0.1:$BACKEND; keepalive 64; keepalive_requests 1000000; }
  server { listen 127.0.0.1:18302 ssl; ssl_protocols TLSv1.3;
    ssl_certificate $WORK/api.pem; ssl_certificate_key $WORK/api-key.pem;
    ssl_client_certificate $WORK/ca.pem; ssl_verify_client on; ssl_verify_depth 2;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF

cpu_ticks() { local t=0; for pid in "$@"; do read -r -a f < /proc/$pid/stat; t=$((t + f[13] + f[14])); done; echo $t; }
rss_kb() { awk '/^VmRSS/ {print $2}' /proc/$1/status; }
hwm_kb() { awk '/^VmHWM/ {print $2}' /proc/$1/status; }
# Private (anonymous) memory: what each extra sidecar really costs a host, since file-backed
# code pages are shared between processes of the same binary.
anon_kb() { awk '/^RssAnon/ {print $2}' /proc/$1/status; }
TICK=$(getconf CLK_TCK)

# Every port the run listens on must be free: a process left there (an earlier run, a
# profiling session) would answer in place of a contender and the figures would be its.
for port in $(seq 18080 18090) $(seq 18100 18165) 18201 18202 18211 18212 18301 18302 18311 18312; do
  if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then
    echo "bench: 127.0.0.1:$port is in use; stop what listens there (ss -ltnp 'sport = :$port') and run again" >&2
    exit 1
  fi
done
start nginx -c "$WORK/nginx-backend/nginx.conf" -p "$WORK/nginx-backend"; wait_port $BACKEND

# The head-to-head rows (direct, swiftmesh, haproxy, nginx) are measured in ROUNDS rounds with
# all three pairs up, in a rotating order, and each figure is the median over the rounds:
# rows measured minutes apart on a shared machine drift by 5–10 %, as much as the gaps
# between the contenders, and one run each would rank them by when they ran.
ROUNDS=${ROUNDS:-3}
(( QUICK )) && ROUNDS=1
declare -A R_RPS R_P50 R_P99 R_MAX R_CPU IDLE ROW
# measure_round NAME PORT HOST PID...: one round of throughput, then latency and CPU at the fixed rate
measure_round() {
  local name=$1 port=$2 host=$3; shift 3
  local pids=("$@")
  wrk -t1 -c$CONNS -d${WARM}s -H "Host: $host" "http://127.0.0.1:$port/" >/dev/null
  local rps
  rps=$(wrk -t1 -c$CONNS -d${DURATION}s -H "Host: $host" "http://127.0.0.1:$port/" | awk '/Requests\/sec/ {print $2}')
  local before=0 after=0
  (( ${#pids[@]} )) && before=$(cpu_ticks "${pids[@]}")
  local lat
  lat=$("$WORK/openloop" 127.0.0.1 "$port" "$host" "$RATE" "$RATE_SECONDS" $CONNS)
  (( ${#pids[@]} )) && after=$(cpu_ticks "${pids[@]}")
  local requests; requests=$(sed -E 's/.*requests=([0-9]+).*/\1/' <<<"$lat")
  local cpu_us="-"
  (( ${#pids[@]} )) && cpu_us=$(awk -v d=$((after - before)) -v t=$TICK -v n=$requests -v k=${#pids[@]} 'BEGIN { printf "%.1f", d / t * 1e6 / n / k }')
  R_RPS[$name]+="$rps "; R_CPU[$name]+="$cpu_us "
  R_P50[$name]+="$(sed -E 's/.*p50_us=([0-9]+).*/\1/' <<<"$lat") "
  R_P99[$name]+="$(sed -E 's/.*p99_us=([0-9]+).*/\1/' <<<"$lat") "
  R_MAX[$name]+="$(sed -E 's/.*max_us=([0-9]+).*/\1/' <<<"$lat") "
  echo "   $name: $rps req/s; $lat; cpu/req/sidecar ${cpu_us} us"
}
# The middle value (the lower of the two middle ones for an even count); "-" stays "-".
median() { tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{ v[NR] = $1 } END { print (NR ? v[int((NR + 1) / 2)] : "-") }'; }
largest() { tr ' ' '\n' <<<"$1" | grep . | sort -g | tail -1; }
smallest() { tr ' ' '\n' <<<"$1" | grep . | sort -g | head -1; }
idle_rss() { local name=$1; shift; IDLE[$name]=$(for p in "$@"; do echo -n "$(( $(rss_kb $p) / 1024 ))/"; done); }
# summarize NAME PID...: the row of NAME's rounds (medians; max is the largest of the rounds),
# with the peak and private memory of its processes as they are now.
summarize() {
  local name=$1; shift
  local peak="-" anon="-"
  if (( $# )); then
    peak=$(for p in "$@"; do echo -n "$(( $(hwm_kb $p) / 1024 ))/"; done)
    anon=$(for p in "$@"; do echo -n "$(( $(anon_kb $p) / 1024 ))/"; done)
  fi
  local idle=${IDLE[$name]:--}
  ROW[$name]="$name|$(median "${R_RPS[$name]}")|$(smallest "${R_RPS[$name]}")-$(largest "${R_RPS[$name]}")|p50_us=$(median "${R_P50[$name]}") p99_us=$(median "${R_P99[$name]}") max_us=$(largest "${R_MAX[$name]}")|$(median "${R_CPU[$name]}")|${idle%/}|${peak%/}|${anon%/}"
}
# A SwiftMesh pair: mesh proxy --config api-X.yaml / web-X.yaml, started in $WORK.
start_mesh_pair() { # API_YAML WEB_YAML API_INBOUND_PORT WEB_OUTBOUND_PORT
  start "$MESH" proxy --config "$1" --log-level warning; A=$LAST
  start "$MESH" proxy --config "$2" --log-level warning; W=$LAST
  wait_port "$3"; wait_port "$4"
}

echo "== the head-to-head rows: $ROUNDS round(s), direct, swiftmesh, haproxy and nginx in turn"
start_mesh_pair api.yaml web.yaml 18102 18101; MA=$A; MW=$W
start haproxy -db -f haproxy-in.cfg; HI=$LAST
start haproxy -db -f haproxy-out.cfg; HO=$LAST
start nginx -c "$WORK/nginx-in/nginx.conf" -p "$WORK/nginx-in"; NI=$LAST
start nginx -c "$WORK/nginx-out/nginx.conf" -p "$WORK/nginx-out"; NO=$LAST
wait_port 18201; wait_port 18202; wait_port 18301; wait_port 18302
# nginx's master process forks one worker; measure the workers.
sleep 0.5
NIW=$(pgrep -P "$NI" | head -1); NOW=$(pgrep -P "$NO" | head -1)
idle_rss swiftmesh "$MW" "$MA"; idle_rss haproxy "$HO" "$HI"; idle_rss nginx "$NOW" "$NIW"
CONTENDERS=(direct swiftmesh haproxy nginx)
for round in $(seq "$ROUNDS"); do
  echo "== round $round"
  for i in 0 1 2 3; do
    case ${CONTENDERS[$(( (i + round - 1) % 4 ))]} in
      direct) measure_round direct $BACKEND backend ;;
      swiftmesh) measure_round swiftmesh 18101 api "$MW" "$MA" ;;
      haproxy) measure_round haproxy 18201 api "$HO" "$HI" ;;
      nginx) measure_round nginx 18301 api "$NOW" "$NIW" ;;
    esac
  done
done
summarize direct; summarize swiftmesh "$MW" "$MA"; summarize haproxy "$HO" "$HI"; summarize nginx "$NOW" "$NIW"
kill "$MW" "$MA" "$HO" "$HI" "$NO" "$NI"; wait "$MW" "$MA" "$HO" "$HI" "$NO" "$NI" 2>/dev/null || true

# The cost of telemetry: the same pair without request metrics (the bare path), and with
# tracing at 1 % and 100 % sampling (spans exported to an OTLP sink). One round each, measured
# after the head-to-head rows.
VARIANTS=()
variant() { # NAME PORT_OFFSET EXTRA_YAML
  local name=$1 off=$2 extra=$3
  sed -e "s/18102/$((18102 + off))/; s/18104/$((18104 + off))/; s/18105/$((18105 + off))/" api.yaml > "api-$name.yaml"
  sed -e "s/18100/$((18100 + off))/; s/18101/$((18101 + off))/; s/18103/$((18103 + off))/; s/18102/$((18102 + off))/" web.yaml > "web-$name.yaml"
  printf '%s\n' "$extra" >> "api-$name.yaml"; printf '%s\n' "$extra" >> "web-$name.yaml"
  start_mesh_pair "api-$name.yaml" "web-$name.yaml" $((18102 + off)) $((18101 + off))
  idle_rss "swiftmesh-$name" "$W" "$A"
  measure_round "swiftmesh-$name" $((18101 + off)) api "$W" "$A"
  summarize "swiftmesh-$name" "$W" "$A"; VARIANTS+=("swiftmesh-$name")
  kill "$W" "$A"; wait "$W" "$A" 2>/dev/null || true
}
echo "== swiftmesh without metrics (bare path)"
variant bare 20 "metrics: false"
echo "== swiftmesh with tracing at 1 %"
variant trace-1pct 30 "tracing: {endpoint: \"http://127.0.0.1:$OTLP_SINK/v1/traces\", sampling: 0.01}"
# The quick check keeps the variants that price a feature of the default path (metrics,
# sampled tracing, policy at scale); these two are full-run rows.
if (( ! QUICK )); then
echo "== swiftmesh with tracing at 100 %"
variant trace-100pct 40 "tracing: {endpoint: \"http://127.0.0.1:$OTLP_SINK/v1/traces\", sampling: 1}"

echo "== swiftmesh with HTTP/1.1 requests multiplexed on HTTP/2 between the sidecars (--peer-protocol h2)"
variant h2-peers 50 "peerProtocol: h2"
fi

echo "== swiftmesh with 1000 policies (L7 rule evaluated per request)"
sed -e 's/18102/18112/; s/18104/18114/; s/18105/18115/' api.yaml > api-1000.yaml
cat >> api-1000.yaml <<CONF
  - kind: AuthorizationPolicy
    metadata: {name: web-get}
    spec:
      rules: [{from: [{services: [web]}], to: [{methods: [GET], paths: ["/*"]}]}]
CONF
policies_1000 >> api-1000.yaml
sed -e 's/18100/18110/; s/18101/18111/; s/18103/18113/; s/18102/18112/' web.yaml > web-1000.yaml
start_mesh_pair api-1000.yaml web-1000.yaml 18112 18111
idle_rss swiftmesh-1000-policies "$W" "$A"
measure_round swiftmesh-1000-policies 18111 api "$W" "$A"
summarize swiftmesh-1000-policies "$W" "$A"; VARIANTS+=(swiftmesh-1000-policies)
kill "$W" "$A"; wait "$W" "$A" 2>/dev/null || true
RESULTS=("${ROW[direct]}" "${ROW[swiftmesh]}")
for name in "${VARIANTS[@]}"; do RESULTS+=("${ROW[$name]}"); done
RESULTS+=("${ROW[haproxy]}" "${ROW[nginx]}")

# HTTP/2 end to end. h2load opens 32 connections with 10 streams each; "plain" is GET /,
# "grpc" a POST of a framed message with gRPC's headers (content-type, te: trailers) answered
# with a grpc-status trailer. Throughput, mean request time, CPU per request and peak RSS.
RESULTS_H2=()
printf '\x00\x00\x00\x00\x05hello' > grpc-body.bin
# measure_h2 NAME PORT PID...
measure_h2() {
  local name=$1 port=$2; shift 2
  local pids=("$@")
  for kind in plain grpc; do
    local args=(-t1 -c$CONNS -m10 -H ":authority: api")
    local url="http://127.0.0.1:$port/"
    if [[ $kind == grpc ]]; then
      args+=(-d "$WORK/grpc-body.bin" -H "content-type: application/grpc" -H "te: trailers"); url="http://127.0.0.1:$port/bench.Echo/Unary"
    fi
    h2load "${args[@]}" -D $WARM "$url" >/dev/null 2>&1 || true
    local before=0 after=0
    (( ${#pids[@]} )) && before=$(cpu_ticks "${pids[@]}")
    local out; out=$(h2load "${args[@]}" -D $DURATION "$url" 2>&1 || true)
    (( ${#pids[@]} )) && after=$(cpu_ticks "${pids[@]}")
    local rps ok failed mean
    rps=$(awk '/^finished in/ {gsub(",", "", $4); print $4}' <<<"$out")
    ok=$(awk '/^requests:/ {print $8}' <<<"$out"); failed=$(awk '/^requests:/ {print $10 + $12}' <<<"$out")
    mean=$(awk '/^time for request:/ {print $6}' <<<"$out")
    local cpu_us="-" peak="-"
    if (( ${#pids[@]} )) && (( ${ok:-0} > 0 )); then
      cpu_us=$(awk -v d=$((after - before)) -v t=$TICK -v n=$ok -v k=${#pids[@]} 'BEGIN { printf "%.1f", d / t * 1e6 / n / k }')
      peak=$(for p in "${pids[@]}"; do echo -n "$(( $(hwm_kb $p) / 1024 ))/"; done)
    fi
    RESULTS_H2+=("$name|$kind|${rps:-0}|${ok:-0}|${failed:-0}|${mean:--}|$cpu_us|${peak%/}")
    echo "   $name $kind: ${rps:-0} req/s (${ok:-0} ok, ${failed:-0} failed), mean ${mean:--}, cpu/req/sidecar ${cpu_us} us, rss peak ${peak%/} MB"
  done
}

echo "== HTTP/2: DIRECT"
measure_h2 direct $BACKEND_H2

echo "== HTTP/2: swiftmesh"
sed -e "s/18102/18162/; s/18104/18164/; s/18105/18165/; s/127.0.0.1:$BACKEND\$/127.0.0.1:$BACKEND_H2/" api.yaml > api-h2.yaml
sed -e "s/18100/18160/; s/18101/18161/; s/18103/18163/; s/18102/18162/" web.yaml > web-h2.yaml
start "$MESH" proxy --config api-h2.yaml --log-level warning; A=$LAST
start "$MESH" proxy --config web-h2.yaml --log-level warning; W=$LAST
wait_port 18161; wait_port 18162
measure_h2 swiftmesh 18161 "$W" "$A"
kill "$W" "$A"; wait "$W" "$A" 2>/dev/null || true

echo "== HTTP/2: haproxy"
{ haproxy_common; cat <<CONF
frontend out
  bind 127.0.0.1:18211 proto h2
  default_backend peer
backend peer
  server api 127.0.0.1:18212 ssl crt $WORK/web-combined.pem ca-file $WORK/ca.pem verify required ssl-min-ver TLSv1.3 alpn h2
CONF
} > haproxy-out-h2.cfg
{ haproxy_common; cat <<CONF
frontend in
  bind 127.0.0.1:18212 ssl crt $WORK/api-combined.pem ca-file $WORK/ca.pem verify required ssl-min-ver TLSv1.3 alpn h2
  default_backend app
backend app
  server app 127.0.0.1:$BACKEND_H2 proto h2
CONF
} > haproxy-in-h2.cfg
start haproxy -db -f haproxy-in-h2.cfg; HI=$LAST
start haproxy -db -f haproxy-out-h2.cfg; HO=$LAST
wait_port 18211; wait_port 18212
measure_h2 haproxy 18211 "$HO" "$HI"
kill "$HO" "$HI"; wait "$HO" "$HI" 2>/dev/null || true

echo "== HTTP/2: nginx (grpc_pass: nginx proxies HTTP/2 upstream only through its gRPC module)"
mkdir -p nginx-out-h2 nginx-in-h2
cat > nginx-out-h2/nginx.conf <<CONF
worker_processes 1; daemon off; pid $WORK/nginx-out-h2/pid; error_log $WORK/nginx-out-h2/error.log;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  upstream peer { server 127.0.0.1:18312; keepalive 64; keepalive_requests 1000000; }
  server { listen 127.0.0.1:18311 http2;
    location / { grpc_pass grpcs://peer;
      grpc_ssl_certificate $WORK/web.pem; grpc_ssl_certificate_key $WORK/web-key.pem;
      grpc_ssl_protocols TLSv1.3; grpc_ssl_session_reuse on; } } }
CONF
cat > nginx-in-h2/nginx.conf <<CONF
worker_processes 1; daemon off; pid $WORK/nginx-in-h2/pid; error_log $WORK/nginx-in-h2/error.log;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  upstream app { server 127.0.0.1:$BACKEND_H2; keepalive 64; keepalive_requests 1000000; }
  server { listen 127.0.0.1:18312 ssl http2; ssl_protocols TLSv1.3;
    ssl_certificate $WORK/api.pem; ssl_certificate_key $WORK/api-key.pem;
    ssl_client_certificate $WORK/ca.pem; ssl_verify_client on; ssl_verify_depth 2;
    location / { grpc_pass grpc://app; } } }
CONF
start nginx -c "$WORK/nginx-in-h2/nginx.conf" -p "$WORK/nginx-in-h2"; NI=$LAST
start nginx -c "$WORK/nginx-out-h2/nginx.conf" -p "$WORK/nginx-out-h2"; NO=$LAST
wait_port 18311; wait_port 18312
sleep 0.5
NIW=$(pgrep -P "$NI" | head -1); NOW=$(pgrep -P "$NO" | head -1)
measure_h2 nginx 18311 "$NOW" "$NIW"
kill "$NO" "$NI"; wait "$NO" "$NI" 2>/dev/null || true

cd "$ROOT"
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
DATE=$(date -u +%Y-%m-%dT%H:%MZ)
direct_rps=$(cut -d'|' -f2 <<<"${RESULTS[0]}")
direct_p50=$(sed -E 's/.*p50_us=([0-9]+).*/\1/' <<<"$(cut -d'|' -f4 <<<"${RESULTS[0]}")")
direct_p99=$(sed -E 's/.*p99_us=([0-9]+).*/\1/' <<<"$(cut -d'|' -f4 <<<"${RESULTS[0]}")")
TABLE="| config | throughput (req/s) | rounds' range (req/s) | × direct | p50 @${RATE}/s (ms) | p99 (ms) | max (ms) | added p50 (ms) | added p99 (ms) | CPU/req/sidecar (µs) | RSS idle (MB, out/in) | RSS peak (MB, out/in) | private after load (MB, out/in) |
|---|---|---|---|---|---|---|---|---|---|---|---|---|"
for row in "${RESULTS[@]}"; do
  IFS='|' read -r name rps range lat cpu idle peak anon <<<"$row"
  p50=$(sed -E 's/.*p50_us=([0-9]+).*/\1/' <<<"$lat"); p99=$(sed -E 's/.*p99_us=([0-9]+).*/\1/' <<<"$lat"); max=$(sed -E 's/.*max_us=([0-9]+).*/\1/' <<<"$lat")
  TABLE+=$'\n'"$(awk -v n="$name" -v r="$rps" -v g="$range" -v d="$direct_rps" -v a="$p50" -v b="$p99" -v m="$max" -v da="$direct_p50" -v db="$direct_p99" -v c="$cpu" -v i="$idle" -v p="$peak" -v q="$anon" \
    'BEGIN { split(g, x, "-"); printf "| %s | %.0f | %.0f–%.0f | %.2f | %.3f | %.3f | %.3f | %+.3f | %+.3f | %s | %s | %s | %s |", n, r, x[1], x[2], r/d, a/1000, b/1000, m/1000, (a-da)/1000, (b-db)/1000, c, i, p, q }')"
done
MODE=$([[ $QUICK == 1 ]] && echo quick || echo full)
HEADER="Benchmark ($MODE) $DATE, commit $COMMIT, $(nproc) cores, $(uname -r), $(haproxy -v | head -1 | cut -d' ' -f1-3), nginx $(nginx -v 2>&1 | cut -d/ -f2), wrk -t1 -c$CONNS ${DURATION}s; openloop ${RATE}/s for ${RATE_SECONDS}s over $CONNS connections; direct, swiftmesh, haproxy and nginx: median of $ROUNDS interleaved round(s) (max: the largest), the other rows one round each"
TABLE_H2="| config (HTTP/2) | requests | throughput (req/s) | × direct | ok / failed | mean request time | CPU/req/sidecar (µs) | RSS peak (MB, out/in) |
|---|---|---|---|---|---|---|---|"
for row in "${RESULTS_H2[@]}"; do
  IFS='|' read -r name kind rps ok failed mean cpu peak <<<"$row"
  direct=$(for r in "${RESULTS_H2[@]}"; do IFS='|' read -r n k v _ <<<"$r"; if [[ $n == direct && $k == "$kind" ]]; then echo "$v"; fi; done)
  TABLE_H2+=$'\n'"$(awk -v n="$name" -v k="$kind" -v r="$rps" -v d="${direct:-0}" -v o="$ok" -v f="$failed" -v m="$mean" -v c="$cpu" -v p="$peak" \
    'BEGIN { printf "| %s | %s | %.0f | %s | %s / %s | %s | %s | %s |", n, k, r, (d > 0 ? sprintf("%.2f", r/d) : "-"), o, f, m, c, p }')"
done
H2_NOTE="HTTP/2: h2load -t1 -c$CONNS -m10 for ${DURATION}s per row: h2c in, h2 over mTLS 1.3 between the sidecars, h2c to the backend."
echo
echo "$HEADER"
echo
echo "$TABLE"
echo
echo "$H2_NOTE"
echo
echo "$TABLE_H2"
OUT="bench/results/$(date -u +%Y%m%d-%H%M)-$MODE-$COMMIT.md"
printf '%s\n\n%s\n\n%s\n\n%s\n' "$HEADER" "$TABLE" "$H2_NOTE" "$TABLE_H2" > "$OUT"
echo
echo "written to $OUT"
