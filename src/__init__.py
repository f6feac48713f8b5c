"""Shared code for the BLIP-2 VQAv2 zero-shot / QLoRA scripts."""

import logging
import os

# Hub calls that are no part of our work, off through the libraries' documented switches (a value the user set
# wins; docs/details.md): huggingface_hub's telemetry, which from 2.4 also fetches an "agent harness" registry
# once a day, and transformers' hub kernels (compiled kernels fetched at load time).
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("USE_HUB_KERNELS", "NO")

# On CPUs with AVX512-BF16, bitsandbytes tries to fetch an optional kernel from the Hugging Face
# Hub and warns when it can't; the built-in CPU path it falls back to is what we use anyway.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
