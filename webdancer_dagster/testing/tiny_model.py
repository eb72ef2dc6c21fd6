"""A tiny random-weight Llama with the real tokenizer, and a quick fit to given chats (tests and benchmarks only).

Tests and benchmarks need a model that loads, trains and serves in a fraction of a second on a CPU while
exercising the real tokenizer and chat template; no production code path imports this module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from webdancer_dagster.llm.tokenizer import load_tokenizer
from webdancer_dagster.shared.hashing import folder_sha256
from webdancer_dagster.training.base_model import BaseModel
from webdancer_dagster.training.masking import IGNORE_INDEX, tokenize_chat


def create_tiny_llama(output_dir: Path, tokenizer_source: Path, seed: int = 0) -> BaseModel:
    """Save a 2-layer, 64-wide random Llama with the real SmolLM2 tokenizer.

    It shares the real tokenizer and chat template, so masking and data handling are exercised exactly,
    while a training step takes a fraction of a second on a CPU.
    """
    tokenizer = load_tokenizer(str(tokenizer_source), str(Path(output_dir).parent / ".tokenizer-cache"))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    # A private generator state: the same seed gives the same weights without reseeding the caller's RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir, safe_serialization=True)
    tokenizer.save_pretrained(output_dir)
    return BaseModel(
        path=output_dir,
        parameters=model.num_parameters(),
        vocab_size=config.vocab_size,
        source=f"random tiny llama (seed {seed}) + tokenizer of {tokenizer_source}",
        sha256=folder_sha256(output_dir),
    )


def fit_assistant_turns(
    folder: Path, chats: Sequence[Sequence[Mapping[str, str]]], steps: int = 100, learning_rate: float = 3e-3
) -> float:
    """Teach the model in `folder` (in place) to produce the assistant turns of `chats`; returns the final loss.

    For test and benchmark models that must act in the agent's format (a random one never calls a tool or
    answers). The LM head runs on the learned positions only, so a step costs a fraction of a full forward; a
    GPU is used when there is one, so full-size benchmark models can be taught too.
    """
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32).to(device)
    examples = [tokenize_chat(tokenizer, chat) for chat in chats]
    width = max(len(example.input_ids) for example in examples)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    input_ids = torch.tensor([e.input_ids + [pad] * (width - len(e.input_ids)) for e in examples], device=device)
    targets = torch.tensor([e.labels + [IGNORE_INDEX] * (width - len(e.labels)) for e in examples], device=device)
    targets = targets[:, 1:]
    learned = targets != IGNORE_INDEX
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    loss = torch.tensor(float("nan"))
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if device == "cuda" else []):
        torch.manual_seed(0)
        for _ in range(steps):
            hidden = model.model(input_ids=input_ids).last_hidden_state[:, :-1]
            loss = torch.nn.functional.cross_entropy(model.lm_head(hidden[learned]), targets[learned])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    model.save_pretrained(folder)
    return float(loss.item())
