"""Reads back what our Rust client logged, through MLflow's own Python client.

Usage: python mlflow_readback.py '<json request>'; prints one JSON object.
Request keys (all optional but "uri"): run_id, metric_keys, artifact_path + dst,
experiment_ids (search_logged_models), model_name + alias (get_model_version_by_alias),
model_id + model_dst (download the logged model's files), versions_of (every version of a
registered model with its aliases, its run's tags and its parent run's tags), children_of (the
runs nested under a run, with params, tags, dataset and model inputs and model outputs),
logged_model (a logged model's params and metrics), model_info (a list of model URIs: the
MLmodel each resolves to, its signature, flavors and metadata).
Credentials come from MLFLOW_TRACKING_USERNAME/PASSWORD in the environment.
"""

import json
import os
import sys

import mlflow
from mlflow import MlflowClient


def files_under(root):
    if os.path.isfile(root):
        return [os.path.basename(root)]
    return sorted(
        os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs
    )


def described(run):
    """A run's params, tags, user, dataset and model inputs and model outputs."""
    return {
        "run_id": run.info.run_id,
        "user_id": run.info.user_id,
        "params": run.data.params,
        "tags": run.data.tags,
        "datasets": [
            {
                "name": d.dataset.name,
                "digest": d.dataset.digest,
                "source_type": d.dataset.source_type,
                "source": json.loads(d.dataset.source),
                "schema": json.loads(d.dataset.schema) if d.dataset.schema else None,
                "profile": json.loads(d.dataset.profile) if d.dataset.profile else None,
                "tags": {t.key: t.value for t in d.tags},
            }
            for d in run.inputs.dataset_inputs
        ],
        "model_inputs": [m.model_id for m in (run.inputs.model_inputs or [])],
        "model_outputs": [m.model_id for m in ((run.outputs and run.outputs.model_outputs) or [])],
    }


req = json.loads(sys.argv[1])
mlflow.set_tracking_uri(req["uri"])
client = MlflowClient()
out = {}
if "run_id" in req:
    run = mlflow.get_run(req["run_id"])
    out["run"] = {
        "status": run.info.status,
        "run_name": run.info.run_name,
        "experiment_id": run.info.experiment_id,
        "params": run.data.params,
        "tags": run.data.tags,
        "metrics": {k: repr(v) for k, v in run.data.metrics.items()},
    }
    out["described"] = described(run)
    out["history"] = {
        k: [[m.step, repr(m.value), m.timestamp] for m in client.get_metric_history(req["run_id"], k)]
        for k in req.get("metric_keys", [])
    }
    if "artifact_path" in req:
        local = mlflow.artifacts.download_artifacts(
            run_id=req["run_id"], artifact_path=req["artifact_path"], dst_path=req["dst"]
        )
        out["files"] = files_under(local)
if "experiment_ids" in req:
    out["models"] = [
        {
            "model_id": m.model_id,
            "name": m.name,
            "status": str(m.status),
            "source_run_id": m.source_run_id,
        }
        for m in client.search_logged_models(experiment_ids=req["experiment_ids"])
    ]
if "model_name" in req:
    v = client.get_model_version_by_alias(req["model_name"], req["alias"])
    out["version"] = {"version": v.version, "source": v.source, "run_id": v.run_id}
if "model_id" in req:
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{req['model_id']}", dst_path=req["model_dst"]
    )
    out["model_files"] = files_under(local)
if "versions_of" in req:
    name = req["versions_of"]
    aliases = client.get_registered_model(name).aliases
    out["versions"] = []
    for v in sorted(client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version)):
        run = client.get_run(v.run_id)
        parent = run.data.tags.get("mlflow.parentRunId")
        out["versions"].append({
            "version": v.version,
            "run_id": v.run_id,
            "aliases": sorted(a for a, n in aliases.items() if str(n) == v.version),
            "tags": run.data.tags,
            "parent_tags": client.get_run(parent).data.tags if parent else {},
        })
if "children_of" in req:
    experiments = [e.experiment_id for e in client.search_experiments()]
    children = client.search_runs(
        experiments, f"tags.mlflow.parentRunId = '{req['children_of']}'"
    )
    out["children"] = [described(client.get_run(c.info.run_id)) for c in children]
if "logged_model" in req:
    m = client.get_logged_model(req["logged_model"])
    out["logged_model"] = {
        "name": m.name,
        "model_type": m.model_type,
        "source_run_id": m.source_run_id,
        "params": m.params,
        "tags": m.tags,
        "metrics": [[x.key, x.value, x.run_id, x.dataset_digest] for x in (m.metrics or [])],
    }
if "model_info" in req:
    out["model_info"] = {}
    for uri in req["model_info"]:
        info = mlflow.models.get_model_info(uri)
        sig = info.signature
        out["model_info"][uri] = {
            "flavors": info.flavors,
            "metadata": info.metadata,
            "run_id": info.run_id,
            "model_id": getattr(info, "model_id", None),
            "inputs": sig.inputs.to_dict() if sig else None,
            "outputs": sig.outputs.to_dict() if sig else None,
            "input_shape": list(sig.inputs.inputs[0].shape) if sig else None,
            "input_dtype": str(sig.inputs.inputs[0].type) if sig else None,
        }
print(json.dumps(out))
