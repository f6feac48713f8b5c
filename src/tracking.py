"""The fine-tuning's optional curves in accelerate's experiment trackers (TensorBoard), apart from the
training itself: a tracker that fails never stops training (train_log.jsonl holds every step)."""

import hashlib
import threading
from pathlib import Path

from .errors import UserError


def check_report_to(report_to: str) -> str | None:
    """The accelerate tracker REPORT_TO names ("tensorboard"), or None for "" (no tracking); one line, before any
    work, for another name or a missing tensorboard package."""
    if not report_to:
        return None
    if report_to != "tensorboard":
        raise UserError(f"--report_to={report_to!r}: unknown tracker; use --report_to=tensorboard or --report_to= "
                        "(no tracking)")
    try:
        import torch.utils.tensorboard  # noqa: F401 (what accelerate's TensorBoard tracker imports)
    except ImportError as e:
        why = (str(e).splitlines() or [type(e).__name__])[0]
        raise UserError(f"--report_to=tensorboard needs the tensorboard package ({why}); pip install tensorboard, "
                        "or train without it (--report_to=)") from None
    return report_to


def tracker_config(config: dict) -> dict:
    """The resolved config as TensorBoard's hparams take it: bool, int, float and str as they are, lists
    as "a,b,c" (the way --target_modules= is written), anything else as its text."""
    def plain(v):
        if isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, (list, tuple)):
            return ",".join(map(str, v))
        return str(v)

    return {k: plain(v) for k, v in config.items() if k != "base_fingerprint"}  # 256 numbers, no hparam


class OptionalCurves:
    """A tracker call failing for the disk warns once and training goes on without curves (no thread traceback)."""

    def __init__(self, accelerator, on: bool):
        self.accelerator, self.on = accelerator, on
        if on:
            hook = threading.excepthook
            threading.excepthook = lambda args: None if type(args.thread).__name__ == "_AsyncWriterThread" else hook(args)

    def call(self, what: str, *args, **kwargs) -> None:
        """accelerator.<what>(...) while the curves are on; end_training always (it closes what was opened)."""
        try:
            if self.on or what == "end_training":
                getattr(self.accelerator, what)(*args, **kwargs)
        except OSError as e:
            if self.on:
                print(f"warning: the training curves could not be written ({e.strerror or e}); training goes on "
                      "without them (train_log.jsonl holds every step)", flush=True)
            self.on = False


def tracker_run_name(out_dir) -> str:
    """The tracker's run of an output folder: its name and a hash of its path (same-named folders never share one)."""
    folder = Path(out_dir).resolve()
    return f"{folder.name}-{hashlib.sha1(str(folder).encode()).hexdigest()[:8]}"


def tracker_values(result, lr: float, skipped_so_far: int) -> dict:
    """The scalars of one optimizer step (a src.training.StepResult); no gradient norm on a step fp16 skipped."""
    values = {"train/loss": result.loss, "train/lr": lr, "train/skipped_steps": skipped_so_far}
    if result.grad_norm is not None:
        values["train/grad_norm"] = result.grad_norm
    return values


def heldout_values(point: dict) -> dict:
    """The scalars of one held-out point (a train_log.jsonl "heldout"): accuracy, overall and per answer type."""
    return {"heldout/accuracy": point["accuracy"],
            **{f"heldout/{t.replace('/', '_')}": a for t, a in point["per_answer_type"].items()}}
