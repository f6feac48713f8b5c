"""Process set-up shared by the long-running scripts: the Accelerator and early input checks."""

from __future__ import annotations

import tempfile
from pathlib import Path

from .errors import UserError


def make_accelerator(**kwargs):
    """An Accelerator that also goes data-parallel on CPU-only machines (gloo) when launched with
    torchrun; accelerate only does that when told the run is on CPU."""
    import torch
    from accelerate import Accelerator

    return Accelerator(cpu=not torch.cuda.is_available(), **kwargs)


def check_output_dir(output_dir: str | Path) -> Path:
    """Create the output folder and make sure we can write there, before any long work."""
    out = Path(output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise UserError(f"cannot write to output folder {out} ({e.strerror}); choose another with --output_dir=") from None
    return out


def check_positive(**values) -> None:
    for name, value in values.items():
        if value < 1:
            raise UserError(f"--{name}={value}: must be at least 1")
