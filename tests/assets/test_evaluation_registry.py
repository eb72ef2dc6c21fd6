"""Models and benchmarks declared in the evaluation registry, end to end: a declared endpoint scores a declared
benchmark on its own local site and a question-only set closed-book; sft scores its recorded checkpoint through
llama.cpp, and fails with the asset to materialize while none is recorded."""

import importlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dagster as dg
import pandas as pd
import pytest
from corpus_helpers import run_config
from scripted_roles import scripted_resources

from webdancer_dagster.assets import corpus, evaluation, qa, registries, training, trajectories
from webdancer_dagster.evaluation.registry import REGISTRY_ENV
from webdancer_dagster.evaluation.settings import CLOSED_BOOK_MESSAGE
from webdancer_dagster.llm.model_files import find_smollm2_gguf
from webdancer_dagster.resources.warehouse import Warehouse
from webdancer_dagster.resources.web import WebEnvironment
from webdancer_dagster.testing.scripted_llm import ScriptedLLMServer
from webdancer_dagster.testing.tiny_model import create_tiny_llama
from webdancer_dagster.warehouse import WarehouseStore
from webdancer_dagster.web.search import SerperSearch

CORPUS = [
    {"title": "Zorblax Institute", "text": "The Zorblax Institute was founded by Ada Quill in 1901 in Tromso."},
    {"title": "Ada Quill", "text": "Ada Quill was a Norwegian chemist who founded the Zorblax Institute."},
]
QUESTIONS = [
    {"question": "Who founded the Zorblax Institute?", "answer": "Ada Quill"},
    {"question": "In which town was the Zorblax Institute founded?", "answer": ["Tromso", "Tromsø"]},
]


def responder(request: dict) -> str:
    messages = request["messages"]
    last = messages[-1]["content"]
    if "Judge whether the predicted answer" in last:
        return "Incorrect"
    if last.startswith("Read the webpage content below"):  # the visit tool's summarizer
        evidence = "The Zorblax Institute was founded by Ada Quill in 1901 in Tromso."
        return json.dumps({"rational": "The page names the founder.", "evidence": evidence, "summary": evidence})
    live_page = re.search(r"http://127\.0\.0\.1:\d+/zorblax\.html", last)
    visited = any('"visit"' in m["content"] for m in messages if m["role"] == "assistant")
    if last.startswith("<tool_response>") and live_page and not visited:
        call = json.dumps({"name": "visit", "arguments": {"url": [live_page.group()], "goal": "who founded it"}})
        return f"<think>A live page; I read it.</think>\n<tool_call>\n{call}\n</tool_call>"
    if last.startswith("<tool_response>"):
        answer = "Ada Quill" if "founded the" in messages[1]["content"] else "Tromso"
        return f"<think>The results tell.</think>\n<answer>{answer}</answer>"
    call = json.dumps({"name": "search", "arguments": {"query": ["Zorblax Institute"]}})
    return f"<think>I should search.</think>\n<tool_call>\n{call}\n</tool_call>"


@pytest.fixture
def declared(tmp_path, monkeypatch):
    """A registry with a declared endpoint (the scripted server), a benchmark with a corpus and one without;
    the asset modules are reloaded so their partitions include them, and restored afterwards."""
    with ScriptedLLMServer(responder) as server:
        folder = tmp_path / "registry"
        folder.mkdir()
        (folder / "qs.jsonl").write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
        (folder / "corpus.json").write_text(json.dumps(CORPUS))
        (folder / "evaluation.yaml").write_text(
            f"models:\n  - {{name: hosted, base_url: '{server.base_url}', model: scripted}}\n"
            "benchmarks:\n  - {name: zorblax, questions: qs.jsonl, corpus: corpus.json}\n"
            "  - {name: zorblax-closed, questions: qs.jsonl}\n"
        )
        monkeypatch.setenv(REGISTRY_ENV, str(folder / "evaluation.yaml"))
        monkeypatch.delenv("SERPER_API_KEY", raising=False)
        reload_asset_modules()
        try:
            yield server
        finally:
            monkeypatch.delenv(REGISTRY_ENV)
            reload_asset_modules()


def reload_asset_modules() -> None:
    """Reload `corpus` and, in import order, every asset module that imports from it, so no module keeps
    asset objects of the other registry (Dagster refuses two definitions of one key)."""
    for module in (registries, corpus, qa, trajectories, training, evaluation):
        importlib.reload(module)


