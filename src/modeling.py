"""The one place that loads BLIP-2: `load_blip2(model_id, quantization, adapter, ...)`.

Every script gets its model and processor from here, so the real model
(`Salesforce/blip2-opt-2.7b`) and the tiny test model (`python -m twin DIR`)
go through the same `from_pretrained` calls.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from .errors import UserError
from .family import OPT, Family, family_of, resolve

QUANTIZATIONS = ("4bit", "8bit", "none")
DEFAULT_MODEL_ID = "Salesforce/blip2-opt-2.7b"
# what 4-bit / 8-bit leave unquantised is the model family's (src/family.py: Family.quantization_skip)
ROOM_WARNING_GB = 20  # a model download the hub cannot size: warn when the cache disk has less free space
OTHER_WEIGHT_FORMATS = (".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".gguf")  # never downloaded


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def make_accelerator(**kwargs):
    """An Accelerator that also goes data-parallel on CPU-only machines (gloo) when launched with
    torchrun; accelerate only does that when told the run is on CPU."""
    import torch
    from accelerate import Accelerator

    return Accelerator(cpu=not torch.cuda.is_available(), **kwargs)


def compute_dtype(device: str, family: Family = OPT):
    """bf16 on GPUs with native bf16 (compute capability 8.0+: A100, A10, L4, RTX 30/40, H100), fp16 on
    older ones (T4, V100, RTX 20), fp32 on CPU. torch counts emulated bf16 as supported by default; on a
    T4 that is slow and breaks bitsandbytes kernels, so emulation does not count here. A family that
    overflows in fp16 (Flan-T5, trained in bf16) computes in fp32 on those older GPUs instead: slower
    and, for the unquantised parts, twice the memory, but its answers are numbers, not nan."""
    import torch

    if str(device).startswith("cuda"):
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return torch.bfloat16
        return torch.float16 if family.fp16_ok else torch.float32
    return torch.float32


def mixed_precision(device: str, family: Family = OPT) -> str:
    """accelerate's mixed_precision for training on `device`: "bf16", "fp16" (with loss scaling) or "no"."""
    import torch

    dtype = compute_dtype(device, family)
    if not str(device).startswith("cuda") or dtype == torch.float32:
        return "no"
    return "bf16" if dtype == torch.bfloat16 else "fp16"


def model_config(model_id: str):
    """The Blip2Config of a local folder or hub id (a small download for a hub id seen the first time)."""
    from transformers import Blip2Config

    try:
        return Blip2Config.from_pretrained(model_id)
    except (OSError, ValueError) as e:
        raise _fetch_error(model_id, e) from None


def model_family(model_id: str) -> Family:
    """The family (src/family.py) of the BLIP-2 at `model_id`, from its config alone."""
    return family_of(model_config(model_id))


def known_family(model_id: str) -> Family | None:
    """The family of `model_id` where it needs no download: a local folder's config.json, the shipped
    architecture of a public BLIP-2 checkpoint (src/memory_plan.py KNOWN_ARCHITECTURES), or a config.json
    already in the Hugging Face cache. None otherwise (an unknown hub id not yet downloaded, a path that
    does not exist: the model load says what is wrong with it)."""
    from .memory_plan import KNOWN_ARCHITECTURES

    folder = Path(os.path.expanduser(str(model_id)))
    if folder.is_dir():
        path = folder / "config.json"
    elif str(model_id) in KNOWN_ARCHITECTURES:
        path = KNOWN_ARCHITECTURES[str(model_id)]
    elif _is_local(str(model_id)):
        return None
    else:
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(str(model_id), "config.json")
        except Exception:  # not a valid repo id: the model load says so
            return None
        if not isinstance(cached, str):
            return None
        path = Path(cached)
    try:
        return family_of(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, AttributeError):
        return None  # unreadable: check_model_dir and the load report it


