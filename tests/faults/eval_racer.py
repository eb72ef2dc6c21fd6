"""One `benchmark_scores` run in its own process, as a Dagster step or `webdancer eval` runs it; prints its metadata.

``python eval_racer.py HOME LLM_URL CONFIG_JSON MEET_DIR``: the racers meet in MEET_DIR (at most MEET_TIMEOUT_S) once
each has read the partition's stored runs or is waiting for the partition's lock, so two runs that both read the
stored runs before either writes really do meet there; a racer waiting for the lock cannot read until the other is
done, and counts as arrived.
"""

import json
import sys
import time
import uuid
from pathlib import Path

import dagster as dg

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "assets"))
from scripted_roles import scripted_resources  # noqa: E402

from webdancer_dagster.assets import evaluation  # noqa: E402
from webdancer_dagster.evaluation import partition  # noqa: E402
from webdancer_dagster.warehouse import WarehouseStore  # noqa: E402

MEET_TIMEOUT_S = 30.0
RACERS = 2
PARTITION = dg.MultiPartitionKey({"model": "base", "benchmark": "bamboogle"})


def arrived(meet: Path) -> int:
    return len({path.stem for path in meet.iterdir()})


def main(home: str, url: str, config: str, meet_dir: str) -> None:
    meet, racer = Path(meet_dir), uuid.uuid4().hex
    real_init, real_lock = partition.PartitionEvaluation.__init__, WarehouseStore.lock

    def waiting_for_lock(self, name, *args, **kwargs):
        if name.startswith("eval-"):
            (meet / f"{racer}.lock").touch()
        return real_lock(self, name, *args, **kwargs)

    def read_then_meet(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        (meet / f"{racer}.read").touch()
        deadline = time.monotonic() + MEET_TIMEOUT_S
        while arrived(meet) < RACERS and time.monotonic() < deadline:
            time.sleep(0.05)

    partition.PartitionEvaluation.__init__ = read_then_meet
    WarehouseStore.lock = waiting_for_lock
    resources = scripted_resources(home, url, ("policy", "judge", "summarizer"), use_cache=False, seed=0)
    result = dg.materialize(
        [evaluation.benchmark_scores],
        partition_key=PARTITION,
        resources=resources,
        run_config={"ops": {"benchmark_scores": {"config": json.loads(config)}}},
        instance=dg.DagsterInstance.ephemeral(),
    )
    [event] = result.asset_materializations_for_node("benchmark_scores")
    print(json.dumps({key: value.value for key, value in event.metadata.items() if key != "comparison_chart"}))


if __name__ == "__main__":
    main(*sys.argv[1:])
