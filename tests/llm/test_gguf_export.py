"""A trained transformers folder exported to GGUF gives llama.cpp the same logits and greedy text as transformers,
and is served for scoring with the resources asked for."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from webdancer_dagster.assets.evaluation import BenchmarkScoresConfig, resolve_policy
from webdancer_dagster.assets.registries import REGISTRY
from webdancer_dagster.llm.gguf_export import GGUFExportError, check_tokenizer_matches, export_gguf
from webdancer_dagster.llm.model_files import find_smollm2_gguf
from webdancer_dagster.llm.server import ModelServerConfig, llama_cpp_command
from webdancer_dagster.resources.llm import LLMEndpointResource, LocalModelServer
from webdancer_dagster.resources.warehouse import Warehouse
from webdancer_dagster.shared.hashing import folder_sha256
from webdancer_dagster.testing.tiny_model import create_tiny_llama
from webdancer_dagster.training.base_model import BaseModel
from webdancer_dagster.warehouse import WarehouseStore

llama_cpp = pytest.importorskip("llama_cpp")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> BaseModel:
    return create_tiny_llama(tmp_path_factory.mktemp("tiny-llama") / "model", find_smollm2_gguf(), seed=3)


def _prompt_ids(folder: Path) -> list[int]:
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    chat = [{"role": "user", "content": "Who founded the American Psychological Association in 1892?"}]
    return list(
        tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    )


def _llama_logits(gguf_path: Path, ids: list[int]) -> np.ndarray:
    llm = llama_cpp.Llama(str(gguf_path), n_ctx=512, logits_all=True, n_threads=1, verbose=False)
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)])
    finally:
        llm.close()


def _llama_greedy(gguf_path: Path, ids: list[int], steps: int) -> list[int]:
    llm = llama_cpp.Llama(str(gguf_path), n_ctx=512, n_threads=1, verbose=False)
    try:
        out: list[int] = []
        for token in llm.generate(ids, temp=0.0, top_k=1):
            out.append(int(token))
            if len(out) == steps:
                return out
        return out
    finally:
        llm.close()


@pytest.mark.parametrize(("outtype", "atol"), [("f32", 1e-3), ("f16", 2e-2)])
def test_export_matches_transformers_logits_and_greedy_text(
    tiny_model: BaseModel, tmp_path: Path, outtype: str, atol: float
) -> None:
    export = export_gguf(tiny_model.path, tiny_model.sha256, tmp_path / "gguf", outtype)  # type: ignore[arg-type]
    ids = _prompt_ids(tiny_model.path)
    model = AutoModelForCausalLM.from_pretrained(tiny_model.path, local_files_only=True, dtype=torch.float32).eval()
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0].numpy()
        greedy = model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False, min_new_tokens=24)
    actual = _llama_logits(export.path, ids)

    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, atol=atol, rtol=0)
    assert (actual.argmax(-1) == expected.argmax(-1)).all()
    assert _llama_greedy(export.path, ids, 24) == greedy[0, len(ids) :].tolist()


def test_export_is_cached_by_sha256_and_type(tiny_model: BaseModel, tmp_path: Path) -> None:
    first = export_gguf(tiny_model.path, tiny_model.sha256, tmp_path, "q8_0")
    again = export_gguf(tiny_model.path, tiny_model.sha256, tmp_path, "q8_0")
    other = export_gguf(tiny_model.path, "f" * 64, tmp_path, "q8_0")

    assert not first.reused and again.reused and not other.reused
    assert again.path == first.path != other.path
    assert first.path.read_bytes() == other.path.read_bytes()  # same folder, deterministic bytes
    assert [p.name for p in first.path.parent.iterdir() if p.suffix == ".gguf"] == ["model-q8_0.gguf"]


def test_export_carries_the_chat_template_and_special_tokens(tiny_model: BaseModel, tmp_path: Path) -> None:
    import gguf

    reader = gguf.GGUFReader(str(export_gguf(tiny_model.path, tiny_model.sha256, tmp_path, "f16").path))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model.path, local_files_only=True)

    assert reader.fields["tokenizer.ggml.eos_token_id"].contents() == tokenizer.eos_token_id
    assert "<|im_start|>" in reader.fields["tokenizer.chat_template"].contents()
    assert reader.fields["general.architecture"].contents() == "llama"


def test_a_changed_tokenizer_is_caught_before_the_gguf_is_kept(tiny_model: BaseModel, tmp_path: Path) -> None:
    export = export_gguf(tiny_model.path, tiny_model.sha256, tmp_path / "gguf", "f16")
    folder = tmp_path / "digits"
    shutil.copytree(tiny_model.path, folder)
    tokenizer_json = json.loads((folder / "tokenizer.json").read_text())
    # A tokenizer that splits on every "e": llama.cpp's GPT-2 split cannot reproduce it.
    tokenizer_json["pre_tokenizer"] = {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Split", "pattern": {"String": "e"}, "behavior": "Isolated", "invert": False},
            tokenizer_json["pre_tokenizer"],
        ],
    }
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer_json))

    with pytest.raises(GGUFExportError, match="pre-tokenizer"):
        export_gguf(folder, folder_sha256(folder), tmp_path / "gguf2", "f16")
    assert not list((tmp_path / "gguf2").rglob("*.gguf"))
    with pytest.raises(GGUFExportError, match="tokenizes the probe text differently"):
        check_tokenizer_matches(folder, export.path)


def test_non_llama_folders_are_refused_with_a_way_out(tmp_path: Path) -> None:
    folder = tmp_path / "gpt2"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))

    with pytest.raises(GGUFExportError, match="vllm"):
        export_gguf(folder, "0" * 64, tmp_path / "gguf")


def _policy_role() -> LLMEndpointResource:
    return LLMEndpointResource(
        role="policy", server=LocalModelServer(mode="llama_cpp", n_threads=1), warehouse=Warehouse()
    )


def _threads(server: ModelServerConfig) -> str:
    command = llama_cpp_command(server, port=1)
    assert command[command.index("--n_threads") + 1] == command[command.index("--n_threads_batch") + 1]
    return command[command.index("--n_threads") + 1]


@pytest.mark.parametrize(("server_threads", "expected"), [(None, "1"), (2, "2")])
def test_a_checkpoint_scored_on_its_own_server_takes_the_threads_asked_for(
    tiny_model: BaseModel, tmp_path: Path, server_threads: int | None, expected: str
) -> None:
    """benchmark_scores' `server_threads` sizes the checkpoint's server; left empty, the llm_server's threads."""
    store = WarehouseStore(tmp_path / "home")
    store.replace_table("sft_checkpoint", pd.DataFrame([{"path": str(tiny_model.path), "sha256": tiny_model.sha256}]))
    config = BenchmarkScoresConfig(server_threads=server_threads)

    policy = resolve_policy(REGISTRY.models["sft"], _policy_role(), store, config)

    assert policy.server_config is not None and _threads(policy.server_config()) == expected


