"""Shared code for the BLIP-2 VQAv2 zero-shot / QLoRA scripts."""

import logging
import os
import warnings

# Hub calls that are no part of our work, off through the libraries' documented switches (a value the user set
# wins; what each fetches: docs/details.md): huggingface_hub's telemetry, transformers' hub kernels, and the
# optional CPU kernel bitsandbytes 0.50 fetches at import (`kernels`' LOCAL_KERNELS points it at an empty path).
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("USE_HUB_KERNELS", "NO")
os.environ.setdefault("LOCAL_KERNELS", "kernels-community/quantization-bitsandbytes=" + os.devnull)

# Library notices a student would read as errors, none of them about our calls:
# - bitsandbytes 0.50 warns that the CPU kernel above was not loaded (its built-in path is what we use);
# - peft 0.21 reads transformers 5.25's deprecated `is_gradient_checkpointing` in PeftModel.__init__.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
