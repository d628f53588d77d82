"""Run by the MLflow server's own interpreter: `python -P mlflow_query.py URL WHAT ARGS_JSON`; prints JSON.

`runs`: every run of every experiment, with tags, params, status, artifacts and each metric's history.
`model`: a registered model's versions with their tags and aliases.
"""

import json
import sys

from mlflow.tracking import MlflowClient


def runs(client, args):
    out = []
    for exp in client.search_experiments():
        for run in client.search_runs([exp.experiment_id], max_results=1000):
            history = {
                key: [[m.step, m.value] for m in client.get_metric_history(run.info.run_id, key)]
                for key in run.data.metrics
            }
            artifacts = []
            stack = [None]
            while stack:
                for f in client.list_artifacts(run.info.run_id, stack.pop()):
                    (stack.append(f.path) if f.is_dir else artifacts.append(f.path))
            out.append(
                {
                    "experiment": exp.name,
                    "run_id": run.info.run_id,
                    "name": run.info.run_name,
                    "status": run.info.status,
                    "tags": run.data.tags,
                    "params": run.data.params,
                    "metrics": history,
                    "artifacts": sorted(artifacts),
                }
            )
    return out


def model(client, args):
    versions = client.search_model_versions(f"name='{args['name']}'")
    # search results carry no aliases; get_model_version does
    full = [client.get_model_version(args["name"], v.version) for v in versions]
    return [
        {"version": v.version, "run_id": v.run_id, "source": v.source, "tags": v.tags, "aliases": sorted(v.aliases)}
        for v in sorted(full, key=lambda v: int(v.version))
    ]


if __name__ == "__main__":
    url, what, args = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    print(json.dumps({"runs": runs, "model": model}[what](MlflowClient(url, registry_uri=url), args)))