def resources(home, base_url):
    return scripted_resources(
        home, base_url, ("policy", "judge", "summarizer"), base_url=lambda role: None if role == "policy" else base_url,
        use_cache=False, seed=0, max_tokens=24, temperature=0.0,
    )  # fmt: skip


def test_declared_models_and_benchmarks_are_partitions_and_score(small_web, isolated_home, declared, tmp_path):
    data, docs = small_web
    assert registries.SITE_NAMES == ["python-docs", "wiki", "musique", "zorblax"]
    assets = [*dg.load_assets_from_modules([corpus, evaluation])]
    checks = [*dg.load_asset_checks_from_modules([evaluation])]
    res = resources(isolated_home, declared.base_url)
    instance = dg.DagsterInstance.ephemeral()
    ops = run_config(data, docs)["ops"]
    ops["benchmark_scores"] = {"config": {"max_llm_calls": 3, "runs": 2, "data_dir": str(data)}}

    def run(selection, partition_key=None, raise_on_error=True):
        names = {"benchmark_scores"} if isinstance(selection, dg.AssetSelection) else set(selection)
        return dg.materialize(
            [*assets, *checks], selection=selection, partition_key=partition_key, resources=res, instance=instance,
            run_config={"ops": {k: v for k, v in ops.items() if k in names}}, raise_on_error=raise_on_error,
        )  # fmt: skip

    run(["web_sites"])
    sites = WarehouseStore(isolated_home).read_table("sites").set_index("name")
    assert bool(sites.loc["zorblax", "benchmark"]) and sites.loc["zorblax", "pages"] == 2
    for site in registries.SITE_NAMES:
        run(["crawl_pages"], partition_key=site)
    run(["search_index"])

    keys = evaluation.benchmark_partitions.get_partition_keys()
    assert {"hosted", "sft", "rl", "base"} == {k.keys_by_dimension["model"] for k in keys}
    assert {"zorblax", "zorblax-closed", "frames"} <= {k.keys_by_dimension["benchmark"] for k in keys}

    scores = dg.AssetSelection.assets("benchmark_scores") | dg.AssetSelection.checks_for_assets("benchmark_scores")
    local = run(scores, dg.MultiPartitionKey({"model": "hosted", "benchmark": "zorblax"}))
    [event] = local.asset_materializations_for_node("benchmark_scores")
    assert event.metadata["setting"].value == "local_web" and event.metadata["pass_at_1"].value == 1.0
    assert event.metadata["policy"].value == f"scripted @ {declared.base_url}"
    evaluations = {check.check_name: check for check in local.get_asset_check_evaluations()}
    assert set(evaluations) == {
        "benchmark_scores_are_sound",
        "benchmark_judge_credits_are_supported",
        "benchmark_turn_budget_fits_training",
        "benchmark_partitions_answered",
    }
    assert all(check.passed and check.metadata["partitions_checked"].value == 1 for check in evaluations.values())

    closed = run(scores, dg.MultiPartitionKey({"model": "hosted", "benchmark": "zorblax-closed"}))
    [event] = closed.asset_materializations_for_node("benchmark_scores")
    assert event.metadata["setting"].value == "closed_book" and event.metadata["search_backend"].value == "none"

    store = WarehouseStore(isolated_home)
    runs = store.read_table("eval_runs")
    by_setting = runs.groupby("setting")
    assert by_setting.size().to_dict() == {"closed_book": 4, "local_web": 4}
    observations = {
        setting: " ".join(s["observation"] or "" for t in group["trajectory"] for s in json.loads(t)["steps"])
        for setting, group in by_setting
    }
    assert "zorblax.webdancer.test" in observations["local_web"]
    assert CLOSED_BOOK_MESSAGE in observations["closed_book"] and "webdancer.test" not in observations["closed_book"]
    assert runs.loc[runs["setting"] == "closed_book", "searches"].sum() == 0
    table = store.read_table("scores").set_index("benchmark")
    assert table.loc["zorblax", "setting"] == "local_web" and table.loc["zorblax-closed", "setting"] == "closed_book"

    # sft was never trained: a clear failure that names the asset to materialize.
    failed = run(["benchmark_scores"], dg.MultiPartitionKey({"model": "sft", "benchmark": "zorblax-closed"}), False)
    assert not failed.success
    [failure] = [e for e in failed.all_events if e.event_type_value == "STEP_FAILURE"]
    error = failure.step_failure_data.error
    assert "materialize the sft_checkpoint asset first" in error.cause.message

    # A recorded checkpoint is exported to GGUF and served by llama.cpp; the judge stays on its own endpoint.
    pytest.importorskip("llama_cpp")
    model = create_tiny_llama(tmp_path / "sft-final", find_smollm2_gguf())
    store.replace_table("sft_checkpoint", pd.DataFrame([{"path": str(model.path), "sha256": model.sha256}]))
    ops["benchmark_scores"] = {"config": {"max_llm_calls": 2, "runs": 1, "max_questions": 1, "data_dir": str(data)}}
    sft = run(["benchmark_scores"], dg.MultiPartitionKey({"model": "sft", "benchmark": "zorblax-closed"}))
    [event] = sft.asset_materializations_for_node("benchmark_scores")
    assert event.metadata["policy"].value == f"sft-{model.sha256[:12]} @ a local server"
    assert event.metadata["policy_usage"].value["requests"] >= 1
    assert list((isolated_home / "gguf").rglob("model-f16.gguf"))


