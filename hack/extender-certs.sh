#!/usr/bin/env bash
# Mutual-TLS certificates for flexinfer-extender without cert-manager (openssl), stored as Secrets.
#
#   bash hack/extender-certs.sh [--out DIR] [--namespace NS] [--days N] [--no-apply]
#
# Writes to DIR (default ./flexinfer-certs, mode 0700):
#   ca.crt, ca.key               a CA of its own (every certificate it signs may reserve GPU memory: keep ca.key
#                                offline, never use the cluster CA for this)
#   extender.crt, extender.key   SAN flexinfer-extender.<NS>.svc(.cluster.local); server AND client auth (the
#                                replicas forward to the Lease holder with it)
#   scheduler.crt, scheduler.key client auth, CN system:kube-scheduler: kube-scheduler's tlsConfig certFile/keyFile
# and, unless --no-apply, creates or updates in NS the Secrets (keys tls.crt, tls.key, ca.crt, as cert-manager does):
#   flexinfer-extender-tls       mounted by the extender Deployment
#   flexinfer-scheduler-client   mounted by the second scheduler; for the default scheduler copy the files to
#                                /etc/kubernetes/flexinfer/ on every control-plane node (daemonset/scheduler/README.md)
# Re-running with the same DIR reuses the CA (so kube-scheduler's copy stays valid) and renews the two leaf
# certificates; the extender re-reads its Secret without a restart.
set -euo pipefail

out=./flexinfer-certs ns=flexinfer-system days=365 apply=1
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$2; shift 2 ;;
    --namespace) ns=$2; shift 2 ;;
    --days) days=$2; shift 2 ;;
    --no-apply) apply=0; shift ;;
    -h|--help) sed -n '2,/^set /s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
command -v openssl >/dev/null || { echo "openssl is required" >&2; exit 1; }
umask 077
mkdir -p "$out"
cd "$out"
svc="flexinfer-extender.${ns}.svc"

if [ ! -s ca.key ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.crt \
    -days 3650 -subj "/CN=flexinfer-extender-ca" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
fi

leaf() {  # name, subject CN, extensions
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$1.key" -out "$1.csr" \
    -subj "/CN=$2" 2>/dev/null
  printf '%s\n' "$3" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -out "$1.crt" -days "$days" \
    -extfile "$1.ext" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}
leaf extender flexinfer-extender "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=DNS:${svc},DNS:${svc}.cluster.local"
leaf scheduler system:kube-scheduler "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"
openssl verify -CAfile ca.crt extender.crt scheduler.crt >/dev/null
echo "certificates in $(pwd): ca.crt extender.crt/.key scheduler.crt/.key (valid ${days} days)"

if [ "$apply" = 1 ]; then
  for pair in "flexinfer-extender-tls extender" "flexinfer-scheduler-client scheduler"; do
    set -- $pair
    kubectl -n "$ns" create secret generic "$1" --from-file=tls.crt="$2.crt" --from-file=tls.key="$2.key" \
      --from-file=ca.crt=ca.crt --dry-run=client -o yaml | kubectl apply -f -
  done
fi
