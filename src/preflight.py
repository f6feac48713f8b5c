"""Every check a script runs before its slow work: setting values, model and adapter folders, disk room,
output folders. Scripts call these at the top of `main`; the modules doing the work never import this one."""

import errno
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from .samples import VQASample
from .errors import UserError, again
from .files import read_json, resolved_if_local, safetensors_problem
from .merging import DEQUANTIZE_CHOICES, MERGE_CONFIG, MERGE_DTYPES, read_training_config
from .family import FAMILIES, OPT, T5, family_of
from .prompts import DECODING, PROMPTS
from .modeling import (DEFAULT_MODEL_ID, QUANTIZATIONS, base_fingerprint, blip2_core, build_meta_model, default_device,
                       fetch_error, is_local)

# --- settings: one rule per setting name, so every script (and a setting added later) is covered ----------

INT_MAX = 2**31 - 1  # no count in these scripts comes near it; a bigger one is a typo
_COUNTS_FROM_1 = {"batch_size", "eval_batch", "per_device_batch", "grad_accum", "train_steps", "save_every",
                  "keep_checkpoints", "lora_r", "eval_samples", "bootstrap_resamples", "max_queue", "cases_per_group",
                  "cases_shown"}
_RANGES = {"seed": (0, 2**32 - 1), "port": (1, 65535), "thumb_size": (16, 1024), "num_workers": (0, 256)}
_FLOATS = {  # name: (0 allowed?, highest or None, what it means); none may be negative
    "lr": (False, None, "the learning rate"),
    "weight_decay": (True, None, "AdamW's weight decay (0 = none)"),
    "lora_dropout": (True, 1.0, "a dropout probability"),
    "max_grad_norm": (False, None, "the gradient-clipping norm"),
    "max_upload_mb": (False, 100_000.0, "the upload limit in MB"),
    "hub_stall_s": (False, None, "seconds a hub read may go without progress"),
    "lora_alpha": (False, None, "LoRA's scale (alpha / r; 0 would make the adapter change nothing)"),
}
_CHOICES = {"lang": ("zh", "en"), "quantization": QUANTIZATIONS, "split": ("val", "train", "testdev", "test"),
            "merge_dtype": MERGE_DTYPES, "dequantize": DEQUANTIZE_CHOICES}
EMPTY_MEANS = {"adapter_dir": "the base model only", "device": "auto", "report_dir": "the default folder",
               "output_file": "the default name", "hf_dataset_revision": "the newest"}
_FILE_NAMES = {"run_name", "baseline_run", "output_file"}  # written inside the output folder: a plain file name
_DEVICE = re.compile(r"(cpu|cuda|cuda:\d+|mps)")
# control characters (tabs and newlines are white space) and unpaired surrogates: no tokenizer or font takes them
UNSAFE_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")