def test_with_server_threads_the_base_model_gets_a_server_of_its_own_and_keeps_its_fingerprint(tmp_path: Path) -> None:
    """The llm_server (1 thread) keeps the summarizer; the base model is served from the same GGUF with 2 threads,
    under the model id and `served_by` its runs and cached replies are stored with."""
    role = _policy_role()
    policy = resolve_policy(
        REGISTRY.models["base"], role, WarehouseStore(tmp_path / "home"), BenchmarkScoresConfig(server_threads=2)
    )

    assert policy.server_config is not None
    served = policy.server_config()
    shared = role.server.server_config()
    assert _threads(served) == "2" and _threads(shared) == "1"
    assert served.model_path == str(find_smollm2_gguf())
    assert policy.config.model == shared.model_name
    assert policy.config.served_by == shared.served_by()


def test_with_server_parallel_a_checkpoint_is_scored_on_llama_server_slots(
    tiny_model: BaseModel, tmp_path: Path
) -> None:
    """`server_parallel` serves the checkpoint's GGUF from llama.cpp's own server with that many slots (threads
    still from `server_threads`), answers that many runs at once, and names the engine in `served_by`, so replies
    cached from llama-cpp-python are never handed out as its samples."""
    store = WarehouseStore(tmp_path / "home")
    store.replace_table("sft_checkpoint", pd.DataFrame([{"path": str(tiny_model.path), "sha256": tiny_model.sha256}]))
    config = BenchmarkScoresConfig(server_threads=2, server_parallel=4)

    policy = resolve_policy(REGISTRY.models["sft"], _policy_role(), store, config)
    one_at_a_time = resolve_policy(REGISTRY.models["sft"], _policy_role(), store, BenchmarkScoresConfig())

    assert policy.server_config is not None
    served = policy.server_config()
    assert (served.mode, served.n_parallel, served.n_threads) == ("llama_server", 4, 2)
    assert served.model_path.endswith("model-f16.gguf")
    assert policy.config.served_by == f"{one_at_a_time.config.served_by} on llama-server"
    assert config.workers == 4 and BenchmarkScoresConfig(server_parallel=2, max_workers=3).workers == 3
    assert BenchmarkScoresConfig().workers == 1


def test_with_server_parallel_the_base_model_gets_llama_server_slots_of_its_own(tmp_path: Path) -> None:
    role = _policy_role()
    policy = resolve_policy(
        REGISTRY.models["base"], role, WarehouseStore(tmp_path / "home"), BenchmarkScoresConfig(server_parallel=3)
    )

    assert policy.server_config is not None
    served, shared = policy.server_config(), role.server.server_config()
    assert (served.mode, served.n_parallel, shared.mode) == ("llama_server", 3, "llama_cpp")
    assert served.model_path == shared.model_path and policy.config.model == shared.model_name
    assert policy.config.served_by == served.served_by() != shared.served_by()
