# Sourced by scripts/test.sh and scripts/dev.sh (from the repository root): provides
#   ensure_java_maven  install Java 17 and Maven with apt-get when missing (as root), else explain
#   setup_python       create/refresh .venv with the package and its dev tools (falls back to the
#                      user site when venvs are unavailable); sets PY and puts its scripts on PATH
# shellcheck shell=bash

log() { printf '==> %s\n' "$*" >&2; }

_apt_install() {
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    return 1
  fi
  log "apt-get install $*"
  if [ -z "${_APT_UPDATED:-}" ]; then
    apt-get update -qq >/dev/null
    _APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

ensure_java_maven() {
  local missing=()
  command -v java >/dev/null 2>&1 || missing+=(java)
  command -v mvn >/dev/null 2>&1 || missing+=(mvn)
  [ ${#missing[@]} -eq 0 ] && return 0
  local packages=(maven)
  if ! command -v java >/dev/null 2>&1; then
    packages=(openjdk-17-jre-headless maven)
  fi
  if ! _apt_install "${packages[@]}"; then
    # Newer Debian releases ship a newer JDK only; any Java 17+ runs the broker.
    if [ "${packages[0]}" = openjdk-17-jre-headless ] && _apt_install default-jre-headless maven; then
      return 0
    fi
    echo "error: ${missing[*]} not found; the local Kafka broker needs Java 17+ and, once, Maven." >&2
    echo "       Install them, e.g.: sudo apt-get install openjdk-17-jre-headless maven" >&2
    echo "       (or set KAFKA_BOOTSTRAP_SERVERS to test against an existing broker)" >&2
    return 1
  fi
}

setup_python() {
  local py=${PYTHON:-python3}
  if [ -n "${VIRTUAL_ENV:-}" ]; then
    PY=$(command -v python)
  else
    if [ ! -x .venv/bin/python ] && ! "$py" -m venv .venv >/dev/null 2>&1; then
      rm -rf .venv
      # Debian splits venv support into its own package.
      _apt_install "$("$py" -c 'import sys; print(f"python3.{sys.version_info[1]}-venv")')" \
        && "$py" -m venv .venv >/dev/null 2>&1 || rm -rf .venv
    fi
    if [ -x .venv/bin/python ]; then
      PY=$PWD/.venv/bin/python
      export PATH="$PWD/.venv/bin:$PATH"
    else
      log "no venv support; installing into the user site of $py"
      PY=$(command -v "$py")
      export PIP_USER=1 PIP_BREAK_SYSTEM_PACKAGES=1
      export PATH="$("$PY" -m site --user-base)/bin:$PATH"
    fi
  fi
  export PY
  # Reinstall only when the declared dependencies changed.
  local stamp
  stamp="$("$PY" -c 'import sys; print(sys.prefix)')/.streams-deps-$(sha256sum pyproject.toml | cut -c1-16)"
  if [ ! -f "$stamp" ] || ! "$PY" -c 'import streams' >/dev/null 2>&1; then
    log "pip install -e '.[dev]' ($PY)"
    "$PY" -m pip install -q --disable-pip-version-check -e '.[dev]'
    touch "$stamp" 2>/dev/null || true
  fi
}