def check_value(key: str, value: Any, default: Any = None) -> Any:
    """`value` of setting `key`, checked by its name and type, `~` expanded in paths; UserError naming the
    setting, the value and what it may be. Scripts pass it to apply_overrides(globals(), check=check_value)."""
    name = key.lower()

    def bad(why: str):
        raise UserError(f"--{name}={value}: {why}")

    if isinstance(value, bool) or not isinstance(value, (int, float, list, tuple, str)):
        return value  # True / False, None, a dict: nothing to check
    if isinstance(value, int) and name not in _FLOATS:  # an int-valued _FLOATS setting (lora_alpha): below
        low, high = _RANGES.get(name, (1 if name in _COUNTS_FROM_1 else 0, INT_MAX))
        if not low <= value <= high:
            if high != INT_MAX:
                bad(f"must be an integer from {low} to {high:,}")
            bad(f"must be at least {low}" if value < low else f"is absurdly large (at most {high:,})")
        return value
    if isinstance(value, (int, float)):
        if value != value or value in (float("inf"), float("-inf")):
            bad("must be a finite number")
        if isinstance(value, int) and value > INT_MAX:
            bad(f"is absurdly large (at most {INT_MAX:,})")
        zero_ok, high, what = _FLOATS.get(name, (True, None, "this setting"))
        if value < 0 or (value == 0 and not zero_ok):
            bad(f"must be {'0 or more' if zero_ok else 'a positive number'} ({what})")
        if high is not None and (value >= high if name == "lora_dropout" else value > high):
            bad(f"{what} must be {'below' if name == 'lora_dropout' else 'at most'} {high:g}")
        return value
    if isinstance(value, (list, tuple)):
        if not value and default:
            raise UserError(f"--{name}= is empty; pass a value, e.g. --{name}={','.join(map(str, default))}")
        if any(isinstance(item, str) and (not item.strip() or UNSAFE_TEXT.search(item)) for item in value):
            bad("every entry must be a non-empty name without control characters")
        return value
    if UNSAFE_TEXT.search(value):
        bad("holds a control character or an unpaired surrogate; type the value again")
    if not value.strip() and name == "question":
        raise UserError(f"--question={value!r}: the question is empty; ask something, e.g. --question=\"{default}\"")
    if not value.strip():
        if default == "" or name in EMPTY_MEANS:  # a documented "none" / "auto"
            return value
        raise UserError(f"--{name}= is empty; pass a value, e.g. --{name}={default}")
    if name in _CHOICES and value not in _CHOICES[name]:
        raise UserError(f"--{name}={value!r}: unknown {name} {value!r}; use one of "
                        + ", ".join(f"--{name}={c}" for c in _CHOICES[name]))
    if name == "device":
        if not _DEVICE.fullmatch(value):
            bad("use cpu, cuda, cuda:N or mps (or leave it empty: the GPU when there is one)")
        import torch

        if value == "mps" and not torch.backends.mps.is_available():  # torch would run on the CPU, the record say mps
            bad("this machine has no Apple GPU (MPS) that torch can use; use --device=cpu (or leave it empty)")
        if value.startswith("cuda") and not torch.cuda.is_available():
            bad("this machine has no CUDA GPU that torch can use; use --device=cpu (or leave it empty)")
        if ":" in value and int(value.split(":")[1]) >= torch.cuda.device_count():
            bad(f"this machine has {torch.cuda.device_count()} CUDA GPU(s), numbered from 0")
    if name in _FILE_NAMES and (value.startswith(".") or "/" in value or "\\" in value):
        bad("must be a plain file name (no folder, no leading dot); the file goes into --output_dir")
    if name.endswith(("_prompt", "_decoding")) and (value != "auto" or name == "caption_prompt"):  # auto: per family
        registry = PROMPTS if name.endswith("_prompt") else DECODING
        if value not in registry:
            raise UserError(f"unknown {'prompt' if registry is PROMPTS else 'decoding preset'} {value!r} (--{name}); "
                            f"known: {', '.join(registry)}")
        if name == "vqa_prompt" and "{}" not in registry[value]:
            bad("this prompt has no slot for the question ({}), so the model would never see it; use one of "
                + ", ".join(k for k, v in PROMPTS.items() if "{}" in v))
    # a file or folder (model_id and hf_dataset: or a hub id) gets `~` expanded
    path = name.endswith(("_dir", "_file")) or name in ("image", "model_id", "hf_dataset")
    return os.path.expanduser(value) if path else value


# --- the model, its download and its adapter ---------------------------------------------------------------