def generation_names(model_id: str, vqa_prompt: str, vqa_decoding: str | None = None,
                     model=None) -> tuple[str, str | None]:
    """A script's VQA_PROMPT and VQA_DECODING for the model it loads: "auto" becomes the model family's
    own (vqa_opt for OPT, vqa_t5 for Flan-T5); a name written for the other family is refused in one
    line. Before the slow load (no `model`) the family comes from `known_family`, without a download;
    where that cannot tell (a hub id seen the first time) the names stay as they are until the scripts
    call this again with the loaded `model`."""
    family = family_of(blip2_core(model).config) if model is not None else known_family(model_id)
    if family is None:
        return vqa_prompt, vqa_decoding
    prompt = resolve("prompt", vqa_prompt, family, model_id)
    decoding = None if vqa_decoding is None else resolve("decoding", vqa_decoding, family, model_id)
    return prompt, decoding


def check_quantization(quantization: str, device: str) -> None:
    """Fail early, in one line, when the requested quantisation can't run here."""
    if quantization not in QUANTIZATIONS:
        raise UserError(f"unknown quantization {quantization!r}; use one of {', '.join(QUANTIZATIONS)} (e.g. --quantization=none)")
    if quantization == "none":
        return
    try:
        import bitsandbytes  # noqa: F401
    except Exception as e:  # ImportError, or a broken CUDA setup raising at import time
        raise UserError(
            f"--quantization={quantization} needs bitsandbytes, which failed to import ({type(e).__name__}: {e}); "
            "install it with `pip install bitsandbytes` or run with --quantization=none"
        ) from None
    if quantization == "8bit" and not str(device).startswith("cuda"):
        raise UserError("--quantization=8bit needs a CUDA GPU; on CPU use --quantization=4bit or --quantization=none")


def _disable_cpu_repacking(model) -> int:
    """bitsandbytes repacks CPU 4-bit weights for inference on the first eval forward, after
    which backward fails ('a view of a leaf Variable that requires grad ...'). Keep the
    trainable layout by switching that path off on every Linear4bit."""
    import bitsandbytes as bnb

    n = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            n += 1
    return n


def _is_local(model_id: str) -> bool:
    from .config import looks_like_path

    return os.path.exists(model_id) or looks_like_path(model_id)


def _fetch_error(model_id: str, err: Exception) -> UserError:
    if _is_local(model_id) and not os.path.isdir(model_id):
        return UserError(f"model folder not found: {model_id}; pass --model_id=<local dir> of a saved model, "
                         "or a Hugging Face Hub id such as Salesforce/blip2-opt-2.7b")
    where = f"the folder {model_id}" if _is_local(model_id) else f"the Hugging Face Hub id {model_id!r}"
    return UserError(
        f"could not load BLIP-2 from {where} ({type(err).__name__}: {str(err).splitlines()[0][:200]}). "
        "Without internet, or with a wrong id, pass a local copy: --model_id=<local dir> "
        "(a folder saved with save_pretrained, e.g. one made by `python -m twin outputs/tiny-blip2`)"
    )


def _free_bytes(folder: Path) -> int:
    import shutil

    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def check_download_room(model_id: str) -> None:
    """Before a hub model is downloaded for the first time: the files from_pretrained will fetch (its
    safetensors and the small config and tokenizer files, as the hub lists their sizes) must fit in the
    free space of the hub cache's disk, or the run stops at once with one line saying where to put the
    cache (the system disk of a rented GPU box is often 20-30 GB). When the hub cannot say (offline,
    a mirror without sizes), warn if that disk has less than ROOM_WARNING_GB free."""
    from huggingface_hub import HfApi, constants, try_to_load_from_cache

    if _is_local(model_id) or constants.HF_HUB_OFFLINE:
        return
    if any(isinstance(try_to_load_from_cache(model_id, f), str) for f in ("model.safetensors.index.json",
                                                                          "model.safetensors")):
        return  # downloaded before (from_pretrained completes a partial download by itself)
    cache = Path(constants.HF_HUB_CACHE)
    free = _free_bytes(cache)
    where = (f"the hub cache {cache} has {free / 1e9:.1f} GB free; put it on a bigger disk, e.g. "
             "export HF_HOME=/root/autodl-tmp/hf on AutoDL, or free some space")
    try:
        files = HfApi().model_info(model_id, files_metadata=True).siblings or []
    except Exception:  # no answer now: from_pretrained reports the hub's trouble itself
        files = None
    wanted = [f for f in files or [] if not f.rfilename.endswith(OTHER_WEIGHT_FORMATS)]
    if not wanted or any(f.size is None for f in wanted):
        if free < ROOM_WARNING_GB * 1e9:
            print(f"warning: downloading {model_id}, whose size the hub did not say, and {where}", flush=True)
        return
    need = sum(f.size for f in wanted if not isinstance(try_to_load_from_cache(model_id, f.rfilename), str))
    if need > free:
        raise UserError(f"downloading {model_id} needs {need / 1e9:.1f} GB, but {where}")


