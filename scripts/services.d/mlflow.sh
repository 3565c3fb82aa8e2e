# Sourced by scripts/test.sh: installs MLflow 3.17.2 into a virtualenv (once) and starts two
# real servers (plain and basic-auth) for the tracking tests; stops them when the tests end.
export MLFLOW_VENV="${MLFLOW_VENV:-$PWD/.venv-mlflow}"
scripts/mlflow-server.sh install
mlflow_dir="$(mktemp -d)"
cleanup+=("scripts/mlflow-server.sh stop '$mlflow_dir/plain'" "scripts/mlflow-server.sh stop '$mlflow_dir/auth'")
scripts/mlflow-server.sh start 5071 "$mlflow_dir/plain" plain
export MLFLOW_AUTH_ADMIN_PASSWORD="ci-admin-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
export MLFLOW_FLASK_SERVER_SECRET_KEY="$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
scripts/mlflow-server.sh start 5072 "$mlflow_dir/auth" auth
export BINANCE_ML_TEST_MLFLOW_URI=http://127.0.0.1:5071
export BINANCE_ML_TEST_MLFLOW_AUTH_URI=http://127.0.0.1:5072
export BINANCE_ML_TEST_MLFLOW_AUTH_USER=admin
export BINANCE_ML_TEST_MLFLOW_AUTH_PASSWORD="$MLFLOW_AUTH_ADMIN_PASSWORD"
export BINANCE_ML_TEST_MLFLOW_AUTH_DIR="$mlflow_dir/auth"
export BINANCE_ML_TEST_MLFLOW_PYTHON="$MLFLOW_VENV/bin/python"