ROOM_WARNING_GB = 20  # a model download the hub cannot size: warn when the cache disk has less free space
OTHER_WEIGHT_FORMATS = (".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".gguf")  # never downloaded
# the language-model layers a tensor name adapts, by family (a Q-Former adapter's names are the same in both)
_LM_LAYERS = {".language_model.model.decoder.layers.": OPT, ".language_model.encoder.block.": T5,
              ".language_model.decoder.block.": T5}
_LORA_WEIGHT = re.compile(r"base_model\.model\.(.+)\.lora_([AB])\.weight")  # peft's names: the layer, then A or B


def check_model(model_id: str, quantization: str, device: str | None = None, adapter: str | None = None) -> None:
    """What load_blip2(model_id, quantization, adapter, device) needs, told before the slow load: the model
    folder (or room for its download), the quantisation on this device, and the adapter."""
    check_model_dir(model_id)
    check_quantization(quantization, device or default_device())
    check_download_room(model_id)
    if adapter:
        check_adapter_dir(adapter, model_id)


def check_quantization(quantization: str, device: str) -> None:
    """Fail early, in one line, when the quantisation (one of QUANTIZATIONS: a checked setting) can't run here."""
    if quantization == "none":
        return
    try:
        import bitsandbytes  # noqa: F401
    except Exception as e:  # ImportError, or a broken CUDA setup raising at import time
        raise UserError(f"--quantization={quantization} needs bitsandbytes, which failed to import "
                        f"({type(e).__name__}: {e}); install it with `pip install bitsandbytes` or run with "
                        "--quantization=none") from None
    if quantization == "8bit" and not str(device).startswith("cuda"):
        raise UserError("--quantization=8bit needs a CUDA GPU; on CPU use --quantization=4bit or --quantization=none")


def check_model_dir(model_id: str) -> None:
    """A local model folder holds a BLIP-2 config, a tokenizer and whole safetensors weights (read from the
    headers, before the slow load). A hub id is left to the download, which verifies itself."""
    folder, fix = Path(model_id), again("model folder")
    if not folder.is_dir():
        if is_local(model_id) and not folder.exists():  # a path, not a hub id: say so now, not after the imports
            raise fetch_error(model_id, FileNotFoundError(model_id))
        return
    config_path = folder / "config.json"
    if (folder / "adapter_config.json").exists() and not config_path.exists():
        raise UserError(f"{folder} is a LoRA adapter, not a base model; pass it as the adapter "
                        f"(e.g. --adapter_dir={folder}) and the model it was trained on as --model_id")
    if not config_path.exists():
        raise UserError(f"no config.json in {folder}: not a model saved with save_pretrained; pass "
                        "--model_id=<folder with config.json and model.safetensors> or a hub id")
    config = read_json(config_path, "model config", fix=fix)
    if not isinstance(config, dict):
        raise UserError(f"{config_path} is corrupt (not a JSON object); {fix}")
    if (model_type := config.get("model_type")) != "blip-2":
        raise UserError(f"{folder} is not a BLIP-2 model (its config.json says model_type {model_type!r}); "
                        f"pass a BLIP-2 folder, e.g. a saved copy of {DEFAULT_MODEL_ID}")
    for key in ("vision_config", "qformer_config", "text_config"):
        if key in config and not isinstance(config[key], dict):
            raise UserError(f"{config_path}: {key!r} must be a JSON object, not {type(config[key]).__name__}; {fix}")
    tokenizer_json = folder / "tokenizer.json"
    if not tokenizer_json.exists() and not (folder / "vocab.json").exists():
        raise UserError(f"{folder} has no tokenizer (tokenizer.json is missing); {fix}")
    if tokenizer_json.exists():
        tok = read_json(tokenizer_json, "tokenizer file", fix=fix)
        if not isinstance(tok, dict) or not isinstance(tok.get("added_tokens"), list) or "model" not in tok:
            raise UserError(f"{tokenizer_json} is damaged (no 'added_tokens' list or no 'model'); {fix}")
    for weights in sorted(folder.glob("*.safetensors")):
        if problem := safetensors_problem(weights):
            raise UserError(f"{weights} {problem}; {again('model')}")


def check_download_room(model_id: str) -> None:
    """Before a hub model's first download: its files must fit the hub cache's disk, or one line says where to put
    the cache; a hub that cannot size them gets a warning below ROOM_WARNING_GB free."""
    from huggingface_hub import HfApi, constants, try_to_load_from_cache

    if is_local(model_id) or constants.HF_HUB_OFFLINE:
        return
    if any(isinstance(try_to_load_from_cache(model_id, f), str) for f in ("model.safetensors.index.json",
                                                                          "model.safetensors")):
        return  # downloaded before (from_pretrained completes a partial download by itself)
    cache = Path(constants.HF_HUB_CACHE)
    free = shutil.disk_usage(next(p for p in (cache, *cache.parents) if p.exists())).free
    where = (f"the hub cache {cache} has {free / 1e9:.1f} GB free; put it on a bigger disk, e.g. "
             "export HF_HOME=/root/autodl-tmp/hf on AutoDL, or free some space")
    try:
        files = HfApi().model_info(model_id, files_metadata=True).siblings or []
    except Exception:  # no answer now: from_pretrained reports the hub's trouble itself
        files = []
    wanted = [f for f in files if not f.rfilename.endswith(OTHER_WEIGHT_FORMATS)]
    if not wanted or any(f.size is None for f in wanted):
        if free < ROOM_WARNING_GB * 1e9:
            print(f"warning: downloading {model_id}, whose size the hub did not say, and {where}", flush=True)
        return
    need = sum(f.size for f in wanted if not isinstance(try_to_load_from_cache(model_id, f.rfilename), str))
    if need > free:
        raise UserError(f"downloading {model_id} needs {need / 1e9:.1f} GB, but {where}")


def check_adapter_dir(adapter: str | Path, model_id: str) -> None:
    """A LoRA adapter folder with a readable config and whole safetensors weights, not merged into `model_id`
    already, whose layers fit it (when trained on a model of another name)."""
    adapter = Path(adapter)
    if adapter.is_file():
        raise UserError(f"{adapter} is a file; pass the adapter's folder, the one that holds adapter_config.json "
                        f"(e.g. {adapter.parent})")
    if not (adapter / "adapter_config.json").exists():
        raise UserError(f"no LoRA adapter in {adapter} (adapter_config.json missing); train one with "
                        "`python finetune_vqav2_lora.py` or pass the folder that holds adapter_config.json")
    base = _adapter_config(adapter).get("base_model_name_or_path")
    weights = adapter / "adapter_model.safetensors"
    if not weights.exists():
        raise UserError(f"{adapter} has no adapter_model.safetensors; only safetensors adapters are loaded")
    if problem := safetensors_problem(weights):
        raise UserError(f"{weights} {problem}; {again('adapter', download=False)}, or rerun "
                        "`python finetune_vqav2_lora.py`, which resumes from its last checkpoint")
    if (merged := Path(model_id) / MERGE_CONFIG).is_file():  # merge_lora_adapter.py's: holds an adapter
        record = read_json(merged, "merged model's record", fix=again("merged model folder", download=False))
        holds = record.get("adapter_dir") if isinstance(record, dict) else None
        if isinstance(holds, str) and Path(holds).resolve() == adapter.resolve():
            raise UserError(f"{model_id} is a merged model that already holds the LoRA adapter in {adapter}; applying it "
                            "again would add its update twice: pass --adapter_dir= (empty) to use the merged model alone")
    if base and resolved_if_local(os.path.normpath(str(base))) != resolved_if_local(os.path.normpath(model_id)):
        try:  # the model built from its config on the meta device: shapes only, about a second
            skeleton = build_meta_model(model_id)
        except UserError:  # a hub id neither downloaded nor of a shipped architecture: the load reports that
            skeleton = None
        if skeleton is not None:
            check_adapter_fits(skeleton, adapter, model_id)
        if recorded_fingerprint(adapter) is None:  # with it, the load compares the base's weights with the record
            # without that record: a copy of the base, or another checkpoint whose answers would be wrong
            print(f"warning: the LoRA adapter in {adapter} was trained on {base}, not on {model_id}; that is right only "
                  f"if {model_id} is a copy of {base} (else pass --model_id={base})", flush=True)


def _adapter_config(adapter: str | Path) -> dict:
    """adapter_config.json of a LoRA adapter, with the keys the loaders read checked."""
    path, fix = Path(adapter) / "adapter_config.json", again("adapter folder", download=False, retrain=True)
    config = read_json(path, "adapter config", fix=fix)
    if not isinstance(config, dict):
        raise UserError(f"{path} is corrupt (not a JSON object); {fix}")
    if config.get("peft_type") != "LORA":
        raise UserError(f"{path}: peft_type is {config.get('peft_type')!r}, but these scripts load LoRA adapters "
                        f"(\"peft_type\": \"LORA\"); {fix}")
    for key in ("r", "lora_alpha"):
        value = config.get(key)
        if type(value) not in (int, float) or value <= 0 or (key == "r" and type(value) is not int):
            raise UserError(f"{path}: {key!r} is {value!r}, not a positive {'integer' if key == 'r' else 'number'}; {fix}")
    targets = config.get("target_modules")
    if not (isinstance(targets, str) or (isinstance(targets, list) and targets and all(isinstance(t, str) for t in targets))):
        raise UserError(f"{path}: 'target_modules' is {targets!r}, not a list of layer names or a pattern; {fix}")
    return config


def check_adapter_fits(model, adapter: str | Path, model_id: str | None = None) -> None:
    """Between the load and apply_adapter: the adapter's layers fit `model` and it was trained on this very base (its
    recorded fingerprint, allowing another precision's rounding). With `model_id`, `model` is its meta skeleton."""
    loaded = model_id or getattr(model.config, "_name_or_path", "") or "the loaded model"
    base = _adapter_config(adapter).get("base_model_name_or_path")
    if problem := adapter_mismatch(model, adapter):
        if base and os.path.normpath(str(base)) == os.path.normpath(str(loaded)):
            raise UserError(f"the LoRA adapter in {adapter} does not fit its own base model {loaded}: {problem}; its "
                            "adapter_config.json and adapter_model.safetensors disagree (edited or mixed up): "
                            f"{again('adapter folder', download=False, retrain=True)}")
        if not base:
            raise UserError(f"the LoRA adapter in {adapter} was trained on another model than the one loaded "
                            f"({loaded}): {problem}; pass an adapter trained on {loaded}")
        raise UserError(f"the LoRA adapter in {adapter} was trained on {base}, which is not the model loaded "
                        f"({loaded}): {problem}; pass --model_id={base}, or an adapter trained on {loaded}")
    if model_id:
        return  # the meta skeleton: no weights to compare with the record
    now = base_fingerprint(model)
    for name, values in (recorded_fingerprint(adapter) or {}).items():
        ours = now.get(name, [])
        fits = isinstance(values, list) and len(values) == len(ours)
        off = fits and sum(type(a) is not float or abs(a - b) > 2 ** -7 * max(abs(a), abs(b)) + 1e-6
                           for a, b in zip(values, ours))
        if not fits or off > len(values) // 10:
            differs = f"{off} of {len(values)} sampled values of {name} differ" if fits else \
                f"its record of {name} does not fit this model"
            flag = f" (--model_id={base})" if base else ""
            raise UserError(f"{loaded} is not the base the LoRA adapter in {adapter} was trained on ({differs}): "
                            f"another checkpoint of the same shapes (e.g. a fine-tuned or merged one); pass the model "
                            f"it was trained on{flag}, or an adapter trained on {loaded}")


def recorded_fingerprint(adapter: str | Path) -> dict | None:
    """The base fingerprint in the training config the fine-tuning saved beside the adapter, or None."""
    found = (read_training_config(adapter)[1] or {}).get("base_fingerprint")
    return found if isinstance(found, dict) and found else None


def adapter_mismatch(model, adapter: str | Path) -> str | None:
    """Why the adapter's LoRA weights don't fit `model`'s layers (first misfit), or None.
    Reads only the adapter's safetensors header; `model` may be on the meta device."""
    from safetensors import safe_open

    with safe_open(str(Path(adapter) / "adapter_model.safetensors"), "pt") as f:
        shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
    config = _adapter_config(adapter)
    theirs = next((family for key in shapes for part, family in _LM_LAYERS.items() if part in key), None) \
        or FAMILIES.get((read_training_config(adapter)[1] or {}).get("family"))  # a Q-Former adapter: as recorded
    ours = family_of(blip2_core(model).config)
    if theirs is not None and theirs != ours:
        return (f"it adapts BLIP-2 on {theirs.title}, the model is BLIP-2 on {ours.title} "
                "(an adapter works only on the model family it was trained on)")
    landed = 0
    for key, shape in sorted(shapes.items()):
        lora = _LORA_WEIGHT.fullmatch(key)
        if not lora or len(shape) != 2:
            continue
        name, a = lora[1], lora[2] == "A"
        if a and shape[0] != config["r"] and not config.get("rank_pattern"):
            return (f"its adapter_config.json says rank r={config['r']}, but its weights have rank {shape[0]} "
                    f"({key}): a rank mismatch")
        try:
            layer = model.get_submodule(name)
        except AttributeError:
            return f"the model has no layer {name}"
        attr, size = ("in_features", shape[1]) if a else ("out_features", shape[0])
        want = getattr(layer, attr, None)
        if want not in (None, size):
            return f"layer {name} has {want} {attr.replace('_', ' ')}, the adapter's has {size}"
        landed += 1
    return None if landed else (f"none of its {len(shapes)} tensors is a LoRA weight (…lora_A.weight / "
                                "…lora_B.weight) of a layer of the model, so it would change nothing (an empty or "
                                "renamed weights file)")


# --- data entries: every entry checked, one line naming the file and the first bad entry ----------------

def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _int_id(value, where: str, key: str) -> int:
    """An integer id; a string of digits counts as that number (so "1001" and 1001 are the same id)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdecimal():
        return int(value)
    raise UserError(f"{where}: {key} must be an integer, got {type(value).__name__} {_short(value)}")


def _text(value, where: str, key: str, allow_empty: bool = False) -> str:
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        raise UserError(f"{where}: {key} must be a non-empty string, got {type(value).__name__} {_short(value)}")
    if bad := UNSAFE_TEXT.search(value):  # valid JSON, but no tokenizer or font takes it: every rerun would die there
        raise UserError(f"{where}: {key} holds {'an unpaired surrogate' if bad.group() >= chr(0xd800) else 'a control character'} "
                        f"({bad.group()!r} at position {bad.start()}): {_short(value)}; fix or remove that text")
    return value


def _answers(value, where: str) -> list[str]:
    """The annotators' answers: a list of strings or of {"answer": ...} items (official format)."""
    if not isinstance(value, list):
        raise UserError(f"{where}: answers must be a list of the annotators' answers, got "
                        f"{type(value).__name__} {_short(value)}")
    if not value:
        raise UserError(f"{where}: answers is empty; each question needs its annotators' answers (VQAv2 has 10)")
    answers = [item.get("answer") if type(item) is dict else item for item in value]
    for k, a in enumerate(answers):
        if not isinstance(a, str):
            raise UserError(f"{where}: answers[{k}] must be a string or an object with an \"answer\" string, "
                            f"got {_short(value[k])}")
    return [_text(a, where, f"answers[{k}]", allow_empty=True) for k, a in enumerate(answers)]


def _entry_list(obj, key: str, path: Path, kind: str) -> list:
    if not isinstance(obj, dict) or key not in obj:
        raise UserError(f"{path}: missing key {key!r} (is this an official VQA {kind} file?)")
    if not isinstance(obj[key], list):
        raise UserError(f"{path}: {key!r} must be a list, got {type(obj[key]).__name__}")
    if not obj[key]:
        raise UserError(f"{path}: {key!r} is empty; the file holds no {key}")
    return obj[key]


def _question_id(entry, where: str, keys: tuple[str, ...], seen: dict, name_id: bool = False) -> tuple[int, str]:
    """The question_id of `entry`, an object with `keys`, unique among `seen` ({question_id: where}, which it joins),
    and the entry's name for messages: `where`, with the id when `name_id` (an annotation is found by it)."""
    if not isinstance(entry, dict):
        raise UserError(f"{where}: expected an object, got {type(entry).__name__} {_short(entry)}")
    named = f"{where} (question_id {entry.get('question_id')})" if name_id else where
    for key in keys:
        if key not in entry:
            raise UserError(f"{named}: no key {key!r}")
    qid = _int_id(entry["question_id"], where, "question_id")
    if qid in seen:
        raise UserError(f"{named}: duplicate question_id {qid} (also {seen[qid]}); question ids must be unique")
    seen[qid] = where
    return qid, named


def build_samples(questions: list, annotations: list | None, *, question_entry, annotation_entry, image_path,
                  questions_source: str, annotations_source: str | None) -> list[VQASample]:
    """VQASamples sorted by question_id from official-format entries, every entry checked; `question_entry(i)` /
    `annotation_entry(i)` name entry i in messages. annotations=None (test-dev / test): no answers."""
    by_id, seen = {}, {}
    for i, q in enumerate(questions):
        qid, where = _question_id(q, question_entry(i), ("question_id", "image_id", "question"), seen)
        by_id[qid] = (_int_id(q["image_id"], where, "image_id"), _text(q["question"], where, "question"), i)
    if annotations is None:
        return [VQASample(qid, image_id, image_path(i, questions[i]), question, [], None, None, None)
                for qid, (image_id, question, i) in sorted(by_id.items())]
    samples, annotated = [], {}
    for i, ann in enumerate(annotations):
        qid, where = _question_id(ann, annotation_entry(i), ("question_id", "image_id", "answers",
                                                             "multiple_choice_answer", "answer_type", "question_type"),
                                  annotated, name_id=True)
        if qid not in by_id:
            raise UserError(f"{where}: has no question in {questions_source}")
        image_id, question, _ = by_id[qid]
        if _int_id(ann["image_id"], where, "image_id") != image_id:
            raise UserError(f"{where}: image_id {ann['image_id']} differs from its question's image_id {image_id}")
        samples.append(VQASample(qid, image_id, image_path(i, ann), question, _answers(ann["answers"], where),
                                 _text(ann["multiple_choice_answer"], where, "multiple_choice_answer", True),
                                 _text(ann["answer_type"], where, "answer_type"),
                                 _text(ann["question_type"], where, "question_type")))
    unanswered = [qid for qid in by_id if qid not in annotated]
    if unanswered:
        raise UserError(f"{questions_source}: question_id {unanswered[0]} has no annotation in {annotations_source} "
                        f"({len(unanswered)} such questions); use matching files")
    odd = [s for s in samples if len(s.answers) != 10]
    if odd:
        print(f"warning: {annotations_source}: {len(odd)} question(s) have other than 10 answers (first: question_id "
              f"{odd[0].question_id} with {len(odd[0].answers)}); their VQA accuracy still averages over every "
              "leave-one-out subset of their answers", file=sys.stderr, flush=True)
    return sorted(samples, key=lambda s: s.question_id)


# --- where the results go --------------------------------------------------------------------------------

def check_output_dir(output_dir: str | Path, setting: str = "--output_dir") -> Path:
    """Create the output folder and make sure we can write there, before any long work; `setting` names the flag."""
    out = Path(output_dir).expanduser()  # "~/runs" as a constant means the home folder, not ./~
    if out.exists() and not out.is_dir():
        raise UserError(f"output folder {out} is a file, not a folder; choose another with {setting}=")
    try:
        out.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out).close()
    except OSError as e:
        why = "it is read-only" if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else e.strerror
        raise UserError(f"cannot write to output folder {out} ({why}); choose another with {setting}=") from None
    return out


