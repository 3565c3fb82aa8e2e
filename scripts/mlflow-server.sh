#!/usr/bin/env bash
# Install (once) and start a real MLflow 3.17.2 tracking server for the tracking tests.
#
#   scripts/mlflow-server.sh install
#   scripts/mlflow-server.sh start  PORT DATA_DIR [plain|auth|filestore]
#   scripts/mlflow-server.sh stop   DATA_DIR
#
# `install` creates the virtualenv at $MLFLOW_VENV (default: .venv-mlflow in the repo) and is a
# no-op when mlflow 3.17.2 is already there. `start` runs the server in the background, writes
# its pid to DATA_DIR/server.pid and its log to DATA_DIR/server.log, and returns once /health
# answers (or fails after $MLFLOW_START_TIMEOUT seconds, default 90, printing the log tail).
#   plain     sqlite backend DATA_DIR/mlflow.db, artifact proxy to DATA_DIR/artifacts
#   auth      the same plus `--app-name basic-auth`; needs MLFLOW_AUTH_ADMIN_PASSWORD
#             (>= 12 chars) and MLFLOW_FLASK_SERVER_SECRET_KEY in the environment
#   filestore serves the MLflow file-store directory DATA_DIR (MLFLOW_ALLOW_FILE_STORE=true),
#             the layout our local store writes
set -euo pipefail

MLFLOW_VERSION=3.17.2
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${MLFLOW_VENV:-$repo_root/.venv-mlflow}"

install() {
    if [ -x "$venv/bin/mlflow" ] && "$venv/bin/python" -c \
        "import importlib.metadata as m, sys; sys.exit(m.version('mlflow') != '$MLFLOW_VERSION')" 2>/dev/null; then
        return 0
    fi
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "mlflow[auth]==$MLFLOW_VERSION"
}

start() {
    local port="$1" dir="$2" mode="${3:-plain}"
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    local -a args=(server --host 127.0.0.1 --port "$port" --workers 1)
    case "$mode" in
        plain | auth)
            args+=(--backend-store-uri "sqlite:///$dir/mlflow.db" --serve-artifacts
                --artifacts-destination "$dir/artifacts")
            ;;
        filestore)
            export MLFLOW_ALLOW_FILE_STORE=true
            args+=(--backend-store-uri "$dir")
            ;;
        *)
            echo "unknown mode '$mode' (expected plain, auth or filestore)" >&2
            exit 2
            ;;
    esac
    if [ "$mode" = auth ]; then
        : "${MLFLOW_AUTH_ADMIN_PASSWORD:?auth mode needs MLFLOW_AUTH_ADMIN_PASSWORD (>= 12 chars)}"
        : "${MLFLOW_FLASK_SERVER_SECRET_KEY:?auth mode needs MLFLOW_FLASK_SERVER_SECRET_KEY}"
        args+=(--app-name basic-auth)
        # The auth app keeps its users in its own database; keep it beside the tracking one. The
        # admin password stays in the environment (read by MLflow), never in this file.
        export MLFLOW_AUTH_CONFIG_PATH="$dir/basic_auth.ini"
        cat >"$MLFLOW_AUTH_CONFIG_PATH" <<INI
[mlflow]
default_permission = READ
database_uri = sqlite:///$dir/basic_auth.db
admin_username = admin
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
        chmod 600 "$MLFLOW_AUTH_CONFIG_PATH"
    fi
    # A new session so `stop` can end the server and its gunicorn/uvicorn worker together.
    setsid "$venv/bin/mlflow" "${args[@]}" >"$dir/server.log" 2>&1 </dev/null &
    echo $! >"$dir/server.pid"
    local deadline=$((SECONDS + ${MLFLOW_START_TIMEOUT:-90}))
    until curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1; do
        if [ $SECONDS -ge $deadline ] || ! kill -0 "$(cat "$dir/server.pid")" 2>/dev/null; then
            echo "mlflow server ($mode) on port $port did not become healthy; log tail:" >&2
            tail -n 30 "$dir/server.log" >&2
            exit 1
        fi
        sleep 0.5
    done
    echo "mlflow server ($mode) ready at http://127.0.0.1:$port (pid $(cat "$dir/server.pid"))"
}

stop() {
    local dir="$1"
    [ -f "$dir/server.pid" ] || return 0
    local pid
    pid="$(cat "$dir/server.pid")"
    # The server was started with setsid, so its pid is the process-group id. SIGTERM stops
    # uvicorn, but the `mlflow server` parent and its huey job consumers (measured on 3.17.2)
    # outlive it, so the group gets SIGKILL after a grace period.
    kill -TERM -- "-$pid" 2>/dev/null || true
    for _ in $(seq 1 20); do
        kill -0 -- "-$pid" 2>/dev/null || break
        sleep 0.5
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
    rm -f "$dir/server.pid"
}

cmd="${1:-}"
shift || true
case "$cmd" in
    install) install ;;
    start) install && start "$@" ;;
    stop) stop "$@" ;;
    *)
        echo "usage: $0 install | start PORT DATA_DIR [plain|auth|filestore] | stop DATA_DIR" >&2
        exit 2
        ;;
esac
