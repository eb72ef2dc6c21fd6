"""One `trajectories` run in its own process, every role on the scripted model at LLM_URL; prints its metadata.

``python trajectories_runner.py HOME LLM_URL CONFIG_JSON``: the process a test kills with SIGKILL half way.
"""

import json
import sys
from pathlib import Path

import dagster as dg

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "assets"))
from fault_helpers import ROLES, llm_assets, metadata  # noqa: E402
from scripted_roles import scripted_resources  # noqa: E402


def main(home: str, url: str, config: str) -> None:
    resources = scripted_resources(home, url, ROLES, capable_judge=lambda role: role == "judge")
    result = dg.materialize(
        llm_assets(),
        selection=["trajectories"],
        resources=resources,
        run_config=json.loads(config),
        instance=dg.DagsterInstance.ephemeral(),
    )
    print(json.dumps(metadata(result, "trajectories"), default=str))


if __name__ == "__main__":
    main(*sys.argv[1:])