IMAGE_BACKEND = "pil"  # what LAVIS used (PIL bicubic); see load_processor


def load_processor(model_id: str, family: Family = OPT):
    """The model's processor, its images always resized by PIL (bicubic, what LAVIS used). transformers 5
    otherwise picks the torchvision backend whenever torchvision imports (a usual CUDA install), which
    resizes tensors with antialiasing: other pixels, so a baseline and a fine-tuned run made on two
    machines would not be comparable. Rows record the backend (`image_backend`). The padding side is
    the family's: left for OPT, right for Flan-T5."""
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(model_id, backend=IMAGE_BACKEND)
    except (OSError, ValueError) as e:
        raise _fetch_error(model_id, e) from None
    # OPT: image tokens, then left padding, then the prompt, so batched generation continues every row
    # from its last real token; Flan-T5's encoder reads image tokens, prompt, then right padding
    processor.tokenizer.padding_side = family.padding_side
    return processor


def load_blip2(
    model_id: str = DEFAULT_MODEL_ID,
    quantization: str = "4bit",
    adapter: str | None = None,
    device: str | None = None,
    trainable_adapter: bool = False,
    dtype=None,
):
    """Load (model, processor).

    quantization: "4bit" (NF4, double quantisation, compute dtype bf16 on GPU / fp32 on CPU),
    "8bit" (LLM.int8, GPU only) or "none" (bf16/fp16 on GPU, fp32 on CPU).
    adapter: a LoRA adapter folder (safetensors) to apply; `trainable_adapter` keeps it trainable.
    device: "cuda", "cuda:1", "cpu"; default: cuda when available.
    dtype: the weights' dtype when not the device's compute dtype (merge_lora_adapter.py loads float32).
    """
    import torch
    from transformers import BitsAndBytesConfig, Blip2ForConditionalGeneration

    device = device or default_device()
    check_model_dir(model_id)
    check_quantization(quantization, device)
    check_download_room(model_id)  # before anything is downloaded, the config included
    family = model_family(model_id)
    dtype = dtype or compute_dtype(device, family)
    skip = list(family.quantization_skip)
    kwargs = {"dtype": dtype, "use_safetensors": True}  # never unpickle downloaded weights
    if quantization == "4bit":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
            llm_int8_skip_modules=skip,
        )
    elif quantization == "8bit":
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    # every weight straight onto this process's device (also unquantised: no full copy in host RAM first,
    # which is 7.7 GB per process, 62 GB on 8 GPUs)
    kwargs["device_map"] = {"": torch.device(device).index or 0} if str(device).startswith("cuda") else {"": "cpu"}

    processor = load_processor(model_id, family)
    try:
        with _quiet_untied_lm_head(family):
            model, loaded = Blip2ForConditionalGeneration.from_pretrained(model_id, output_loading_info=True, **kwargs)
    except (OSError, ValueError) as e:
        raise _fetch_error(model_id, e) from None
    except RuntimeError as e:
        if "mismatched" not in str(e) and "size mismatch" not in str(e):
            raise
        detail = next((line.strip() for line in str(e).splitlines() if "shape" in line), str(e).splitlines()[0])
        raise UserError(f"{model_id}: config.json does not match the weights ({detail[:200]}); the config was edited "
                        "or comes from another model: copy or download the model folder again") from None
    # transformers starts a weight the files lack at random and only its load report says so
    odd = [f"{len(keys)} {what} ({', '.join(sorted(keys)[:3])}{', ...' if len(keys) > 3 else ''})"
           for what, keys in (("missing", loaded["missing_keys"]), ("unexpected", loaded["unexpected_keys"])) if keys]
    if odd:
        raise UserError(f"{model_id}: the weights do not fit config.json: {'; '.join(odd)} tensors; the files are "
                        "incomplete or the config comes from another model: copy or download the model folder again")
    check_image_tokens(model, processor, model_id)
    check_bos(model, processor, model_id)
    if processor.tokenizer.pad_token_id is None:
        raise UserError(f"{model_id}: the tokenizer has no pad token (pad_token in tokenizer_config.json); batches "
                        "cannot be padded: copy or download the model's tokenizer files again")
    if quantization == "4bit" and not str(device).startswith("cuda"):
        _disable_cpu_repacking(model)

    if adapter:
        model = apply_adapter(model, adapter, trainable=trainable_adapter)
    if not trainable_adapter:
        model.eval()
    return model, processor


