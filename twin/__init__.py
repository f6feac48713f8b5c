"""The offline twin of blip2-opt-2.7b (or, with family "t5", of blip2-flan-t5-xl): a tiny BLIP-2 configured like
the real checkpoint but for its sizes, pre-trained as an easy-VQA captioner so the project runs offline (docs/twin.md)."""

from __future__ import annotations

import contextlib
import copy
import json
import time
from pathlib import Path

from src.family import OPT, family_of
from src.modeling import KNOWN_ARCHITECTURES
from src.training import IGNORE_INDEX, collate_examples, encode_example

SEED = 1234
NUM_QUERY_TOKENS = 8
IMAGE_SIZE = 64
VOCAB_SIZE = 640  # byte-level BPE: 256 bytes + merges + special tokens
IMAGE_TOKEN = "<image>"
FAMILIES = ("opt", "t5")
# the checkpoint each family's twin is configured like
TWIN_OF = {"opt": "Salesforce/blip2-opt-2.7b", "t5": "Salesforce/blip2-flan-t5-xl"}
ARCHITECTURES = {family: KNOWN_ARCHITECTURES[model_id] for family, model_id in TWIN_OF.items()}
# the sizes of the twin; every other config value is the real model's
SIZES = {
    "num_query_tokens": NUM_QUERY_TOKENS,
    "image_text_hidden_size": 32,
    "vision_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                      "image_size": IMAGE_SIZE, "patch_size": 8},
    # cross_attention_frequency counts as a size: the real Q-Former cross-attends to the image in 6 of its
    # 12 layers; with 2 layers, frequency 2 would leave one, and the twin then never learns shapes
    "qformer_config": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
                       "encoder_hidden_size": 64, "max_position_embeddings": 64, "cross_attention_frequency": 1},
    "text_config": {"hidden_size": 64, "word_embed_proj_dim": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                    "ffn_dim": 128, "max_position_embeddings": 256},
}
# the Flan-T5 twin: the same vision tower and Q-Former, a T5 of the same width with 2 encoder and 2 decoder layers
T5_TEXT_SIZES = {"d_model": 64, "d_ff": 128, "d_kv": 16, "num_heads": 4, "num_layers": 2, "num_decoder_layers": 2}
# stage 1 in miniature: all weights trained on easy-VQA train captions
PRETRAIN_STEPS = 1200
PRETRAIN_BATCH = 32
PRETRAIN_LR = 1e-3
WARMUP_STEPS = 50  # linear warmup, then linear decay to 5% at PRETRAIN_STEPS
TEXT_LINES_PER_STEP = 4  # plain-text corpus lines read per step, in turn
HEAD_WEIGHT = 1.0  # weight of the vision tower's and the Q-Former's own objective (see `pretrain`)
CAPTION_EVAL_IMAGES = 300  # val (easy-VQA test) images the caption accuracy is measured on

# Text the tokenizer is trained on: the prompt words, VQA-style questions and answers,
# easy-VQA's vocabulary and the course set. Fixed, so the tokenizer is deterministic.
_CORPUS = """
Question: Answer: Short answer: what is in the image? what is the color of the shape? what color is the shape?
what shape is in the image? what shape does the image contain? is there a circle in the image?
is there a rectangle? is there a triangle? is there not a circle? does the image contain a triangle?
is there a blue shape? is there a red shape in the image? is no green shape present?
is a gray shape present? is there a yellow shape? is there a teal shape? is there a brown shape?
what is the shape? what is the color of the rectangle? what color is the triangle? what color is the circle?
circle rectangle triangle red green blue black gray teal brown yellow yes no
a red circle. a green rectangle. a blue triangle. a black circle. a gray rectangle. a teal triangle.
a brown circle. a yellow rectangle. a red triangle. a green circle. a blue rectangle.
how many people are there? how many cats? what is the man holding? is it sunny? what sport is this?
a photo of a cat on a couch. an astronaut in a space suit. a cup of coffee on a table. a rocket on a launch pad.
a man with a camera. coins on a table. a motorcycle parked on the street. the moon in the sky. a red fox in the snow.
one two three four five six seven eight nine ten zero none 0 1 2 3 4 5 6 7 8 9 10
the a an of in on at with and or is are was were this that there what which who where when why how
white orange pink purple silver gold dark light small large big round square left right top bottom
"""
COLORS = ("red", "green", "blue", "black", "gray", "teal", "brown", "yellow")
SHAPES = ("circle", "rectangle", "triangle")


