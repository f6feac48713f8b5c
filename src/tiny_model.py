"""Build a tiny, randomly initialised BLIP-2 (OPT) with its own tokenizer and processor.

    python -m src.tiny_model outputs/tiny-blip2

The result is saved with `save_pretrained` and loads through exactly the same
`load_blip2(model_id=...)` path as `Salesforce/blip2-opt-2.7b`, so the tests and the
offline quick start run every script end to end without downloading anything. It knows
nothing (random weights); it exists to exercise the code, and it can learn easy-VQA.
Deterministic: the same command builds byte-identical weights and tokenizer.
"""

from __future__ import annotations

import sys
from pathlib import Path

SEED = 1234
NUM_QUERY_TOKENS = 8
IMAGE_SIZE = 64
VOCAB_SIZE = 640  # byte-level BPE: 256 bytes + merges + special tokens
IMAGE_TOKEN = "<image>"

# Text the tokenizer is trained on: the prompt words, VQA-style questions and answers,
# easy-VQA's vocabulary and the course set. Fixed, so the tokenizer is deterministic.
_CORPUS = """
Question: Answer: what is in the image? what is the color of the shape? what color is the shape?
what shape is in the image? what shape does the image contain? is there a circle in the image?
is there a rectangle? is there a triangle? is there not a circle? does the image contain a triangle?
is there a blue shape? is there a red shape in the image? is no green shape present?
is a gray shape present? is there a yellow shape? is there a teal shape? is there a brown shape?
what is the shape? what is the color of the rectangle? what color is the triangle? what color is the circle?
circle rectangle triangle red green blue black gray teal brown yellow yes no
how many people are there? how many cats? what is the man holding? is it sunny? what sport is this?
a photo of a cat on a couch. an astronaut in a space suit. a cup of coffee on a table. a rocket on a launch pad.
a man with a camera. coins on a table. a motorcycle parked on the street. the moon in the sky. a red fox in the snow.
one two three four five six seven eight nine ten zero none 0 1 2 3 4 5 6 7 8 9 10
the a an of in on at with and or is are was were this that there what which who where when why how
white orange pink purple silver gold dark light small large big round square left right top bottom
"""


def _train_tokenizer():
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>"],  # OPT's ids: pad=1, bos=eos=2
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = [line.strip() for line in _CORPUS.strip().splitlines() if line.strip()]
    tok.train_from_iterator(lines * 4, trainer=trainer)
    tok.add_special_tokens([AddedToken(IMAGE_TOKEN, normalized=False, special=True)])
    bos = tok.token_to_id("</s>")
    # OPT prepends </s> (its BOS) to every text
    tok.post_processor = processors.TemplateProcessing(single="</s> $A", pair="</s> $A </s> $B", special_tokens=[("</s>", bos)])
    return tok


def build_tiny_blip2(outdir: str | Path) -> Path:
    import torch
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        BlipImageProcessor,
        GPT2TokenizerFast,
    )

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    raw = _train_tokenizer()
    tokenizer = GPT2TokenizerFast(
        tokenizer_object=raw,
        bos_token="</s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=256 - NUM_QUERY_TOKENS,
    )
    tokenizer.padding_side = "left"
    image_token_index = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    vocab = len(tokenizer)

    hidden = 64
    config = Blip2Config(
        vision_config=dict(
            hidden_size=hidden, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            image_size=IMAGE_SIZE, patch_size=8, qkv_bias=True,
            initializer_range=0.02,  # the vision config's default (1e-10) would make every image look alike
        ),
        qformer_config=dict(
            hidden_size=hidden, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            encoder_hidden_size=hidden, cross_attention_frequency=1, vocab_size=vocab, max_position_embeddings=64,
            initializer_range=0.2,  # large enough that different images give different query outputs
        ),
        text_config=dict(
            model_type="opt", vocab_size=vocab, hidden_size=hidden, word_embed_proj_dim=hidden, ffn_dim=128,
            num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=256,
            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            tie_word_embeddings=True,
            init_std=0.1,  # a sharper random language model: its continuations depend on the image
        ),
        num_query_tokens=NUM_QUERY_TOKENS,
        image_token_index=image_token_index,
    )
    torch.manual_seed(SEED)
    model = Blip2ForConditionalGeneration(config)
    with torch.no_grad():
        # HF initialises query_tokens to zeros; the pretrained model's are not, and all-equal
        # queries would make every image look the same to the language model.
        model.query_tokens.normal_(0.0, 0.5)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(outdir)

    image_processor = BlipImageProcessor(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
        do_convert_rgb=True,
    )
    processor = Blip2Processor(image_processor=image_processor, tokenizer=tokenizer, num_query_tokens=NUM_QUERY_TOKENS)
    processor.save_pretrained(outdir)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"tiny BLIP-2 with {n_params:,} parameters, vocab {vocab}, saved to {outdir}")
    return outdir


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m src.tiny_model OUTDIR", file=sys.stderr)
        sys.exit(2)
    build_tiny_blip2(sys.argv[1])