def check_image_tokens(model, processor, model_id: str) -> None:
    """The image-token settings a BLIP-2 checkpoint needs. Hub revisions from before the Nov 2024
    processor update lack them: the query count then comes from the model config; a missing image
    token cannot be made up."""
    config = model.config
    token = getattr(config, "image_token_index", None)
    if token is None or token >= len(processor.tokenizer):
        fix = (f"download the model again into it: `hf download <hub id, e.g. Salesforce/blip2-opt-2.7b> --local-dir "
               f"{model_id}`" if _is_local(model_id) else f"update the cached copy: `hf download {model_id}` (or delete "
               "its folder under ~/.cache/huggingface/hub and run again)")
        raise UserError(
            f"{model_id}: the model files have no image token (image_token_index is "
            f"{'missing' if token is None else f'{token}, beyond the tokenizer'} in config.json); they predate the "
            f"Nov 2024 BLIP-2 processor update; {fix}")
    # the processor's count, when an old processor_config.json lacks it, comes from the model
    processor.num_query_tokens = config.num_query_tokens


class _UntiedLmHeadFilter:
    """Drops transformers' warning that a T5 checkpoint holds its lm_head beside the shared embedding:
    Flan-T5's does (its config says tie_word_embeddings false), and keeping them apart is right."""

    @staticmethod
    def filter(record) -> bool:
        text = record.getMessage()
        return not ("present in the checkpoints with different values, so we will NOT tie them" in text
                    and "lm_head" in text and "shared" in text)


@contextlib.contextmanager
def _quiet_untied_lm_head(family: Family):
    import logging

    logger = logging.getLogger("transformers.modeling_utils")
    if not family.decoder_only:
        logger.addFilter(_UntiedLmHeadFilter)
    try:
        yield
    finally:
        logger.removeFilter(_UntiedLmHeadFilter)


def check_bos(model, processor, model_id: str) -> None:
    """The tokenizer must start every text with the language model's BOS (OPT's `</s>`, id 2), as the
    model was trained and as the fine-tuning target assumes. In transformers 5 only the post-processor of
    tokenizer.json decides this (add_bos_token is dropped when that file exists), so a damaged or stale
    tokenizer.json would shift every prompt silently."""
    if not family_of(model.config).decoder_only:  # T5 has no BOS: its decoder starts from the pad token
        return
    bos = getattr(model.config.text_config, "bos_token_id", None)
    if bos is None:
        return
    ids = processor.tokenizer("a")["input_ids"]
    if not ids or ids[0] != bos:
        folder = Path(model_id) if Path(model_id).is_dir() else None
        where = (f"{folder / 'tokenizer.json'} and {folder / 'tokenizer_config.json'}" if folder else
                 f"the cached tokenizer.json and tokenizer_config.json of {model_id} (under ~/.cache/huggingface/hub)")
        fix = ("copy the model folder again" if folder else
               f"refresh them: `hf download {model_id} tokenizer.json tokenizer_config.json --force-download`")
        raise UserError(f"{model_id}: the tokenizer does not start a text with the model's BOS token (id {bos}; it "
                        f"starts 'a' with {ids[:3]}): {where} are damaged or stale; {fix}")