def recipe(family: str = "opt") -> dict:
    """Everything that determines the twin's weights (its card records it; a match means reuse)."""
    import hashlib

    import torch
    import transformers

    return {"source_sha256": hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16],
            "torch": torch.__version__, "transformers": transformers.__version__,
            "pretrain_steps": PRETRAIN_STEPS, "family": family}


def _train_tokenizer():
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>"],  # OPT's ids: pad=1, bos=2
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus_lines() * 4, trainer=trainer)  # no line holds "\n": it stays one byte token
    tok.add_special_tokens([AddedToken(IMAGE_TOKEN, normalized=False, special=True)])  # last id, as 50265
    bos = tok.token_to_id("</s>")
    # OPT prepends </s> (its BOS) to every text
    tok.post_processor = processors.TemplateProcessing(single="</s> $A", pair="</s> $A </s> $B", special_tokens=[("</s>", bos)])
    return tok


def _corpus_lines() -> list[str]:
    return [line.strip() for line in _CORPUS.strip().splitlines() if line.strip()]


def _t5_tokenizer():
    """A T5Tokenizer over the corpus with T5's ids (pad 0, </s> 1, <unk> 2, <image> last); its pieces are the
    corpus's words scored by frequency, so colours are one token as on the real vocabulary (docs/twin.md)."""
    import math
    import re
    from collections import Counter

    from tokenizers import AddedToken
    from transformers import T5Tokenizer

    words: Counter = Counter()
    chars: set[str] = set()
    for line in _corpus_lines():
        for chunk in line.split():
            chars.update(chunk)
            for i, part in enumerate(re.findall(r"\w+|[^\w\s]", chunk)):
                words["\u2581" + part if i == 0 else part] += 1
    total = sum(words.values())
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -8.0)]
    vocab += [(w, round(math.log(n / total), 4)) for w, n in sorted(words.items(), key=lambda kv: (-kv[1], kv[0]))]
    seen = {w for w, _ in vocab}
    for c in sorted(chars):  # any spelling of a corpus character still tokenizes: rare words fall apart into them
        for piece in (c, "\u2581" + c):
            if piece not in seen:
                vocab.append((piece, -12.0))
                seen.add(piece)
    tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=512)
    tokenizer.add_special_tokens({"additional_special_tokens": [AddedToken(IMAGE_TOKEN, normalized=False, special=True)]})
    tokenizer.padding_side = "right"
    return tokenizer