def test_live_search_comes_from_the_key_variable(isolated_home, monkeypatch):
    web = WebEnvironment(warehouse=Warehouse(home=str(isolated_home)), live_search_api_key_env="MY_SERPER")
    monkeypatch.delenv("MY_SERPER", raising=False)
    assert web.live_search() is None
    monkeypatch.setenv("MY_SERPER", "secret")
    assert isinstance(web.live_search(), SerperSearch) and "secret" not in repr(web.live_search())
    own = WebEnvironment(
        warehouse=Warehouse(home=str(isolated_home)), search_backend="serper", serper_api_key="k",
        serper_base_url="http://127.0.0.1:9/",
    )  # fmt: skip
    assert own.search().base_url == own.live_search().base_url == "http://127.0.0.1:9"  # both use the configured API


class LiveWeb(ThreadingHTTPServer):
    """A stand-in for the live web on 127.0.0.1: a Serper-compatible `POST /search` whose one hit links to a page
    this server also serves, so a run searches with the key and visits what it found."""

    daemon_threads = True
    PAGE = (
        "<html><head><title>Zorblax</title></head>"
        "<body><p>The Zorblax Institute was founded by Ada Quill in 1901 in Tromso.</p></body></html>"
    )

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), LiveWebHandler)
        self.searches: list[tuple[str, dict]] = []
        self.visits: list[str] = []

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class LiveWebHandler(BaseHTTPRequestHandler):
    server: LiveWeb

    def log_message(self, format, *args):  # noqa: A002
        pass

    def reply(self, content_type: str, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):  # noqa: N802
        query = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.searches.append((self.headers.get("X-API-KEY", ""), query))
        hit = {"title": "Zorblax Institute history", "link": f"{self.server.base_url}/zorblax.html", "snippet": "..."}
        self.reply("application/json", json.dumps({"organic": [hit]}).encode())

    def do_GET(self):  # noqa: N802
        self.server.visits.append(self.path)
        self.reply("text/html; charset=utf-8", LiveWeb.PAGE.encode())