def check_output_files(out_dir: Path, names, setting: str = "--output_dir") -> None:
    """The files a run will write into `out_dir` must not be folders (said now, not at the end of the run)."""
    for name in names:
        if (out_dir / name).is_dir():
            raise UserError(f"output file {out_dir / name} is a folder; remove or rename that folder, or choose "
                            f"another with {setting}=")


def check_merged_dir(merged: Path, overwrite: bool, inputs: dict[str, str]) -> None:
    """The folder the merged model goes to: not a file, not holding one of `inputs` (what: path), and
    empty, or (with `overwrite`) a merged model made before, so --overwrite can never wipe other work."""
    elsewhere = "choose another with --merged_dir="
    if merged.exists() and not merged.is_dir():
        raise UserError(f"{merged} is a file, not a folder; {elsewhere}")
    for what, path in inputs.items():
        if os.path.isdir(path) and Path(path).resolve().is_relative_to(merged.resolve()):
            raise UserError(f"--merged_dir={merged} holds the {what} ({path}); the merged model needs a folder "
                            f"of its own: {elsewhere}")
    if not merged.is_dir() or not any(merged.iterdir()):
        return
    if not (merged / MERGE_CONFIG).exists():
        raise UserError(f"{merged} is not empty and holds no merged model ({MERGE_CONFIG} missing), so it is not "
                        f"replaced even with --overwrite=True; {elsewhere}, or empty it yourself")
    if not overwrite:
        raise UserError(f"{merged} already holds a merged model; pass --overwrite=True to replace it, or {elsewhere}")


