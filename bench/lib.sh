# Shared by bench/run.sh and bench/symbol-order.sh: the certificates, the shared nginx
# backend and the SwiftMesh pair's static configs, written into $WORK (the current directory),
# and the helpers that start and wait for processes. Source it after `cd "$WORK"`.

# start CMD…: runs in the background, remembered for cleanup; its pid is left in $LAST.
start() { "$@" > "$WORK/$(basename "$1")-$RANDOM.log" 2>&1 & LAST=$!; PIDS+=("$LAST"); }
# wait_port PORT [SECONDS]: waits until something listens on PORT (10 s unless told).
wait_port() { for _ in $(seq $(( ${2:-10} * 10 ))); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

echo "== certificates (one CA, ECDSA P-256, SPIFFE URI SANs)"
openssl ecparam -name prime256v1 -genkey -noout -out ca-key.sec1 2>/dev/null
openssl pkcs8 -topk8 -nocrypt -in ca-key.sec1 -out ca-key.pem
openssl req -x509 -new -key ca-key.pem -days 2 -subj "/O=SwiftMesh bench/CN=bench CA" -out ca.pem \
  -addext "basicConstraints=critical,CA:TRUE,pathlen:0" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -addext "subjectAltName=URI:spiffe://mesh.local" 2>/dev/null
for svc in web api; do
  openssl ecparam -name prime256v1 -genkey -noout -out $svc-key.sec1 2>/dev/null
  openssl pkcs8 -topk8 -nocrypt -in $svc-key.sec1 -out $svc-key.pem
  openssl req -new -key $svc-key.pem -subj "/CN=$svc" -out $svc.csr 2>/dev/null
  printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
    "extendedKeyUsage=serverAuth,clientAuth" "subjectAltName=critical,URI:spiffe://mesh.local/ns/default/sa/$svc" > $svc.ext
  openssl x509 -req -in $svc.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 1 -extfile $svc.ext -out $svc.pem 2>/dev/null
  cat $svc.pem $svc-key.pem > $svc-combined.pem
done

BACKEND=18080
BACKEND_H2=18081
OTLP_SINK=18090
# The shared backend: nginx with one worker answering a fixed 200.
mkdir -p nginx-backend
cat > nginx-backend/nginx.conf <<CONF
worker_processes 1; daemon off; pid $WORK/nginx-backend/pid; error_log $WORK/nginx-backend/error.log;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$BACKEND; location / { return 200 "hello from backend\n"; } }
  # The same answer over h2c (prior knowledge), and a gRPC-shaped one (application/grpc,
  # grpc-status 0 in the trailers; the proxies do not parse messages).
  server { listen 127.0.0.1:$BACKEND_H2 http2;
    location / { return 200 "hello from backend\n"; }
    location /bench.Echo/ { default_type application/grpc; add_trailer grpc-status 0 always;
      return 200 "grpc-shaped answer\n"; } }
  # An OTLP/HTTP sink for the tracing cases: accepts every export (an empty response message).
  server { listen 127.0.0.1:$OTLP_SINK; location / { default_type application/x-protobuf; return 200 ""; } } }
CONF

# SwiftMesh pair, static mode (same certificates as the peers).
cat > web.yaml <<CONF
service: web
app: 127.0.0.1:9
inbound: 127.0.0.1:18100
outbound: 127.0.0.1:18101
admin: 127.0.0.1:18103
threads: 1
tls: {certificate: web.pem, key: web-key.pem, bundle: ca.pem}
services:
  api: [127.0.0.1:18102]
CONF
# The same pair with 1000 further policies in the set (for other services) and an L7 rule for
# api, so that every request is evaluated: the cost of policy at scale.
policies_1000() {
  for i in $(seq 1 1000); do
    printf '  - kind: AuthorizationPolicy\n    metadata: {name: p%d}\n    spec:\n      selector: {service: svc%d}\n      rules: [{from: [{services: [web]}], to: [{methods: [GET], paths: ["/v%d/*"]}]}]\n' "$i" "$i" "$i"
  done
}
cat > api.yaml <<CONF
service: api
app: 127.0.0.1:$BACKEND
inbound: 127.0.0.1:18102
outbound: 127.0.0.1:18104
admin: 127.0.0.1:18105
threads: 1
tls: {certificate: api.pem, key: api-key.pem, bundle: ca.pem}
# Policy evaluation is on, as in production: default deny plus one allow.
policies:
  - kind: AuthorizationPolicy
    metadata: {name: web-to-api}
    spec:
      rules:
        - from: [{identities: ["spiffe://mesh.local/ns/default/sa/web"]}]
CONF