def end_token_id(model) -> int:
    """The token generation stops on: the language model's eos, which the fine-tuning target must end
    with. For OPT-based BLIP-2 that is the newline (50118), not the tokenizer's `</s>`; for Flan-T5 `</s>` (1)."""
    core = blip2_core(model)
    eos = core.language_model.generation_config.eos_token_id
    if eos is None:
        eos = core.config.text_config.eos_token_id
    return eos[0] if isinstance(eos, (list, tuple)) else int(eos)


def apply_adapter(model, adapter: str | Path, trainable: bool = False):
    """Load the LoRA adapter in `adapter` onto `model`, refusing in one line an adapter whose layers
    don't fit it (trained on another base model)."""
    from peft import PeftModel

    check_adapter_dir(adapter)
    loaded = getattr(model.config, "_name_or_path", "") or "the loaded model"
    problem = adapter_mismatch(model, adapter)
    if problem:
        raise _mismatch_error(adapter, loaded, problem)
    try:
        return PeftModel.from_pretrained(model, str(adapter), is_trainable=trainable)
    except RuntimeError as e:
        if "size mismatch" not in str(e):
            raise
        raise _mismatch_error(adapter, loaded, str(e).strip().splitlines()[-1].strip()[:200]) from None
    except ValueError as e:  # peft's NoMatchingPeftModuleError is one: target_modules names no layer
        raise UserError(f"the LoRA adapter in {adapter} does not fit {loaded}: {str(e).splitlines()[0][:200]}; check "
                        f"target_modules in {Path(adapter) / 'adapter_config.json'}, or pass an adapter trained on "
                        f"{loaded}") from None


def _read_adapter_config(adapter: Path) -> dict:
    path = adapter / "adapter_config.json"
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is corrupt (not valid JSON: {e}); copy the adapter folder again or retrain it "
                        "with `python finetune_vqav2_lora.py`") from None
    if not isinstance(config, dict):
        raise UserError(f"{path} is corrupt (not a JSON object); copy the adapter folder again or retrain it")
    fix = "copy the adapter folder again or retrain it with `python finetune_vqav2_lora.py`"
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


def _mismatch_error(adapter, model_id: str, problem: str) -> UserError:
    base = _read_adapter_config(Path(adapter)).get("base_model_name_or_path")
    if base and os.path.normpath(str(base)) == os.path.normpath(str(model_id)):
        return UserError(f"the LoRA adapter in {adapter} does not fit its own base model {model_id}: {problem}; its "
                         "adapter_config.json and adapter_model.safetensors disagree (edited or mixed up): copy the "
                         "adapter folder again or retrain it")
    if not base:
        return UserError(f"the LoRA adapter in {adapter} was trained on another model than the one loaded "
                         f"({model_id}): {problem}; pass an adapter trained on {model_id}")
    return UserError(f"the LoRA adapter in {adapter} was trained on {base}, which is not the model loaded "
                     f"({model_id}): {problem}; pass --model_id={base}, or an adapter trained on {model_id}")


