"""The SFT entry point in its own process, killed by SIGKILL while it saves a checkpoint, as a kill can land on it.

``python sft_killer.py STEP SFT_ARGS...``: trains as `python -m webdancer_dagster.training.sft SFT_ARGS...` does, but
once checkpoint-STEP's weights are written and before its optimizer, scheduler, RNG and trainer state are, the
process sends itself SIGKILL: nothing runs after it, no handler, no cleanup, as with `kill -9` from outside.
"""

import os
import signal
import sys

from transformers import Trainer

from webdancer_dagster.training import sft


def main(step: str, *args: str) -> None:
    save_rest = Trainer._save_optimizer_and_scheduler

    def killed_after_the_weights(self: Trainer, output_dir: str) -> None:
        if os.path.basename(output_dir) == f"checkpoint-{step}":
            os.kill(os.getpid(), signal.SIGKILL)
        save_rest(self, output_dir)

    Trainer._save_optimizer_and_scheduler = killed_after_the_weights
    sft.main(list(args))


if __name__ == "__main__":
    main(*sys.argv[1:])
