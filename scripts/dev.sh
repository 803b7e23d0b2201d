#!/usr/bin/env bash
# Brings up the development stack: dependencies, a local Kafka broker (unless
# STREAMS_BOOTSTRAP_SERVERS points at one) and the app's topics. Arguments go to `streams kafka start`
# (e.g. --port 39092). Stop the broker with `streams kafka stop`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_setup.sh

if [ -z "${STREAMS_BOOTSTRAP_SERVERS:-}" ]; then
  ensure_java_maven
fi
setup_python
if [ -z "${STREAMS_BOOTSTRAP_SERVERS:-}" ]; then
  log "streams kafka start $*"
  STREAMS_BOOTSTRAP_SERVERS=$(streams kafka start "$@" | tail -n 1)
fi
export STREAMS_BOOTSTRAP_SERVERS
export STREAMS_NAMESPACE=${STREAMS_NAMESPACE:-dev}
log "streams topics create (namespace $STREAMS_NAMESPACE)"
streams topics create

activate=""
if [ -z "${VIRTUAL_ENV:-}" ] && [ -x .venv/bin/python ]; then
  activate="source $PWD/.venv/bin/activate"
fi
cat <<MSG

Kafka is up on $STREAMS_BOOTSTRAP_SERVERS (namespace $STREAMS_NAMESPACE). In your shell:

  ${activate:+$activate
  }export STREAMS_BOOTSTRAP_SERVERS=$STREAMS_BOOTSTRAP_SERVERS
  export STREAMS_NAMESPACE=$STREAMS_NAMESPACE

Broker log: streams kafka status; stop it: streams kafka stop
MSG
