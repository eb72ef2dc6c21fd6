"""DAPO rollouts sampled by a model server that serves the trainer's current weights.

In-process `generate` (`rollout.LocalPolicy`) needs nothing but the trainer, and is slow: on 2 CPU cores
transformers generates SmolLM2 at a fraction of llama.cpp's speed. The field's RL systems (verl's agent loop,
AReaL, slime, TRL's vLLM modes) sample rollouts from a serving engine and sync the trainer's weights into it.
`ServedPolicy` does that with the project's llama.cpp server: a sync writes the weights as GGUF (the exporter
evaluation uses for checkpoints) and restarts the server on the same port. The agent then talks to it through
`LLMEndpoint`, as to any model; what it says is re-tokenized by `rollout.rl_sample` exactly as for in-process
rollouts, so the trainer still scores the sequence it trains on.

Every sync is verified: the server's greedy continuation of a probe chat must equal the trainer's own (with an
f16 export the two may part where float rounding flips a near tie; the record says so). DAPO sees the server only
through `PolicyServer`, the place where a vLLM backend would go; none is built, since vLLM could not be run here.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from pathlib import Path
from typing import Protocol

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from webdancer_dagster.llm.client import EndpointConfig, LLMEndpoint, SamplingParams
from webdancer_dagster.llm.gguf_export import OutType, check_tokenizer_matches, write_llama_gguf
from webdancer_dagster.llm.server import ModelServer, ModelServerConfig, default_threads, free_port

logger = logging.getLogger(__name__)

SERVED_MODEL_NAME = "policy"
PROBE_MESSAGES = ({"role": "user", "content": "Which city is the capital of France?"},)
PROBE_TOKENS = 12


@dataclasses.dataclass(frozen=True)
class WeightSync:
    """One sync: the step whose weights the server serves from then on, what it cost, and whether it checked out."""

    version: int
    export_seconds: float
    restart_seconds: float
    served_probe: str
    trainer_probe: str

    @property
    def seconds(self) -> float:
        return self.export_seconds + self.restart_seconds

    @property
    def probe_matches(self) -> bool:
        return self.served_probe == self.trainer_probe

    def record(self) -> dict[str, object]:
        return {
            "version": self.version,
            "seconds": round(self.seconds, 3),
            "export_seconds": round(self.export_seconds, 3),
            "restart_seconds": round(self.restart_seconds, 3),
            "probe_matches": self.probe_matches,
            "served_probe": self.served_probe,
        }


class PolicyServer(Protocol):
    """What DAPO asks of an engine that serves the trainer's weights to the rollouts.

    `ServedPolicy` (llama.cpp) is the one built. A vLLM backend would implement `sync` with vLLM's own weight-update
    path (TRL's `VLLMClient.update_named_param` against `trl vllm-serve`, then `reset_prefix_cache`), with no export
    and no restart, and `revive` by restarting `vllm serve` on the last synced weights; the agent, masks and rewards
    stay as they are, since it talks to `endpoint` like any OpenAI-compatible server."""

    syncs: list[WeightSync]
    restarts: int

    @property
    def version(self) -> int | None:
        """The optimizer step whose weights are served; None before the first sync."""
        ...

    @property
    def endpoint(self) -> LLMEndpoint:
        """What the agent calls: uncached, as concurrent as the engine serves."""
        ...

    def sync(self, model: PreTrainedModel, version: int) -> WeightSync:
        """Serve `model`'s current weights as policy `version`, and check that the engine now answers as it does."""
        ...

    def revive(self) -> bool:
        """Bring a dead engine back on its current weights; True when it had to."""
        ...

    def close(self) -> None: ...


class ServedPolicy:
    """The trainer's weights behind a llama.cpp server on 127.0.0.1, re-exported and restarted at each `sync`.

    `endpoint` is what the agent calls: no response cache (every call must be a fresh sample of the current
    weights), the server's parallelism as its concurrency (llama.cpp answers one request at a time).
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        sampling: SamplingParams,
        work_dir: Path,
        *,
        n_ctx: int,
        n_threads: int | None = None,
        outtype: OutType = "f16",
        startup_timeout_s: float = 120.0,
        request_timeout_s: float = 300.0,
    ) -> None:
        self.tokenizer = tokenizer
        self.sampling = sampling
        self.work_dir = Path(work_dir)
        self.outtype: OutType = outtype
        self.syncs: list[WeightSync] = []
        self.restarts = 0
        self._server_config = ModelServerConfig(
            mode="llama_cpp",
            model_path=str(self.work_dir / "unsynced.gguf"),
            served_model_name=SERVED_MODEL_NAME,
            port=free_port(),
            n_ctx=n_ctx,
            n_threads=n_threads or default_threads(),
            startup_timeout_s=startup_timeout_s,
            log_path=str(self.work_dir / "server.log"),
        )
        self._request_timeout_s = request_timeout_s
        self._server: ModelServer | None = None
        self._endpoint: LLMEndpoint | None = None
        self._tokenizer_checked = False

    @property
    def version(self) -> int | None:
        """The optimizer step whose weights the server serves; None before the first sync."""
        return self.syncs[-1].version if self.syncs else None

    @property
    def endpoint(self) -> LLMEndpoint:
        if self._endpoint is None:
            raise RuntimeError("the served policy has no weights yet: call sync() before the first rollout")
        return self._endpoint

    def sync(self, model: PreTrainedModel, version: int) -> WeightSync:
        """Serve `model`'s current weights as policy `version`: export, restart on the same port, verify."""
        started = time.perf_counter()
        gguf_path = self._export(model, version)
        exported = time.perf_counter()
        self._serve(gguf_path)
        restarted = time.perf_counter()
        sync = WeightSync(
            version=version,
            export_seconds=exported - started,
            restart_seconds=restarted - exported,
            served_probe=self._served_probe(),
            trainer_probe=trainer_probe(model, self.tokenizer),
        )
        self.syncs.append(sync)
        log = logger.info if sync.probe_matches else logger.warning
        log(
            "policy v%d served on %s after %.1fs (export %.1fs, restart %.1fs); greedy probe %s the trainer's",
            version,
            self._server_config.port,
            sync.seconds,
            sync.export_seconds,
            sync.restart_seconds,
            "matches" if sync.probe_matches else f"differs from ({sync.served_probe!r} vs {sync.trainer_probe!r})",
        )
        return sync

    def revive(self) -> bool:
        """Restart the server on its current weights if its process died; True when it had to."""
        if self._server is None or self._server.alive:
            return False
        logger.warning("the rollout server (policy v%s) died; restarting it", self.version)
        self._serve(Path(str(self._server.config.model_path)))
        self.restarts += 1
        return True

    def close(self) -> None:
        """Stop the server and remove the exports (the run's checkpoints are the trainer's own); the log stays."""
        if self._endpoint is not None:
            self._endpoint.close()
            self._endpoint = None
        if self._server is not None:
            self._server.stop()
            self._server = None
        shutil.rmtree(self.work_dir / "model", ignore_errors=True)
        for export in self.work_dir.glob("policy-v*.gguf*"):
            export.unlink(missing_ok=True)

    def _export(self, model: PreTrainedModel, version: int) -> Path:
        """The weights in memory straight to GGUF, with the config and tokenizer saved once beside it (they do not
        change while training); the tokenizer is checked against llama.cpp's once."""
        folder = self.work_dir / "model"
        if not self._tokenizer_checked:
            model.config.save_pretrained(folder)
            self.tokenizer.save_pretrained(folder)
        tensors = ((name, tensor.detach().float().cpu().numpy()) for name, tensor in model.state_dict().items())
        gguf_path = self.work_dir / f"policy-v{version}.gguf"
        staging = gguf_path.with_suffix(".gguf.tmp")
        write_llama_gguf(folder, staging, self.outtype, tensors)
        if not self._tokenizer_checked:
            check_tokenizer_matches(folder, staging)
            self._tokenizer_checked = True
        staging.replace(gguf_path)
        return gguf_path

    def _serve(self, gguf_path: Path) -> None:
        """(Re)start the server on `gguf_path`, on the same port as before; the previous export is removed."""
        previous = self._server
        if previous is not None:
            previous.stop()
        config = self._server_config.model_copy(update={"model_path": str(gguf_path)})
        self._server = ModelServer(config).start()
        if previous is not None and Path(str(previous.config.model_path)) != gguf_path:
            Path(str(previous.config.model_path)).unlink(missing_ok=True)
        if self._endpoint is None:
            self._endpoint = LLMEndpoint(
                EndpointConfig(
                    role="policy",
                    base_url=self._server.base_url,
                    model=SERVED_MODEL_NAME,
                    sampling=self.sampling,
                    timeout_s=self._request_timeout_s,
                    max_concurrency=config.n_parallel,
                    server_kind="llama_cpp",
                )
            )

    def _served_probe(self) -> str:
        greedy = self.sampling.model_copy(
            update={"temperature": 0.0, "top_p": 1.0, "max_tokens": PROBE_TOKENS, "stop": ()}
        )
        return self.endpoint.chat(list(PROBE_MESSAGES), sampling=greedy).content


@torch.no_grad()
def trainer_probe(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> str:
    """The trainer's greedy continuation of the probe chat, decoded as the server decodes its reply. Computed in
    fp32 even when training runs under bf16 autocast: the probe checks the export, and bf16 rounding alone would
    flip near ties. (Accelerate wraps `forward` in autocast and keeps the plain one as `_original_forward`.)"""
    ids = tokenizer.apply_chat_template(
        list(PROBE_MESSAGES), tokenize=True, add_generation_prompt=True, return_dict=False
    )
    was_training, forward = model.training, model.forward
    model.eval()
    if "_original_forward" in vars(model):
        model.forward = vars(model)["_original_forward"]
    try:
        device = next(model.parameters()).device
        output = model.generate(
            input_ids=torch.tensor([list(ids)], device=device),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=device),
            do_sample=False,
            max_new_tokens=PROBE_TOKENS,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        )
    finally:
        model.forward = forward
        model.train(was_training)
    return tokenizer.decode(output[0, len(ids) :], skip_special_tokens=True)
