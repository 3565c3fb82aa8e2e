"""MLflow's Python client logging the same metric points as benches/tracking_log_batch.rs.

Usage: python tracking_log_batch.py URI POINTS; prints one JSON line with points/s.
"""

import json
import sys
import time

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric

uri, points = sys.argv[1], int(sys.argv[2])
mlflow.set_tracking_uri(uri)
client = MlflowClient()
exp = client.create_experiment(f"bench-python-{time.time_ns()}")
run = client.create_run(exp, run_name="python-log-batch")
keys = [f"metric_{k}" for k in range(10)]
base = int(time.time() * 1000)
metrics = [
    Metric(keys[i % 10], i * 0.001, base + i, i // 10) for i in range(points)
]
start = time.perf_counter()
for i in range(0, len(metrics), 1000):
    client.log_batch(run.info.run_id, metrics=metrics[i : i + 1000])
elapsed = time.perf_counter() - start
client.set_terminated(run.info.run_id)
print(json.dumps({"points": points, "seconds": elapsed, "points_per_s": points / elapsed}))