# --- the leakage guard: no evaluation scores questions about the pictures an adapter trained on ----------

OVERLAP_FLAG = "--allow_train_overlap=True"


def describe_training_data(record: dict) -> str:
    """One line of English: which questions trained the adapter."""
    source = record.get("hf_dataset") or record["dataset"]
    return (f"{record.get('questions', 0):,} questions on {record.get('images', 0):,} pictures of {source} "
            f"{record['split']} ({record['images_from']}; excluded: {record.get('excluded', 'nothing')})")


def trained_folder(adapter: str | None, model_id: str | None) -> str | None:
    """What holds the training record the leakage guard reads: the adapter, else a merged model, else nothing."""
    return adapter or (model_id if model_id and (Path(model_id) / MERGE_CONFIG).is_file() else None)


def check_train_overlap(adapter: str | Path | None, pictures: list[tuple[str, int]], allow: bool,
                        what: str = "the evaluated questions") -> dict | None:
    """The training record of `adapter` (a final adapter, a checkpoint or a merged model: trained_folder) with how
    many of `pictures` ((picture set, image id) per question) it trained on, such an overlap refused in one line
    unless `allow`; None for a folder without the record."""
    paths = [Path(adapter) / name for name in ("training_config.json", "config.json", MERGE_CONFIG)] if adapter else []
    configs = (read_json(p, "training record", fix=again("adapter folder", download=False)) for p in paths if p.is_file())
    config = next((c for c in configs if isinstance(c, dict) and isinstance(c.get("training_data"), dict)), None)
    if config is None:
        return None
    record = config["training_data"]
    trained = set(config.get("training_image_ids") or [])
    hits = [i for where, i in pictures if where == record["images_from"] and i in trained]
    shared = sorted(set(hits))
    if shared and not allow:
        raise UserError(f"{what} share {len(shared):,} pictures ({len(hits):,} questions, image ids "
                        f"{', '.join(map(str, shared[:5]))}{', ...' if len(shared) > 5 else ''}) with the training questions of "
                        f"{adapter} ({record['dataset']} {record['split']}), so their scores show memory, not a gain: "
                        f"evaluate on a sample drawn before fine-tuning (the fine-tuning leaves its pictures out), "
                        f"or pass {OVERLAP_FLAG} to go on (the results then say so)")
    return {**record, "overlap_images": len(shared), "overlap_questions": len(hits),
            "evaluated_images_from": sorted({where for where, _ in pictures})}


def training_data_note(result: dict | None, adapter) -> str:
    """What a script prints about its adapter's training data (the guard's result)."""
    if result is None:
        return f"note: {adapter} records no training data (made before the record existed): no overlap check"
    line = f"note: the adapter was trained on {describe_training_data(result)}"
    if result["overlap_images"]:
        return (f"warning: {result['overlap_questions']:,} of these questions ask about {result['overlap_images']:,} "
                f"pictures the adapter trained on ({OVERLAP_FLAG}); their scores are not a fair gain. {line[6:]}")
    if result["split"] == "train":
        return line
    evaluated = result["evaluated_images_from"]
    if evaluated and result["images_from"] not in evaluated:
        return line + f"; these questions ask about {', '.join(evaluated)}, another picture set: fine (a test-dev submission too)"
    return line + "; none of these pictures is among them"