def adapter_mismatch(model, adapter: str | Path) -> str | None:
    """Why the adapter's LoRA weights don't fit `model`'s layers (first misfit), or None.
    Reads only the adapter's safetensors header; `model` may be on the meta device."""
    from safetensors import safe_open

    with safe_open(str(Path(adapter) / "adapter_model.safetensors"), "pt") as f:
        shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
    prefix = "base_model.model."
    config = _read_adapter_config(Path(adapter))
    theirs, ours = _adapter_family(shapes), family_of(blip2_core(model).config)
    if theirs is not None and theirs != ours:
        return (f"its LoRA layers are those of BLIP-2 on {theirs.title}, the model is BLIP-2 on {ours.title} "
                "(an adapter works only on the model family it was trained on)")
    landed = 0
    for key, shape in sorted(shapes.items()):
        if key.endswith(".lora_A.weight") and len(shape) == 2 and shape[0] != config["r"] \
                and not config.get("rank_pattern"):
            return (f"its adapter_config.json says rank r={config['r']}, but its weights have rank {shape[0]} "
                    f"({key}): a rank mismatch")
        for part, dim, attr in ((".lora_A.weight", 1, "in_features"), (".lora_B.weight", 0, "out_features")):
            if not (key.startswith(prefix) and key.endswith(part)) or len(shape) != 2:
                continue
            name = key[len(prefix):-len(part)]
            try:
                layer = model.get_submodule(name)
            except AttributeError:
                return f"the model has no layer {name}"
            want = getattr(layer, attr, None)
            if want is not None and want != shape[dim]:
                return f"layer {name} has {want} {attr.replace('_', ' ')}, the adapter's has {shape[dim]}"
            landed += 1
    if not landed:
        return (f"none of its {len(shapes)} tensors is a LoRA weight (…lora_A.weight / …lora_B.weight) of a layer of "
                "the model, so it would change nothing (an empty or renamed weights file)")
    return None


def _adapter_family(keys) -> Family | None:
    """The model family whose language-model layers an adapter's tensor names adapt, or None (none of its
    names is a language-model layer: the per-layer check reports that)."""
    from .family import T5

    for key in keys:
        if ".language_model.model.decoder.layers." in key:
            return OPT
        if ".language_model.encoder.block." in key or ".language_model.decoder.block." in key:
            return T5
    return None


def resolve_adapter_dir(adapter_dir: str, output_dir: str | Path) -> str | None:
    """Every script's ADAPTER_DIR setting (and merge_lora_adapter.py's MERGED_DIR) as the folder it names:
    "" is the base model only (None), and
    "{output_dir}" in it stands for the script's OUTPUT_DIR, so "{output_dir}/lora_adapter" follows
    --output_dir=. "~" means the home folder, as it does in --output_dir."""
    if not adapter_dir:
        return None
    output_dir = str(output_dir).rstrip("/\\") or str(output_dir)
    return os.path.expanduser(adapter_dir.replace("{output_dir}", output_dir))


def check_adapter_dir(adapter: str | Path, model_id: str | None = None) -> None:
    """A LoRA adapter folder with a readable config and whole safetensors weights (checked before a
    slow model load). With `model_id`, also that its layers fit that model, when the adapter was
    trained on a model of another name and that model's config is at hand (local or cached)."""
    from .files import read_json, resolved_if_local, safetensors_problem
    from .merging import MERGE_CONFIG

    adapter = Path(adapter)
    if adapter.is_file():
        raise UserError(f"{adapter} is a file; pass the adapter's folder, the one that holds adapter_config.json "
                        f"(e.g. {adapter.parent})")
    if not (adapter / "adapter_config.json").exists():
        raise UserError(
            f"no LoRA adapter in {adapter} (adapter_config.json missing); train one with "
            "`python finetune_vqav2_lora.py` or pass the folder that holds adapter_config.json"
        )
    config = _read_adapter_config(adapter)
    weights = adapter / "adapter_model.safetensors"
    if not weights.exists():
        raise UserError(f"{adapter} has no adapter_model.safetensors; only safetensors adapters are loaded")
    problem = safetensors_problem(weights)
    if problem:
        raise UserError(f"{weights} {problem}; copy the adapter again, or rerun `python finetune_vqav2_lora.py`, "
                        "which resumes from its last checkpoint")
    merged = Path(model_id) / MERGE_CONFIG if model_id else None
    if merged is not None and merged.is_file():  # merge_lora_adapter.py's folder: it holds an adapter already
        record = read_json(merged, "merged model's record", fix="copy the merged model folder again")
        holds = record.get("adapter_dir") if isinstance(record, dict) else None
        if isinstance(holds, str) and Path(holds).resolve() == adapter.resolve():
            raise UserError(f"{model_id} is a merged model that already holds the LoRA adapter in {adapter}; applying it "
                            "again would add its update twice: pass --adapter_dir= (empty) to use the merged model alone")
    base = config.get("base_model_name_or_path")
    if model_id and base and resolved_if_local(os.path.normpath(str(base))) != resolved_if_local(os.path.normpath(model_id)):
        skeleton = _model_skeleton(model_id)
        problem = adapter_mismatch(skeleton, adapter) if skeleton is not None else None
        if problem:
            raise _mismatch_error(adapter, model_id, problem)
        # same shapes, another name: a copy of the base, or another checkpoint whose answers would be wrong
        print(f"warning: the LoRA adapter in {adapter} was trained on {base}, not on {model_id}; that is right only "
              f"if {model_id} is a copy of {base} (else pass --model_id={base})", flush=True)


