#!/usr/bin/env bash
# Checks the Helm chart in helm/streams without a cluster:
#   1. helm lint, with the default values and with every helm/streams/ci/*-values.yaml;
#   2. helm template with the same value sets, then kubernetes-validate --strict on the manifests
#      (schemas of Kubernetes $KUBE_VERSION, default 1.34.0);
#   3. helm template must refuse values that would deploy a broken worker set.
# Installs what it needs: helm with `go install` when it is not on PATH or in Go's bin directory,
# kubernetes-validate with pip into a venv under ~/.cache/streams.
#
#   bash scripts/helm-check.sh            # KUBE_VERSION=1.32.0 bash scripts/helm-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."

HELM_VERSION=v3.19.0
KUBE_VERSION=${KUBE_VERSION:-1.34.0}
CHART=helm/streams
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/streams

log() { printf '==> %s\n' "$*" >&2; }

find_helm() {
  if command -v helm >/dev/null 2>&1; then
    command -v helm
    return 0
  fi
  if command -v go >/dev/null 2>&1; then
    local bin
    bin=$(go env GOBIN)
    [ -n "$bin" ] || bin="$(go env GOPATH)/bin"
    if [ -x "$bin/helm" ]; then
      echo "$bin/helm"
      return 0
    fi
  fi
  return 1
}

ensure_helm() {
  if HELM=$(find_helm); then
    return 0
  fi
  if ! command -v go >/dev/null 2>&1; then
    echo "error: helm not found and no Go toolchain to build it; install helm $HELM_VERSION" >&2
    return 1
  fi
  log "go install helm.sh/helm/v3/cmd/helm@$HELM_VERSION (a few minutes the first time)"
  # The flags helm's own release build sets: its version, and the Kubernetes version it assumes
  # without a cluster (else 1.20, which the chart's kubeVersion refuses).
  local x=helm.sh/helm/v3 ldflags
  ldflags="-X $x/internal/version.version=$HELM_VERSION"
  ldflags+=" -X $x/pkg/lint/rules.k8sVersionMajor=1 -X $x/pkg/lint/rules.k8sVersionMinor=34"
  ldflags+=" -X $x/pkg/chartutil.k8sVersionMajor=1 -X $x/pkg/chartutil.k8sVersionMinor=34"
  go install -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  HELM=$(find_helm)
}

ensure_validator() {
  local venv=$CACHE/helm-check-venv
  if [ -x "$venv/bin/kubernetes-validate" ]; then
    VALIDATE=$venv/bin/kubernetes-validate
    return 0
  fi
  log "pip install kubernetes-validate (into $venv)"
  mkdir -p "$CACHE"
  if python3 -m venv "$venv" >/dev/null 2>&1; then
    "$venv/bin/python" -m pip install -q --disable-pip-version-check 'kubernetes-validate>=1.34'
    VALIDATE=$venv/bin/kubernetes-validate
  else
    rm -rf "$venv"
    log "no venv support; installing into the user site"
    PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install -q --user --disable-pip-version-check \
      'kubernetes-validate>=1.34'
    VALIDATE="$(python3 -m site --user-base)/bin/kubernetes-validate"
  fi
}

ensure_helm
ensure_validator
log "helm: $HELM; kubernetes-validate: $VALIDATE; Kubernetes $KUBE_VERSION"

OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

value_sets=(default)
for file in "$CHART"/ci/*-values.yaml; do
  value_sets+=("$file")
done

failures=0
for set in "${value_sets[@]}"; do
  args=(--kube-version "$KUBE_VERSION")
  name=default
  if [ "$set" != default ]; then
    args+=(-f "$set")
    name=$(basename "$set" .yaml)
  fi
  log "helm lint ($name)"
  if ! "$HELM" lint --strict "$CHART" "${args[@]}"; then
    failures=$((failures + 1))
    continue
  fi
  log "helm template + kubernetes-validate ($name)"
  manifest=$OUT/$name.yaml
  if ! "$HELM" template check "$CHART" "${args[@]}" >"$manifest"; then
    failures=$((failures + 1))
    continue
  fi
  if ! "$VALIDATE" --strict --kubernetes-version "$KUBE_VERSION" "$manifest"; then
    failures=$((failures + 1))
  fi
done

# Values the chart must refuse, with the message it must give.
expect_refusal() {
  local message=$1
  shift
  local output
  if output=$("$HELM" template check "$CHART" --kube-version "$KUBE_VERSION" "$@" 2>&1); then
    echo "FAIL: helm template accepted $* (expected: $message)" >&2
    failures=$((failures + 1))
  elif ! grep -qF -- "$message" <<<"$output"; then
    echo "FAIL: helm template refused $* without saying '$message':" >&2
    echo "$output" >&2
    failures=$((failures + 1))
  else
    echo "refused as expected: $message"
  fi
}
log "values the chart must refuse"
expect_refusal "no role runs the timers processor" \
  --set 'roles[0].name=all,roles[0].processors=router\,matcher\,executor,roles[0].replicas=1'
expect_refusal 'processor "router" is in both' \
  --set 'roles[0].name=a,roles[0].processors=router\,matcher\,executor\,timers' \
  --set 'roles[1].name=b,roles[1].processors=router'
expect_refusal "kafka.sasl.mechanism is required" --set kafka.securityProtocol=SASL_SSL
expect_refusal "/streams/namespace" --set 'streams.namespace=has space'

if [ "$failures" -ne 0 ]; then
  echo "helm-check: $failures check(s) failed" >&2
  exit 1
fi
echo "helm-check: chart OK (${#value_sets[@]} value sets, Kubernetes $KUBE_VERSION)"
