"""Base model folders: the tiny test Llama, describing any HF folder, and (slow) the real GGUF conversion."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from webdancer_dagster.llm.model_files import find_smollm2_gguf
from webdancer_dagster.shared.hashing import file_sha256, folder_sha256
from webdancer_dagster.testing.tiny_model import create_tiny_llama
from webdancer_dagster.training.base_model import BaseModel, convert_gguf, prepare_base_model


def test_tiny_llama_loads_with_the_real_tokenizer_and_chat_template(tiny_model: BaseModel) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model.path, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model.path, local_files_only=True)

    assert model.num_parameters() == tiny_model.parameters < 5_000_000
    assert model.config.vocab_size == tiny_model.vocab_size == len(tokenizer) == 49152
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (2, 64)
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert rendered.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert tiny_model.sha256 == folder_sha256(tiny_model.path)


def test_tiny_llama_weights_follow_the_seed_without_touching_the_global_rng(tiny_model: BaseModel) -> None:
    siblings = tiny_model.path.parent
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)

    same = create_tiny_llama(siblings / "seed0-again", find_smollm2_gguf(), seed=0)
    other = create_tiny_llama(siblings / "seed1", find_smollm2_gguf(), seed=1)

    assert torch.equal(torch.rand(3), expected_draw)
    weights = file_sha256(tiny_model.path / "model.safetensors")
    assert file_sha256(same.path / "model.safetensors") == weights
    assert file_sha256(other.path / "model.safetensors") != weights


def test_an_existing_folder_is_described_without_loading_its_weights(tiny_model: BaseModel) -> None:
    described = prepare_base_model(tiny_model.path, cache_root=tiny_model.path.parent / "unused")

    assert described == BaseModel(
        path=tiny_model.path,
        parameters=tiny_model.parameters,
        vocab_size=tiny_model.vocab_size,
        source=str(tiny_model.path),
        sha256=tiny_model.sha256,
    )
    assert not (tiny_model.path.parent / "unused").exists()


@pytest.mark.parametrize("name", ["weights.bin", "not-a-model"])
def test_sources_that_are_neither_gguf_nor_model_folder_are_refused(tmp_path: Path, name: str) -> None:
    source = tmp_path / name
    if name.endswith(".bin"):
        source.write_bytes(b"\0")
    else:
        source.mkdir()

    with pytest.raises(FileNotFoundError):
        prepare_base_model(source, cache_root=tmp_path / "cache")


@pytest.mark.slow
def test_gguf_converts_once_into_a_plain_fp32_folder_with_the_gguf_weights(tmp_path: Path) -> None:
    gguf = find_smollm2_gguf()

    converted = convert_gguf(gguf, tmp_path)

    config = json.loads((converted.path / "config.json").read_text())
    assert "quantization_config" not in config
    assert converted.sha256 == file_sha256(gguf) and 130_000_000 < converted.parameters < 140_000_000
    model = AutoModelForCausalLM.from_pretrained(converted.path, local_files_only=True)
    assert model.dtype == torch.float32
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    reference_weights = reference.state_dict()
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, reference_weights[name].float(), rtol=0, atol=0)
    written = (converted.path / "model.safetensors").stat().st_mtime_ns

    again = convert_gguf(gguf, tmp_path)

    assert again == converted
    assert (converted.path / "model.safetensors").stat().st_mtime_ns == written
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == [converted.path.name]