def _merge(base: dict, sizes: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in sizes.items():
        if isinstance(value, dict):
            out[key] = _merge(out.get(key, {}), value)
        else:
            out[key] = value
    return out


def twin_config(tokenizer, family: str = "opt"):
    """The real checkpoint's config (blip2-opt-2.7b or blip2-flan-t5-xl) with the twin's sizes and tokenizer ids."""
    from transformers import Blip2Config

    arch = json.loads(ARCHITECTURES[family].read_text(encoding="utf-8"))
    if family == "t5":
        return _t5_twin_config(arch, tokenizer)
    cfg = _merge(arch, SIZES)
    newline = tokenizer.convert_tokens_to_ids("Ċ")  # byte-level "\n", as "Ċ" = 50118 in OPT's vocabulary
    image_token_index = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if newline == tokenizer.unk_token_id or image_token_index != len(tokenizer) - 1:
        raise RuntimeError("tiny tokenizer: no newline token, or <image> is not the last token")
    text = cfg["text_config"]
    text.update(vocab_size=-(-len(tokenizer) // 8) * 8,  # padded like OPT's 50304 > 50266 tokens
                bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id, eos_token_id=newline)
    cfg["qformer_config"]["vocab_size"] = len(tokenizer)
    cfg["image_token_index"] = image_token_index
    cfg["vision_config"]["initializer_range"] = 0.02  # HF's vision default (1e-10) makes every image alike
    cfg.pop("architectures", None)
    cfg.pop("model_type", None)
    text.pop("architectures", None)
    return Blip2Config(**cfg)


def _t5_twin_config(arch: dict, tokenizer):
    from transformers import Blip2Config

    sizes = {**SIZES, "text_config": T5_TEXT_SIZES}
    cfg = _merge(arch, sizes)
    image_token_index = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) != (0, 1, 2) \
            or image_token_index != len(tokenizer) - 1:
        raise RuntimeError("tiny T5 tokenizer: pad/eos/unk are not 0/1/2, or <image> is not the last token")
    text = cfg["text_config"]
    # padded to a multiple of 128 in spirit (32128 > 32101 tokens on the real one): here of 8
    text.update(vocab_size=-(-len(tokenizer) // 8) * 8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    cfg["qformer_config"]["vocab_size"] = len(tokenizer)
    cfg["image_token_index"] = image_token_index
    cfg["vision_config"]["initializer_range"] = 0.02
    cfg.pop("architectures", None)
    cfg.pop("model_type", None)
    text.pop("architectures", None)
    return Blip2Config(**cfg)


def easy_vqa_captions(split: str) -> tuple[list[str], list[str]]:
    """(image paths, captions "a {colour} {shape}") of easy-VQA train or test ("val") images, read off their answers."""
    try:
        import easy_vqa
    except ImportError:
        raise SystemExit("the tiny model is pre-trained on easy-VQA: pip install easy-vqa") from None
    get_q, get_paths = ((easy_vqa.get_train_questions, easy_vqa.get_train_image_paths) if split == "train"
                        else (easy_vqa.get_test_questions, easy_vqa.get_test_image_paths))
    color: dict[int, str] = {}
    shape: dict[int, str] = {}
    for question, answer, image_id in zip(*get_q()):
        words = question.rstrip("?").split()
        # a word a question names is true of the image when the question asks "what ..." about it, or
        # when a yes/no question is answered yes (no, for a negated one: "is there not a red shape?")
        true = answer in COLORS + SHAPES or (answer == "yes") != ("not" in words or "no" in words)
        for w in words + [answer]:
            if w in COLORS and true:
                color[image_id] = w
            elif w in SHAPES and true:
                shape[image_id] = w
    paths = get_paths()
    ids = sorted(i for i in paths if i in color and i in shape)
    return [paths[i] for i in ids], [f"a {color[i]} {shape[i]}" for i in ids]


def _sequences(tokenizer, texts: list[str], eos_id: int) -> list[tuple[list[int], list[int]]]:
    """(ids, labels) of `</s> text <end>`: the loss covers the text and the end token (BOS is given)."""
    encoded = [tokenizer(t)["input_ids"] + [eos_id] for t in texts]
    return [(e, [IGNORE_INDEX] + e[1:]) for e in encoded]


def _caption_batch(tokenizer, captions: list[str], num_query_tokens: int, image_token_id: int, eos_id: int,
                   family=OPT, prefix_words=None):
    """Captions in the fine-tuning script's layout: OPT reads them after an empty prompt; Flan-T5 is trained as a
    prefix LM, its first `prefix_words[i]` words to the encoder, the rest to the decoder (docs/twin.md)."""
    if family.decoder_only:
        encoded = _sequences(tokenizer, captions, eos_id)
    else:
        split = [c.split() for c in captions]
        cut = prefix_words if prefix_words is not None else [0] * len(captions)
        encoded = [encode_example(tokenizer, " ".join(w[:k]), " ".join(w[k:]), eos_id, family) for w, k in zip(split, cut)]
    return collate_examples(tokenizer, num_query_tokens, image_token_id, encoded, family)


def _text_batch(tokenizer, eos_id: int, family=OPT) -> dict:
    """The tokenizer corpus as plain text: one line a sequence (Flan-T5: first half to the encoder, second to the decoder)."""
    lines = _corpus_lines()
    if family.decoder_only:
        encoded = _sequences(tokenizer, lines, eos_id)
    else:
        halves = [(" ".join(w[:len(w) // 2]), " ".join(w[len(w) // 2:])) for w in (line.split() for line in lines)]
        encoded = [encode_example(tokenizer, a, b, eos_id, family) for a, b in halves]
    ids, mask, labels = collate_examples(tokenizer, 0, 0, encoded, family)  # no image
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _pixel_values(processor, paths: list[str]):
    from PIL import Image

    images = []
    for p in paths:
        with Image.open(p) as im:
            images.append(im.convert("RGB"))
    return processor.image_processor(images, return_tensors="pt")["pixel_values"]


@contextlib.contextmanager
def _no_dropout(model):
    """Dropout off while pre-training (a tiny model underfits), back on afterwards: the saved config is the real one's."""
    import torch

    saved = []
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            saved.append((m, "p", m.p))
            m.p = 0.0
        for attr in ("dropout", "attention_dropout", "activation_dropout"):  # OPT and the ViT keep floats
            if isinstance(getattr(m, attr, None), float):
                saved.append((m, attr, getattr(m, attr)))
                setattr(m, attr, 0.0)
    try:
        yield
    finally:
        for m, attr, value in saved:
            setattr(m, attr, value)


def pretrain(model, processor, steps: int = PRETRAIN_STEPS, batch: int = PRETRAIN_BATCH, lr: float = PRETRAIN_LR):
    """Train every weight on train-image captions, with throw-away heads that teach the vision tower and the
    Q-Former to name shape and colour (why: docs/twin.md); returns the number of training images."""
    import torch
    from tqdm.auto import tqdm

    paths, captions = easy_vqa_captions("train")
    pixels = _pixel_values(processor, paths)
    shape_of = torch.tensor([SHAPES.index(c.split()[2]) for c in captions])
    colour_of = torch.tensor([COLORS.index(c.split()[1]) for c in captions])
    cfg = model.config
    family = family_of(cfg)
    end_id = cfg.text_config.eos_token_id  # OPT: the newline; Flan-T5: </s>
    n_names = len(SHAPES) + len(COLORS)
    heads = {"vision": torch.nn.Linear(cfg.vision_config.hidden_size, n_names),
             "qformer": torch.nn.Linear(cfg.qformer_config.hidden_size, n_names)}
    params = list(model.parameters()) + [p for head in heads.values() for p in head.parameters()]

    def naming_loss(head, features, idx):
        named = heads[head](features)
        return (torch.nn.functional.cross_entropy(named[:, :len(SHAPES)], shape_of[idx])
                + torch.nn.functional.cross_entropy(named[:, len(SHAPES):], colour_of[idx]))

    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=True)  # fused: 6x faster on ~200 small tensors
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / WARMUP_STEPS) * max(0.05, 1 - s / steps))
    gen = torch.Generator().manual_seed(SEED)
    order = torch.cat([torch.randperm(len(paths), generator=gen) for _ in range(steps * batch // len(paths) + 1)])
    flip = torch.rand(len(order), generator=gen) < 0.5
    # Flan-T5: how many caption words are the encoder's prefix (0, 1 or 2 of "a {colour} {shape}")
    prefix = torch.randint(0, 3, (len(order),), generator=gen) if not family.decoder_only else None
    # the language model also reads plain text (OPT was a language model before BLIP-2 met it): without
    # it, every token that no caption uses (question words, "yes", "no") keeps its tiny random embedding
    text = _text_batch(processor.tokenizer, end_id, family)
    n_lines = len(text["input_ids"])
    model.train()
    bar = tqdm(range(steps), desc="pre-training the tiny twin on easy-VQA captions", unit="step", dynamic_ncols=True)
    with _no_dropout(model):
        for step in bar:
            idx = order[step * batch:(step + 1) * batch]
            ids, mask, labels = _caption_batch(processor.tokenizer, [captions[i] for i in idx.tolist()],
                                               cfg.num_query_tokens, cfg.image_token_index, end_id, family,
                                               None if prefix is None else prefix[step * batch:(step + 1) * batch].tolist())
            # every other image mirrored left-right (easy-VQA's shapes keep their names in a mirror): twice
            # the pictures for the same steps, and val captions close to train ones
            images = torch.where(flip[step * batch:(step + 1) * batch, None, None, None], pixels[idx].flip(-1), pixels[idx])
            out = model(pixel_values=images, input_ids=ids, attention_mask=mask, labels=labels, use_cache=False)
            loss = out.loss + HEAD_WEIGHT * (
                naming_loss("vision", out.vision_outputs.pooler_output, idx)
                + naming_loss("qformer", out.qformer_outputs.last_hidden_state.mean(1), idx))
            lines = [(step * TEXT_LINES_PER_STEP + j) % n_lines for j in range(TEXT_LINES_PER_STEP)]
            loss = loss + model.language_model(**{k: v[lines] for k, v in text.items()}, use_cache=False).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            if step % 20 == 0 or step == steps - 1:
                bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    return len(paths)


def caption_accuracy(model, processor, n: int = CAPTION_EVAL_IMAGES) -> float:
    """Share of val images whose greedy caption is exactly "a {colour} {shape}" (in %)."""
    from src.inference import generate_batch

    paths, captions = easy_vqa_captions("val")
    paths, captions = paths[:n], captions[:n]
    decoding = {"num_beams": 1, "max_new_tokens": 8, "do_sample": False}
    said: list[str] = []
    for start in range(0, len(paths), 100):
        chunk = paths[start:start + 100]
        said += generate_batch(model, processor, _pixel_values(processor, chunk), [""] * len(chunk), decoding)
    return round(100 * sum(s == c for s, c in zip(said, captions)) / len(captions), 1)


def read_card(outdir: str | Path) -> dict | None:
    path = Path(outdir) / "card.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def build_tiny_blip2(outdir: str | Path, pretrain_steps: int = PRETRAIN_STEPS, family: str = "opt") -> Path:
    """Build the twin of `family` in `outdir`, or reuse the one there built with the same recipe; returns the folder."""
    import torch

    if family not in FAMILIES:
        raise ValueError(f"family {family!r}: one of {', '.join(FAMILIES)}")
    outdir = Path(outdir)
    wanted = {**recipe(family), "pretrain_steps": pretrain_steps}
    card = read_card(outdir)
    if card is not None and card.get("recipe") == wanted and (outdir / "model.safetensors").exists():
        print(f"the tiny BLIP-2 twin in {outdir} is already built with this recipe "
              f"(caption accuracy {card.get('caption_accuracy')}%); reusing it")
        return outdir
    start = time.perf_counter()
    threads = torch.get_num_threads()
    # the twin's matrices (hidden size 64) are too small to split: one thread is as fast when the machine
    # is idle and many times faster when it is busy, and the result does not depend on the core count
    torch.set_num_threads(1)
    try:
        return _build(outdir, pretrain_steps, wanted, start, family)
    finally:
        torch.set_num_threads(threads)


def _opt_tokenizer():
    from transformers import GPT2TokenizerFast

    tokenizer = GPT2TokenizerFast(
        tokenizer_object=_train_tokenizer(), bos_token="</s>", eos_token="</s>", unk_token="<unk>",
        pad_token="<pad>", model_max_length=256 - NUM_QUERY_TOKENS,
    )
    tokenizer.padding_side = "left"
    return tokenizer


def _build(outdir: Path, pretrain_steps: int, wanted: dict, start: float, family: str = "opt") -> Path:
    import torch
    from transformers import Blip2ForConditionalGeneration, Blip2Processor, BlipImageProcessorPil

    from src.files import give_default_permissions

    torch.manual_seed(SEED)
    tokenizer = _t5_tokenizer() if family == "t5" else _opt_tokenizer()
    config = twin_config(tokenizer, family)
    # eager attention: at the twin's sizes (head dim 16, 65 tokens) it is faster than SDPA on CPU; only the
    # build uses it (the saved config leaves the choice to whoever loads the twin)
    model = Blip2ForConditionalGeneration._from_config(config, attn_implementation="eager")
    with torch.no_grad():  # as BLIP-2 initialises them (HF's zeros make every query alike)
        model.query_tokens.normal_(0.0, config.initializer_range)
    if family == "t5":
        # Flan-T5's checkpoint holds its own lm_head beside the shared embedding (tie_word_embeddings false);
        # transformers builds every T5 tied, and unties on loading a checkpoint that holds both, as the twin does
        lm = model.language_model
        lm.lm_head.weight = torch.nn.Parameter(
            torch.empty_like(lm.shared.weight).normal_(0.0, config.text_config.initializer_factor))  # T5's init
    # what from_pretrained gives for the real model: OPT stops on the newline; Flan-T5 starts its decoder
    # on <pad> and stops on </s>
    text = config.text_config
    if family == "t5":
        model.generation_config.decoder_start_token_id = text.decoder_start_token_id
    else:
        model.generation_config.bos_token_id = text.bos_token_id
    model.generation_config.eos_token_id = text.eos_token_id
    model.generation_config.pad_token_id = text.pad_token_id
    image_processor = BlipImageProcessorPil(  # PIL, as src.modeling.load_blip2 pins it: with or without torchvision
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
        do_convert_rgb=True,
    )
    processor = Blip2Processor(image_processor=image_processor, tokenizer=tokenizer, num_query_tokens=NUM_QUERY_TOKENS)

    n_images = pretrain(model, processor, steps=pretrain_steps) if pretrain_steps > 0 else 0
    accuracy = caption_accuracy(model, processor) if pretrain_steps > 0 else None
    outdir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(outdir)
    processor.save_pretrained(outdir)
    give_default_permissions(outdir)
    n_params = sum(p.numel() for p in model.parameters())
    card = {
        "what": f"offline twin of {TWIN_OF[family]}: same config keys and special tokens, tiny sizes",
        "family": family,
        "parameters": n_params,
        "pretraining_data": (f"captions 'a {{colour}} {{shape}}' of {n_images} easy-VQA train images, each ending "
                             f"with the {'</s>' if family == 't5' else 'newline'} end token"
                             if pretrain_steps else "none (random weights)"),
        "steps": pretrain_steps, "batch": PRETRAIN_BATCH, "lr": PRETRAIN_LR,
        "seconds": round(time.perf_counter() - start, 1),
        "caption_accuracy": accuracy,
        "caption_accuracy_on": f"{CAPTION_EVAL_IMAGES} easy-VQA val (test) images, greedy, exact caption",
        "recipe": wanted,
    }
    (outdir / "card.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    msg = f"tiny BLIP-2 twin with {n_params:,} parameters saved to {outdir} in {card['seconds']} s"
    if accuracy is not None:
        msg += f"; caption accuracy on {CAPTION_EVAL_IMAGES} easy-VQA val images: {accuracy}%"
    print(msg)
    return outdir