def _model_skeleton(model_id: str):
    """BLIP-2 built from its config on the meta device (no weights, about a second), or None when
    the config can't be read here (a hub id not downloaded yet: the load reports that)."""
    import torch
    from transformers import Blip2Config, Blip2ForConditionalGeneration

    try:
        config = Blip2Config.from_pretrained(model_id)
    except (OSError, ValueError):
        return None
    with torch.device("meta"):
        return Blip2ForConditionalGeneration(config)


def check_model_dir(model_id: str) -> None:
    """A local model folder holds a BLIP-2 config and whole safetensors weights (read from the
    headers, before the slow load). A hub id is left to the download, which verifies itself."""
    from .files import safetensors_problem

    folder = Path(model_id)
    if not folder.is_dir():
        if _is_local(model_id) and not folder.exists():  # a path, not a hub id: say so now, not after the imports
            raise _fetch_error(model_id, FileNotFoundError(model_id))
        return
    config_path = folder / "config.json"
    if (folder / "adapter_config.json").exists() and not config_path.exists():
        raise UserError(f"{folder} is a LoRA adapter, not a base model; pass it as the adapter "
                        f"(e.g. --adapter_dir={folder}) and the model it was trained on as --model_id")
    if not config_path.exists():
        raise UserError(f"no config.json in {folder}: not a model saved with save_pretrained; pass "
                        "--model_id=<folder with config.json and model.safetensors> or a hub id")
    from .files import read_json

    again = "copy or download the model folder again"
    config = read_json(config_path, "model config", fix=again)
    if not isinstance(config, dict):
        raise UserError(f"{config_path} is corrupt (not a JSON object); {again}")
    model_type = config.get("model_type")
    if model_type != "blip-2":
        raise UserError(f"{folder} is not a BLIP-2 model (its config.json says model_type {model_type!r}); "
                        f"pass a BLIP-2 folder, e.g. a saved copy of {DEFAULT_MODEL_ID}")
    for key in ("vision_config", "qformer_config", "text_config"):
        if key in config and not isinstance(config[key], dict):
            raise UserError(f"{config_path}: {key!r} must be a JSON object, not {type(config[key]).__name__}; {again}")
    tokenizer_json = folder / "tokenizer.json"
    if not tokenizer_json.exists() and not (folder / "vocab.json").exists():
        raise UserError(f"{folder} has no tokenizer (tokenizer.json is missing); copy that file from the model's "
                        f"original folder, or download the model again")
    if tokenizer_json.exists():
        tok = read_json(tokenizer_json, "tokenizer file", fix=again)
        if not isinstance(tok, dict) or not isinstance(tok.get("added_tokens"), list) or "model" not in tok:
            raise UserError(f"{tokenizer_json} is damaged (no 'added_tokens' list or no 'model'); {again}")
    for weights in sorted(folder.glob("*.safetensors")):
        problem = safetensors_problem(weights)
        if problem:
            raise UserError(f"{weights} {problem}; copy or download the model again")


def blip2_core(model):
    """The Blip2ForConditionalGeneration inside a PeftModel (LoRA layers are injected in place). Without
    peft imported there is no PeftModel, so a plain model (e.g. a merged one) needs no peft installed."""
    import sys

    peft = sys.modules.get("peft")
    return model.get_base_model() if peft is not None and isinstance(model, peft.PeftModel) else model
