"""Build the offline twin (about a minute on 2 CPU cores; the Flan-T5 one about 3):

    python -m twin outputs/tiny-blip2
    python -m twin outputs/tiny-blip2-t5 --family=t5
    python -m twin outputs/tiny-random --pretrain_steps=0   # random weights, to see what the untrained model says
"""

import argparse

from twin import FAMILIES, PRETRAIN_STEPS, build_tiny_blip2


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m twin", usage="%(prog)s OUTDIR [--family=opt|t5] [--pretrain_steps=N]",
                                     description="Build the offline twin of a BLIP-2 checkpoint (docs/twin.md).")
    parser.add_argument("outdir", help="folder to write the twin into (reused when it already holds one)")
    parser.add_argument("--pretrain_steps", type=int, default=PRETRAIN_STEPS,
                        help=f"caption pre-training steps (default {PRETRAIN_STEPS}; 0 = random weights)")
    parser.add_argument("--family", choices=FAMILIES, default="opt",
                        help="opt: the twin of Salesforce/blip2-opt-2.7b (default); t5: of Salesforce/blip2-flan-t5-xl")
    args = parser.parse_args(argv)
    if args.pretrain_steps < 0:
        parser.error(f"--pretrain_steps={args.pretrain_steps}: a whole number of steps, e.g. --pretrain_steps=0")
    build_tiny_blip2(args.outdir, pretrain_steps=args.pretrain_steps, family=args.family)


if __name__ == "__main__":
    main()
