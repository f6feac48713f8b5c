"""Shared code for the BLIP-2 VQAv2 zero-shot / QLoRA scripts."""

import logging
import os
import warnings

# Hub calls that are no part of our work, off through the libraries' documented switches (a value the user set
# wins; docs/details.md): huggingface_hub's telemetry, which from 2.4 also fetches an "agent harness" registry
# once a day, and transformers' hub kernels (compiled kernels fetched at load time).
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("USE_HUB_KERNELS", "NO")

# Library notices a student would read as errors, none of them about our calls:
# - bitsandbytes 0.50 on CPUs with AVX512-BF16 tries, at import, to fetch an optional CPU kernel through the
#   `kernels` package (0.19), which notes when the hub is offline and bitsandbytes warns when it fails; the
#   built-in CPU path it falls back to is what we use anyway;
# - peft 0.21 reads transformers 5.25's deprecated `is_gradient_checkpointing` in PeftModel.__init__.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
logging.getLogger("kernels._internals.hf_hub").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
