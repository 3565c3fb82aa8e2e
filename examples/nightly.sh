#!/usr/bin/env bash
# Nightly fine-tune: yesterday's data on top of the current champion, promoted only if better.
#
# Usage (from cron, see crontab.example):
#   BINANCE_ML_CONFIG=/etc/binance-ml/training_config.yaml examples/nightly.sh
#
# The configuration is the base run's, with training.fine_tuning enabled
# (base_model_alias: champion) and data.time_range overridden below. Exit codes are
# binance-ml's: 0 done (or already done: re-running the same night changes nothing),
# 6 another binance-ml holds the work directory (this run did nothing), others are failures.
set -euo pipefail

BIN="${BINANCE_ML_BIN:-binance-ml}"
day="${1:-$(date -u -d yesterday +%Y-%m-%d)}"
config="${BINANCE_ML_CONFIG:?set BINANCE_ML_CONFIG to the training configuration}"

# The allowed overrides: the new time range (one UTC day) comes in through ${FINETUNE_DAY}
# (data.time_range.start_date/end_date: "${FINETUNE_DAY}" in the config); nothing else changes.
export FINETUNE_DAY="$day"
common=(--config "$config" --log-format json)

# 1. Fail fast on a broken configuration (exit 2) before touching data or MLflow.
"$BIN" validate-config "${common[@]}" > /dev/null
# 2. Push anything a previous night journaled while MLflow was unreachable.
"$BIN" tracking sync "${common[@]}" || echo "tracking sync failed; retried next night" >&2
# 3. The fine-tune: fetch + preprocess (base scaler) + train from the champion + evaluate
#    base and new on the same holdout + promotion. JSON summary on stdout.
"$BIN" finetune "${common[@]}" --json
