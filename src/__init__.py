"""Shared code for the BLIP-2 VQAv2 zero-shot / QLoRA scripts."""

import logging

# On CPUs with AVX512-BF16, bitsandbytes tries to fetch an optional kernel from the Hugging Face
# Hub and warns when it can't; the built-in CPU path it falls back to is what we use anyway.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