@pytest.fixture
def live_web(monkeypatch):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    server = LiveWeb()
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_a_question_only_benchmark_searches_the_live_web_when_a_key_is_set(
    isolated_home, declared, live_web, monkeypatch
):
    """With a key, the question-only benchmark runs in the live-web setting (search, then visit what was found),
    the setting is stored with every run and the score, and the key is not; without the key the same partition
    starts afresh closed-book instead of mixing the two settings."""
    assets = [*dg.load_assets_from_modules([corpus, evaluation])]
    res = resources(isolated_home, declared.base_url)
    # The stand-in for the live web is on 127.0.0.1, which the live policy refuses unless it is named.
    res["web"] = WebEnvironment(
        warehouse=res["warehouse"], serper_base_url=live_web.base_url, private_network_hosts=["127.0.0.1"]
    )
    instance = dg.DagsterInstance.ephemeral()
    partition = dg.MultiPartitionKey({"model": "hosted", "benchmark": "zorblax-closed"})
    config = {"ops": {"benchmark_scores": {"config": {"max_llm_calls": 4, "runs": 1}}}}

    def score() -> dg.ExecuteInProcessResult:
        return dg.materialize(
            assets, selection=["benchmark_scores"], partition_key=partition, resources=res, instance=instance,
            run_config=config,
        )  # fmt: skip

    monkeypatch.setenv("SERPER_API_KEY", "test-serper-key")
    [event] = score().asset_materializations_for_node("benchmark_scores")
    assert event.metadata["setting"].value == "live_web" and event.metadata["search_backend"].value == "serper"
    assert event.metadata["pass_at_1"].value == 1.0
    assert [key for key, _ in live_web.searches] == ["test-serper-key"] * 2
    assert [query["q"] for _, query in live_web.searches] == ["Zorblax Institute"] * 2
    assert live_web.visits == ["/zorblax.html"] * 2

    store = WarehouseStore(isolated_home)
    runs = store.read_table("eval_runs")
    assert list(runs["setting"]) == ["live_web"] * 2 and list(runs["visits"]) == [1, 1]
    observations = [s["observation"] or "" for t in runs["trajectory"] for s in json.loads(t)["steps"]]
    assert any(f"{live_web.base_url}/zorblax.html" in text for text in observations)
    assert any("founded by Ada Quill" in text for text in observations)
    assert store.read_table("scores").set_index("benchmark").loc["zorblax-closed", "setting"] == "live_web"
    stored = " ".join(str(value) for table in ("eval_runs", "scores") for value in store.read_table(table).values.flat)
    assert "test-serper-key" not in stored and "test-serper-key" not in repr(event.metadata)

    monkeypatch.delenv("SERPER_API_KEY")
    [event] = score().asset_materializations_for_node("benchmark_scores")
    assert event.metadata["setting"].value == "closed_book" and event.metadata["runs_resumed"].value == 0
    assert list(store.read_table("eval_runs")["setting"]) == ["closed_book"] * 2
    assert len(live_web.searches) == 2  # closed-book runs search nothing


def test_a_judge_crediting_unrelated_answers_is_a_warning(isolated_home):
    """SmolLM2-135M as judge said "Correct" to "1973" for "James K. Polk": the check warns, without blocking."""
    store = WarehouseStore(isolated_home)
    runs = pd.DataFrame({
        "partition": "musique|base", "fingerprint": "f", "question_id": ["a", "b", "c", "d"], "run": 0,
        "judge_method": "llm", "correct": True, "f1": [0.0, 0.0, 0.0, 0.5],
    })  # fmt: skip
    score = {"partition": "musique|base", "fingerprint": "f", "questions": 4, "runs_per_question": 1}
    store.replace_table("eval_runs", runs)
    store.replace_table("scores", pd.DataFrame([score]))
    result = evaluation.benchmark_judge_credits_are_supported(warehouse=Warehouse(home=str(isolated_home)))
    assert not result.passed and result.severity == dg.AssetCheckSeverity.WARN
    assert result.metadata["doubtful_partitions"].value == ["musique|base"]
    table = result.metadata["credits"].value
    assert re.search(r"musique\\\|base \|\s+4 \|\s+3 \|\s+0\.75 \| True\s+\|$", table)  # credited, no overlap, share

    store.replace_table("eval_runs", runs.assign(f1=[0.0, 0.3, 0.3, 0.5]))  # one credit in four without overlap
    assert evaluation.benchmark_judge_credits_are_supported(warehouse=Warehouse(home=str(isolated_home))).passed


def test_a_turn_budget_below_the_trained_turns_is_a_warning(isolated_home):
    """sft scored with 512 tokens a turn when the SFT set's p95 turn was 870 warns; base is not compared."""
    store = WarehouseStore(isolated_home)
    scores = pd.DataFrame({
        "partition": ["musique|sft", "musique|rl", "musique|base"], "max_turn_tokens": [512, 1088, 512],
        "trained_turn_tokens_p95": [870, 870, None],
    })  # fmt: skip
    store.replace_table("scores", scores)
    result = evaluation.benchmark_turn_budget_fits_training(warehouse=Warehouse(home=str(isolated_home)))
    assert not result.passed and result.severity == dg.AssetCheckSeverity.WARN
    assert result.metadata["partitions_below_trained_p95"].value == ["musique|sft"]

    store.replace_table("scores", scores.assign(max_turn_tokens=[870, 1088, 512]))
    assert evaluation.benchmark_turn_budget_fits_training(warehouse=Warehouse(home=str(isolated_home))).passed
