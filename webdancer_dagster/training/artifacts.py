"""Files around a training run: its input JSONL, the folder its inputs name, its record, its plots and probes.

A run's output folder is named by a hash of everything that decides its weights (the exact chats, the base
model's bytes, the hyperparameters), so rerunning with the same inputs lands in the same folder: a finished run
is reused from its record, a killed one resumes from its newest checkpoint, and different inputs never mix.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webdancer_dagster.files import folder_bytes, write_text_atomic
from webdancer_dagster.shared.hashing import folder_sha256
from webdancer_dagster.training.base_model import BaseModel

TRAIN_FILE = "train.jsonl"
RUN_RECORD_FILE = "run_record.json"
PROBE_TEXT = "Who wrote Hamlet? <think>I should search.</think>"
# transformers' PREFIX_CHECKPOINT_DIR, spelled out: loading the definitions stays free of torch.
RESUME_CHECKPOINT_PREFIX = "checkpoint-"


@dataclass(frozen=True)
class RunInputs:
    """Where one training run reads and writes, and the hashes that name it."""

    output_dir: Path
    train_file: Path
    run_key: str
    dataset_sha256: str
    examples: int


def sft_jsonl(records: Sequence[Mapping[str, Any]]) -> str:
    """`sft_dataset` rows as the JSONL the SFT entry point reads, in id order so equal rows give equal bytes.

    Each chat goes in as the JSON text the funnel stored: decoded once, by the trainer, never re-encoded here."""
    lines = []
    for row in _by_id(records):
        messages = row["messages"]
        if not isinstance(messages, str):
            raise TypeError(f"sft_dataset row {row.get('id')!r}: messages must be the stored JSON text")
        lines.append(f'{{"id": {json.dumps(row.get("id"))}, "messages": {messages}}}')
    return "".join(line + "\n" for line in lines)


def rl_jsonl(records: Sequence[Mapping[str, Any]]) -> str:
    """`rl_pool` rows as the JSONL the DAPO entry point reads: question and every accepted answer, in id order."""
    lines = []
    for row in _by_id(records):
        aliases = row.get("answer_aliases") or "[]"
        answers = [row["answer"], *(json.loads(aliases) if isinstance(aliases, str) else aliases)]
        line = {"id": row.get("id"), "question": row["question"], "answers": answers}
        lines.append(json.dumps(line, ensure_ascii=False, sort_keys=True))
    return "".join(line + "\n" for line in lines)


def run_key(dataset_sha256: str, base_model_sha256: str, hyperparameters: Mapping[str, Any]) -> str:
    """Short hash of what decides a run's weights; equal inputs give the same output folder."""
    identity = {"dataset": dataset_sha256, "base_model": base_model_sha256, "hyperparameters": dict(hyperparameters)}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def prepare_run(
    train_text: str,
    examples: int,
    base_model_sha256: str,
    hyperparameters: Mapping[str, Any],
    root: Path,
) -> RunInputs:
    """Write the run's JSONL into `root/<run key>/` (atomically, once) and say where the run goes."""
    if not examples:
        raise ValueError("no training records: there is nothing to train on")
    dataset_sha256 = hashlib.sha256(train_text.encode()).hexdigest()
    key = run_key(dataset_sha256, base_model_sha256, hyperparameters)
    output_dir = Path(root) / key
    output_dir.mkdir(parents=True, exist_ok=True)
    train_file = output_dir / TRAIN_FILE
    if not train_file.is_file():
        write_text_atomic(train_file, train_text)
    return RunInputs(output_dir, train_file, key, dataset_sha256, examples)


def _by_id(records: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return sorted(records, key=lambda row: str(row.get("id", "")))


def write_run_record(output_dir: Path, record: Mapping[str, Any]) -> Path:
    """Mark a run finished with what it reported; `read_run_record` trusts it only while the weights match."""
    path = Path(output_dir) / RUN_RECORD_FILE
    write_text_atomic(path, json.dumps(dict(record), indent=1, default=str))
    return path


def remove_resume_checkpoints(output_dir: Path) -> int:
    """Delete the numbered checkpoints a finished run kept for resuming and return the bytes freed. Each holds the
    weights with the optimizer, scheduler and RNG state (about three times `final/`), and a run whose record is
    written never resumes: it is reused, or trained afresh when its weights changed."""
    freed = 0
    for folder in Path(output_dir).glob(f"{RESUME_CHECKPOINT_PREFIX}*"):
        if folder.is_dir():
            freed += folder_bytes(folder)
            shutil.rmtree(folder)
    return freed


def read_run_record(output_dir: Path) -> dict[str, Any] | None:
    """The record of a finished run in `output_dir`, or None when there is none or its checkpoint changed since."""
    path = Path(output_dir) / RUN_RECORD_FILE
    if not path.is_file():
        return None
    record = json.loads(path.read_text(encoding="utf-8"))
    checkpoint = Path(record["checkpoint_path"])
    if not checkpoint.is_dir() or folder_sha256(checkpoint) != record["checkpoint_sha256"]:
        return None
    return record


def model_folder_sha256(model: BaseModel, source: Path) -> str:
    """The folder's own hash: a converted GGUF is described by the GGUF's digest, a given folder by its files."""
    return model.sha256 if Path(source).is_dir() else folder_sha256(model.path)


def describe_tokenizer(folder: Path) -> dict[str, Any]:
    """Tokenizer facts from its config files, without loading it (a UI label, not a check)."""
    config_path = Path(folder) / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    template_file = Path(folder) / "chat_template.jinja"
    return {
        "class": config.get("tokenizer_class"),
        "eos_token": config.get("eos_token"),
        "chat_template": bool(config.get("chat_template")) or template_file.is_file(),
        "model_max_length": config.get("model_max_length"),
    }


def plot_curves(
    history: Sequence[Mapping[str, float]], series: Mapping[str, str], path: Path, title: str, ylabel: str
) -> Path:
    """Save one line per `series` key (label: value) over the logged steps as a PNG; the Agg canvas needs no
    display and no global pyplot state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    legend = len(series) > 1
    figure = Figure(figsize=(9 if legend else 6, 3.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for key, label in series.items():
        points = [(entry["step"], entry[key]) for entry in history if key in entry]
        axes.plot(
            [step for step, _ in points],
            [value for _, value in points],
            marker="o" if len(points) < 30 else None,
            label=label,
        )
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("optimizer step")
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    if legend:  # beside the axes: inside them it hid the early steps of every curve
        axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def png_markdown(path: Path, alt: str) -> str:
    """Markdown that embeds a PNG inline, the way Dagster's UI shows images in metadata."""
    encoded = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f"![{alt}](data:image/png;base64,{encoded})"


@dataclass(frozen=True)
class CheckpointProbe:
    """One forward pass of a saved checkpoint on a short input."""

    logits_shape: tuple[int, ...]
    non_finite: int
    vocab_size: int

    @property
    def finite(self) -> bool:
        return self.non_finite == 0 and math.prod(self.logits_shape) > 0


def probe_checkpoint(folder: Path, text: str = PROBE_TEXT) -> CheckpointProbe:
    """Load the checkpoint as downstream code will and count non-finite logits on `text`; load errors raise."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
    model.eval()
    inputs = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    return CheckpointProbe(
        logits_shape=tuple(logits.shape),
        non_finite=int((~torch.isfinite(logits)).sum()),
        vocab_size=int(model.config.vocab_size),
    )
