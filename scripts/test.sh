#!/usr/bin/env bash
# The test command: bash scripts/test.sh [pytest arguments]
#
# Installs the Python dependencies (into .venv), Java and Maven if missing (apt-get, as root), the
# local Kafka jars, then runs ruff, mypy and pytest. Kafka tests use KAFKA_BOOTSTRAP_SERVERS if set,
# else Docker if it answers, else the local jar broker (see tests/conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_setup.sh

started=$SECONDS
if [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
  ensure_java_maven
fi
setup_python
if [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
  log "streams kafka install"
  streams kafka install >/dev/null
fi
log "setup took $((SECONDS - started)) s"

# Run every check even when one fails, so one CI run reports all problems.
failed=()
log "ruff check"
"$PY" -m ruff check . || failed+=("ruff check")
log "mypy"
"$PY" -m mypy || failed+=(mypy)
log "pytest $*"
"$PY" -m pytest "$@" || failed+=(pytest)

log "finished in $((SECONDS - started)) s"
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED: ${failed[*]}" >&2
  exit 1
fi
