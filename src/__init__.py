"""Shared code for the BLIP-2 VQAv2 zero-shot / QLoRA scripts."""

import logging
import os
import warnings

# Hub calls that are no part of our work, off through the libraries' documented switches (a value the user set
# wins; docs/details.md): huggingface_hub's telemetry, which from 2.4 also fetches an "agent harness" registry
# once a day, transformers' hub kernels (compiled kernels fetched at load time), and the optional CPU kernel that
# bitsandbytes 0.50 fetches at import on AVX512-BF16 CPUs through the `kernels` package (0.19): its documented
# LOCAL_KERNELS override points that one repository at an empty path, so bitsandbytes takes its built-in CPU path.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("USE_HUB_KERNELS", "NO")
os.environ.setdefault("LOCAL_KERNELS", "kernels-community/quantization-bitsandbytes=" + os.devnull)

# Library notices a student would read as errors, none of them about our calls:
# - bitsandbytes 0.50 warns that the CPU kernel above was not loaded (its built-in path is what we use);
# - peft 0.21 reads transformers 5.25's deprecated `is_gradient_checkpointing` in PeftModel.__init__.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
