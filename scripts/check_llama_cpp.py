"""Exit 0 when the installed llama.cpp generates a token with the offline model, non-zero otherwise.

Run by bootstrap.sh in its own process: a llama.cpp built with kernels this CPU cannot run dies with SIGSEGV on the
first matmul, long after it imported and loaded the model fine.
"""

import sys

from llama_cpp import Llama

from webdancer_dagster.llm.model_files import find_smollm2_gguf

model = Llama(str(find_smollm2_gguf()), n_ctx=256, n_threads=1, verbose=False)
reply = model.create_completion("The capital of France is", max_tokens=1, temperature=0.0)
sys.exit(0 if reply["choices"] else 1)
