"""Batched caption and VQA generation from the model's public pieces, so an image shared by several
questions of a batch is encoded once; answers equal `generate` run one input at a time (docs/notes.md)."""

import sys
from typing import Sequence

import torch

from .family import family_of
from .images import shown_path
from .modeling import blip2_core
from .prompts import first_line, format_prompt, generation_record, get_decoding


@torch.no_grad()
def generate_batch(model, processor, pixel_values: torch.Tensor, prompts: Sequence[str], decoding: dict,
                   image_index: Sequence[int] | None = None) -> list[str]:
    """Answers for one batch: prompt i on image image_index[i] (default i) of pixel_values, the batch's distinct
    images, so a shared image is encoded once; a preset's `max_prompt_tokens` cuts the prompt as LAVIS does."""
    core, tokenizer = blip2_core(model), processor.tokenizer
    vision = core.vision_model.embeddings.patch_embedding.weight  # pixel values go to its device, in its dtype
    features = core.get_image_features(pixel_values=pixel_values.to(vision.device, vision.dtype),
                                       return_dict=True).pooler_output  # vision + Q-Former + projection
    if image_index is not None:
        features = features[torch.as_tensor(list(image_index), dtype=torch.long, device=features.device)]
    decoding = dict(decoding)
    cap = decoding.pop("max_prompt_tokens", None)  # the rest are generate()'s arguments
    # the processor's layout: image tokens, left padding, prompt
    enc = tokenizer(list(prompts), padding=True, return_tensors="pt",
                    **({"truncation": True, "max_length": cap} if cap else {}))
    image_ids = torch.full((len(prompts), core.config.num_query_tokens), core.config.image_token_id, dtype=torch.long)
    embed = core.get_input_embeddings()
    input_ids = torch.cat([image_ids, enc["input_ids"]], dim=1).to(embed.weight.device)
    attention_mask = torch.cat([torch.ones_like(image_ids), enc["attention_mask"]], dim=1).to(embed.weight.device)
    embeds = embed(input_ids)
    image_mask = (input_ids == core.config.image_token_id).unsqueeze(-1)
    embeds = embeds.masked_scatter(image_mask, features.to(embeds.device, embeds.dtype))
    kwargs = dict(inputs_embeds=embeds, attention_mask=attention_mask, pad_token_id=tokenizer.pad_token_id, **decoding)
    if family_of(core.config).decoder_only:  # OPT continues the prompt: the answer is what follows it
        out = core.language_model.generate(input_ids=input_ids, **kwargs)[:, input_ids.shape[1]:]
    else:  # Flan-T5: the encoder reads image and prompt; generate returns the decoder's tokens (its start
        # token, the answer, </s>), as Blip2ForConditionalGeneration.generate does for it
        out = core.language_model.generate(**kwargs)
    return [first_line(t) for t in tokenizer.batch_decode(out, skip_special_tokens=True)]


def fit_prompts(model, processor, prompt_name: str, decoding: dict,
                questions: Sequence[str]) -> tuple[list[str], list[bool], int]:
    """(prompts, which questions were cut, to how many tokens): a question gets the language model's positions
    less the image tokens, the prompt's own and those to generate, so the prompt's "Answer:" is never lost."""
    core, tokenizer = blip2_core(model), processor.tokenizer
    prompt_tokens = len(tokenizer(format_prompt(prompt_name, ""))["input_ids"])
    if family_of(core.config).decoder_only:
        budget = core.config.text_config.max_position_embeddings - int(decoding.get("max_new_tokens", 20)) - 1
    else:  # Flan-T5: the encoder's side only (the answer is the decoder's); T5's relative positions: 512 trained
        budget = getattr(core.config.text_config, "n_positions", None) or 512
    budget -= core.config.num_query_tokens + prompt_tokens
    prompts, cut = [], []
    for question in questions:
        ids = tokenizer(question, add_special_tokens=False)["input_ids"]
        cut.append(len(ids) > budget)
        prompts.append(format_prompt(prompt_name, tokenizer.decode(ids[:max(budget, 1)]) if cut[-1] else question))
    return prompts, cut, budget


def generate_for_images(model, processor, images: Sequence, prompts: Sequence[str], decoding: dict,
                        batch_size: int = 8) -> list[str]:
    """Convenience for PIL images: batches of `batch_size`, identical image objects encoded once."""
    answers: list[str] = []
    for start in range(0, len(prompts), batch_size):
        imgs, texts = images[start:start + batch_size], prompts[start:start + batch_size]
        distinct = list({id(img): img for img in imgs}.values())  # each image object once, first seen first
        position = {id(img): j for j, img in enumerate(distinct)}
        pixel_values = processor.image_processor(distinct, return_tensors="pt")["pixel_values"]
        answers += generate_batch(model, processor, pixel_values, texts, decoding, [position[id(img)] for img in imgs])
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
        [prompt], [cut], budget = fit_prompts(model, processor, vqa_prompt, decoding, [question])
        if cut:
            print(f"warning: the question is too long for the model and was cut to its first {budget} tokens",
                  file=sys.stderr)
        answers = generate_for_images(model, processor, images, [prompt] * len(images), decoding, batch_size)
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
    asked = {} if question is None else generation_record(vqa_prompt, vqa_decoding)
    record = {"model_id": model_id, "adapter": adapter, **asked, "caption_prompt": caption_prompt,
              "caption_decoding": generation_record(caption_prompt, caption_decoding)["decoding"]}
    rows = []
    for p in paths:
        out = outs.get(p, {"caption": None, "answer": None})
        qa = {} if question is None else {"question": question, "answer": out["answer"]}
        error = {} if errors is None else {"error": shown_path(errors[p]) if p in errors else None}
        rows.append({"image_path": shown_path(p), "caption": out["caption"], **qa, **record, **error})
    return rows
