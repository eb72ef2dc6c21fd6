"""SFT step time: TRL's SFTTrainer launched by the torchrun resource through Dagster vs a plain PyTorch loop.

Both train the same model on the same batches: the shipped WebDancer trajectories, masked by `masking.py` and fitted
to `--seq-len` tokens by shortening their observations (most are longer, so most batches are just under that shape;
the few whose assistant turns alone are longer are dropped), batch size 1, fused
AdamW with gradient clipping. The baseline runs in this process before and after the launch, so both see the
same machine load. The ratio compares median seconds per optimizer step (the fastest steps are compared too, as
other people's jobs move medians on a shared machine); the launch's fixed cost (process start, imports, model
load, checkpoint writes) is reported beside it. Target: ratio <= 1.15. Also timed, for reference: the LM head
`sft.py` does not pick on this device (TRL's fused head is its GPU default, the model's own its CPU default). Both
train fp32 weights under bf16 autocast where `sft.py` does by default (a GPU, or a CPU with native bf16: AVX512-BF16
or AMX), and in fp32 elsewhere; `--bf16` asks for autocast on any CPU.

On CPU both loops allocate memory alike: the script re-runs itself under the launcher's `cpu_malloc_tunables`
(which keep freed memory for the next step), or both on glibc's defaults with `--glibc-malloc`.

    .venv/bin/python benchmarks/bench_sft.py [--steps 20] [--seq-len 2048] [--model path/to/hf-folder] [--bf16]
        [--glibc-malloc]
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from webdancer_dagster.llm.model_files import find_smollm2_gguf
from webdancer_dagster.paths import DATA_DIR
from webdancer_dagster.resources.torchrun import CPU_MALLOC_TUNABLES, TorchrunLauncher
from webdancer_dagster.testing.tiny_model import create_tiny_llama
from webdancer_dagster.training.config import SFTHyperparameters, to_cli_args
from webdancer_dagster.training.masking import TokenizedDataset, TruncationPolicy, tokenize_chats
from webdancer_dagster.training.reporting import bf16_autocast
from webdancer_dagster.training.sft import read_chats

RESULTS = Path(__file__).resolve().parent / "results"
TRAJECTORIES = DATA_DIR / "webdancer_samples" / "sample_traj.jsonl"
TARGET_RATIO = 1.15


class BenchSFTConfig(dg.Config):
    model_dir: str
    output_dir: str
    hparams: list[str]


@dg.asset
def bench_sft_checkpoint(
    context: dg.AssetExecutionContext, config: BenchSFTConfig, launcher: TorchrunLauncher
) -> dg.MaterializeResult:
    args = ["--train_file", str(TRAJECTORIES), "--model_dir", config.model_dir, "--output_dir", config.output_dir]
    invocation = launcher.run(
        context, "webdancer_dagster.training.sft", [*args, *config.hparams], Path(config.output_dir) / "logs"
    )
    return invocation.get_materialize_result()


def hyperparameters(steps: int, seq_len: int, fused_lm_head: bool | None, bf16: bool | None) -> SFTHyperparameters:
    return SFTHyperparameters(
        learning_rate=1e-5,
        max_steps=steps,
        max_length=seq_len,
        truncation=TruncationPolicy.SHORTEN_OBSERVATIONS,
        warmup_ratio=0.0,
        lr_scheduler_type="constant",
        save_steps=steps,
        fused_lm_head=fused_lm_head,
        bf16=bf16,
    )


def plain_loop_step_seconds(model_dir: Path, data: TokenizedDataset, hparams: SFTHyperparameters) -> list[float]:
    """Forward, backward, clip, AdamW step on each batch in turn, from a fresh copy of the model.

    It trains as the Trainer does: fp32 weights, under bf16 autocast where `sft.py` would use it (`bf16_autocast`).
    """
    on_gpu = torch.cuda.is_available()
    device = "cuda" if on_gpu else "cpu"
    autocast = bf16_autocast(on_gpu, hparams.bf16)
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, dtype=torch.float32).to(device)
    model.train()
    # Fused, like the Trainer's default ("adamw_torch_fused" for torch >= 2.8), so only the loop differs.
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=hparams.learning_rate, weight_decay=hparams.weight_decay, fused=True
    )
    seconds = []
    for step in range(hparams.max_steps):
        example = data.examples[step % len(data.examples)]
        input_ids = torch.tensor([example.input_ids], device=device)
        labels = torch.tensor([example.labels], device=device)
        started = time.perf_counter()
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=autocast):
            loss = model(input_ids=input_ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), hparams.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if on_gpu:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
    return seconds


def allocate_as_the_workers(launcher: TorchrunLauncher) -> None:
    """Re-run this script under the allocator settings the launcher gives its CPU workers (`cpu_malloc_tunables`),
    so that the plain loop in this process allocates as the Trainer's worker does: glibc reads them at start only."""
    tunables = launcher.worker_env("cpu").get("GLIBC_TUNABLES")
    if tunables and os.environ.get("GLIBC_TUNABLES") != tunables:
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "GLIBC_TUNABLES": tunables})


