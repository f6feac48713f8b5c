"""Benchmarks; run each from the repository root as `python -m bench.NAME` (see each module's docstring)."""

from pathlib import Path

FINETUNE_SCRIPT = Path(__file__).resolve().parents[1] / "finetune_vqav2_lora.py"


def finetune_lora():
    """The LoRA the fine-tuning script's settings block states (read from the file, not run), so that a
    benchmark follows what a user edits there."""
    from src.config import script_settings
    from src.training import LoraSettings

    return LoraSettings.of_settings(script_settings(FINETUNE_SCRIPT))
