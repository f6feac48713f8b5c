"""Batched caption and VQA generation from the model's public pieces, so an image shared by several
questions of a batch is encoded once; answers equal `generate` run one input at a time (docs/notes.md)."""

from __future__ import annotations

import sys
from typing import Sequence

import torch

from .family import family_of
from .images import shown_path
from .modeling import blip2_core
from .prompts import first_line, format_prompt, generate_kwargs, generation_record, get_decoding


def model_device_dtype(model) -> tuple[torch.device, torch.dtype]:
    """Where and in which dtype pixel values must go (the vision tower's patch embedding)."""
    weight = blip2_core(model).vision_model.embeddings.patch_embedding.weight
    return weight.device, weight.dtype


def preprocess_images(processor, images: Sequence) -> torch.Tensor:
    """The pixel values of PIL images."""
    return processor.image_processor(list(images), return_tensors="pt")["pixel_values"]


@torch.no_grad()
def encode_images(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """Vision encoder + Q-Former + projection: (n_images, num_query_tokens, lm_hidden)."""
    core = blip2_core(model)
    device, dtype = model_device_dtype(model)
    out = core.get_image_features(pixel_values=pixel_values.to(device, dtype), return_dict=True)
    return out.pooler_output


def tokenize_prompts(processor, prompts: Sequence[str], image_token_id: int, num_query_tokens: int,
                     max_prompt_tokens: int | None = None):
    """Prompt ids with the processor's layout: image tokens, left padding, text."""
    tok = processor.tokenizer
    kwargs = {"truncation": True, "max_length": max_prompt_tokens} if max_prompt_tokens else {}
    enc = tok(list(prompts), padding=True, return_tensors="pt", **kwargs)
    n = len(prompts)
    image_ids = torch.full((n, num_query_tokens), image_token_id, dtype=torch.long)
    input_ids = torch.cat([image_ids, enc["input_ids"]], dim=1)
    attention_mask = torch.cat([torch.ones_like(image_ids), enc["attention_mask"]], dim=1)
    return input_ids, attention_mask


@torch.no_grad()
def generate_from_features(model, processor, image_features: torch.Tensor, prompts: Sequence[str],
                           decoding: dict) -> list[str]:
    """One answer per prompt, row i on image_features[i]; a preset's `max_prompt_tokens` cuts the prompt as
    LAVIS does."""
    core = blip2_core(model)
    decoding, cap = generate_kwargs(decoding)
    input_ids, attention_mask = tokenize_prompts(processor, prompts, core.config.image_token_id,
                                                 core.config.num_query_tokens, cap)
    device = core.get_input_embeddings().weight.device
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    embeds = core.get_input_embeddings()(input_ids)
    image_mask = (input_ids == core.config.image_token_id).unsqueeze(-1)
    embeds = embeds.masked_scatter(image_mask, image_features.to(embeds.device, embeds.dtype))
    pad = processor.tokenizer.pad_token_id
    if not family_of(core.config).decoder_only:
        # Flan-T5: the encoder reads image and prompt; generate returns the decoder's tokens (its start
        # token, the answer, </s>), as Blip2ForConditionalGeneration.generate does for it
        out = core.language_model.generate(inputs_embeds=embeds, attention_mask=attention_mask, pad_token_id=pad,
                                           **decoding)
        return [t.strip() for t in processor.tokenizer.batch_decode(out, skip_special_tokens=True)]
    out = core.language_model.generate(inputs_embeds=embeds, attention_mask=attention_mask, input_ids=input_ids,
                                       pad_token_id=pad, **decoding)
    new_tokens = out[:, input_ids.shape[1]:]
    return [first_line(t) for t in processor.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


@torch.no_grad()
def generate_batch(model, processor, pixel_values: torch.Tensor, prompts: Sequence[str], decoding: dict,
                   image_index: Sequence[int] | None = None) -> list[str]:
    """Answers for one batch. pixel_values holds the batch's distinct images; prompt i uses
    image image_index[i] (default: image i), so a shared image is encoded once."""
    features = encode_images(model, pixel_values)
    if image_index is not None:
        features = features[torch.as_tensor(list(image_index), dtype=torch.long, device=features.device)]
    return generate_from_features(model, processor, features, prompts, decoding)


def question_token_budget(model, processor, prompt_name: str, decoding: dict) -> int:
    """How many question tokens fit: the language model's positions less the image tokens, the prompt's
    own and the tokens to generate."""
    core = blip2_core(model)
    prompt_tokens = len(processor.tokenizer(format_prompt(prompt_name, ""))["input_ids"])
    if not family_of(core.config).decoder_only:  # Flan-T5: the encoder's side only (the answer is the decoder's)
        positions = getattr(core.config.text_config, "n_positions", None) or 512  # T5's relative positions: 512 trained
        return positions - core.config.num_query_tokens - prompt_tokens
    positions = core.config.text_config.max_position_embeddings
    return positions - core.config.num_query_tokens - prompt_tokens - int(decoding.get("max_new_tokens", 20)) - 1


def fit_question(processor, question: str, budget: int) -> tuple[str, bool]:
    """(the question cut to `budget` tokens, whether it was cut), so the prompt's "Answer:" is never lost."""
    ids = processor.tokenizer(question, add_special_tokens=False)["input_ids"]
    if len(ids) <= budget:
        return question, False
    return processor.tokenizer.decode(ids[:max(budget, 1)]), True


def generate_for_images(model, processor, images: Sequence, prompts: Sequence[str], decoding: dict,
                        batch_size: int = 8) -> list[str]:
    """Convenience for PIL images: batches of `batch_size`, identical image objects encoded once."""
    answers: list[str] = []
    for start in range(0, len(prompts), batch_size):
        imgs, texts = images[start:start + batch_size], prompts[start:start + batch_size]
        distinct = list({id(img): img for img in imgs}.values())  # each image object once, first seen first
        position = {id(img): j for j, img in enumerate(distinct)}
        answers += generate_batch(model, processor, preprocess_images(processor, distinct), texts, decoding,
                                  [position[id(img)] for img in imgs])
    return answers


def caption_and_answer(model, processor, images: Sequence, question: str | None, *, vqa_prompt: str,
                       vqa_decoding: str, caption_prompt: str, caption_decoding: str,
                       batch_size: int = 8) -> list[dict]:
    """Caption every image and, when a question is given, answer it: [{"caption", "answer"}]."""
    captions = generate_for_images(model, processor, images, [format_prompt(caption_prompt)] * len(images),
                                   get_decoding(caption_decoding), batch_size)
    answers = [None] * len(images)
    if question is not None:
        decoding = get_decoding(vqa_decoding)
        budget = question_token_budget(model, processor, vqa_prompt, decoding)
        fitted, cut = fit_question(processor, question, budget)
        if cut:
            print(f"warning: the question is too long for the model and was cut to its first {budget} tokens",
                  file=sys.stderr)
        answers = generate_for_images(model, processor, images, [format_prompt(vqa_prompt, fitted)] * len(images),
                                      decoding, batch_size)
    return [{"caption": c, "answer": a} for c, a in zip(captions, answers)]


def caption_rows(model, processor, paths: Sequence, images: dict, question: str | None, *, model_id: str,
                 adapter: str | None, vqa_prompt: str, vqa_decoding: str, caption_prompt: str,
                 caption_decoding: str, errors: dict | None = None, batch_size: int = 8) -> list[dict]:
    """The caption rows of mini_infer.py, create_baseline.py and blip2_cli.py, one per path: caption, answer
    (when `question` is asked), how both were made, and the path's `errors` text when it failed to load."""
    good = [p for p in paths if p in images]
    outs = dict(zip(good, caption_and_answer(
        model, processor, [images[p] for p in good], question, vqa_prompt=vqa_prompt, vqa_decoding=vqa_decoding,
        caption_prompt=caption_prompt, caption_decoding=caption_decoding, batch_size=batch_size)))
    record = {"model_id": model_id, "adapter": adapter}
    if question is not None:
        record.update(generation_record(vqa_prompt, vqa_decoding))
    record.update(caption_prompt=caption_prompt,
                  caption_decoding=generation_record(caption_prompt, caption_decoding)["decoding"])
    rows = []
    for p in paths:
        out = outs.get(p, {"caption": None, "answer": None})
        row = {"image_path": shown_path(p), "caption": out["caption"]}
        if question is not None:
            row.update(question=question, answer=out["answer"])
        row.update(record)
        if errors is not None:
            row["error"] = shown_path(errors[p]) if p in errors else None
        rows.append(row)
    return rows