def launched_run(
    model_dir: Path, output_dir: Path, hparams: SFTHyperparameters, launcher: TorchrunLauncher
) -> tuple[list[float], float]:
    """Materialize the launch asset; returns (per-step seconds reported by rank 0, wall seconds)."""
    started = time.perf_counter()
    result = dg.materialize(
        [bench_sft_checkpoint],
        resources={"launcher": launcher},
        run_config={
            "ops": {
                "bench_sft_checkpoint": {
                    "config": {
                        "model_dir": str(model_dir),
                        "output_dir": str(output_dir),
                        "hparams": to_cli_args(hparams),
                    }
                }
            }
        },
        instance=dg.DagsterInstance.ephemeral(),
    )
    wall = time.perf_counter() - started
    metadata = result.asset_materializations_for_node("bench_sft_checkpoint")[0].metadata
    return metadata["step_seconds"].value, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--model", type=Path, help="HF model folder; default: a tiny random Llama (SmolLM2 tokenizer)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast on any CPU (default: where sft.py uses it)")
    parser.add_argument(
        "--glibc-malloc", action="store_true", help="both loops on glibc's allocator defaults (cpu_malloc_tunables='')"
    )
    args = parser.parse_args()
    bf16 = True if args.bf16 else None
    launcher = TorchrunLauncher(nproc_per_node=1, cpu_malloc_tunables="" if args.glibc_malloc else CPU_MALLOC_TUNABLES)
    if not torch.cuda.is_available():
        allocate_as_the_workers(launcher)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model or create_tiny_llama(Path(tmp) / "tiny", find_smollm2_gguf()).path
        hparams = hyperparameters(args.steps, args.seq_len, fused_lm_head=None, bf16=bf16)
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        data = tokenize_chats(tokenizer, read_chats(TRAJECTORIES), hparams.max_length, hparams.truncation)
        tokens_per_step = len(data.examples[0].input_ids)
        plain_before = plain_loop_step_seconds(model_dir, data, hparams)
        trl_steps, trl_wall = launched_run(model_dir, Path(tmp) / "sft", hparams, launcher)
        plain_after = plain_loop_step_seconds(model_dir, data, hparams)
        # sft.py fuses TRL's LM head on GPU only; the launch with the other head shows what that choice is worth.
        other_head_fused = not torch.cuda.is_available()
        other_steps, _ = launched_run(
            model_dir,
            Path(tmp) / "sft-other",
            hyperparameters(args.steps, args.seq_len, other_head_fused, bf16),
            launcher,
        )
    plain = plain_before + plain_after
    plain_s, trl_s, other_s = (statistics.median(steps) for steps in (plain, trl_steps, other_steps))
    # On a shared machine the medians move with other people's load; the fastest step is the least disturbed.
    best_ratio = min(trl_steps) / min(plain)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    other_head = "TRL fused LM head" if other_head_fused else "model's own LM head"
    summary = {
        "benchmark": "sft",
        "model": str(args.model) if args.model else "tiny random Llama (2 layers, 64 wide, SmolLM2 tokenizer)",
        "device": device,
        "bf16_autocast": bf16_autocast(device == "cuda", bf16),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "seq_len": tokens_per_step,
        "steps": len(trl_steps),
        "plain_s_per_step": round(plain_s, 4),
        "trl_launcher_s_per_step": round(trl_s, 4),
        "ratio": round(trl_s / plain_s, 3),
        "plain_fastest_step_s": round(min(plain), 4),
        "trl_launcher_fastest_step_s": round(min(trl_steps), 4),
        "fastest_step_ratio": round(best_ratio, 3),
        "other_lm_head": other_head,
        "other_lm_head_s_per_step": round(other_s, 4),
        "other_lm_head_ratio": round(other_s / plain_s, 3),
        "launch_wall_s": round(trl_wall, 2),
        "launch_fixed_s": round(trl_wall - sum(trl_steps), 2),
        "trl_tokens_per_s": round(tokens_per_step / trl_s, 1),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "target_ratio": TARGET_RATIO,
        "meets_target": trl_s / plain_s <= TARGET_RATIO,
    }
    precision = " (bf16 autocast)" if summary["bf16_autocast"] else ""
    print(
        f"SFT on {device}{precision}, {tokens_per_step} tokens/step, {len(trl_steps)} steps: "
        f"plain loop {plain_s:.3f} s/step, "
        f"TRL via torchrun launcher {trl_s:.3f} s/step -> ratio {summary['ratio']:.2f}x (target <= {TARGET_RATIO}; "
        f"fastest steps {best_ratio:.2f}x); with the {other_head} {other_s:.3f} s/step "
        f"({summary['other_lm_head_ratio']:.2f}x); launch fixed cost {summary['launch_fixed_s']:.1f} s; "
        f"load average {summary['load_average_1min']}"
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sft.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
