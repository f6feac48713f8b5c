"""How many bytes each way of reading a VQAv2-like parquet dataset pulls from its files to evaluate a
1,000-question sample of 214,354 (scaled down by SCALE), measured on a local copy.

    python -m bench.hub_read_bytes            # about 3 minutes, ~340 MB of temporary parquet

Ways compared (bytes read from the parquet files = what would cross the network from the hub):
- datasets, data_files={"validation": ...}: downloads every validation file, then writes an Arrow cache
- datasets, streaming=True: reads every row of every file once to find the sample (nothing kept on disk)
- src.hub_data (what dataset=vqav2_hub does): question columns only, then only the row groups holding the
  sample's images
- the same by hub id over HTTP (tests/hub_server.py on 127.0.0.1 as HF_ENDPOINT): bytes of the server's answers
Bytes are counted from /proc/self/io (rchar/wchar: bytes passed through read/write calls) around each way.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path

FULL_ROWS, FULL_SAMPLE = 214_354, 1000
SCALE = 20  # 1/20 of VQAv2 validation
IMAGE_BYTES = 32_000  # lmms-lab/VQAv2 validation: about 6.9 GB of parquet / 214,354 rows
N_FILES = 2


def io_counters() -> tuple[int, int]:
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(fields["rchar"]), int(fields["wchar"])


def measure(fn):
    r0, w0 = io_counters()
    fn()
    r1, w1 = io_counters()
    return r1 - r0, w1 - w0


def write_dataset(folder: Path, n_rows: int, row_group: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(0)
    (folder / "data").mkdir(parents=True)
    answers_type = pa.list_(pa.struct([("answer", pa.string()), ("answer_confidence", pa.string()),
                                       ("answer_id", pa.int64())]))
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    per_file = n_rows // N_FILES
    for k in range(N_FILES):
        ids = range(k * per_file, (k + 1) * per_file)
        table = pa.table({
            "question_type": ["what color is the"] * per_file, "multiple_choice_answer": ["red"] * per_file,
            "answers": pa.array([[{"answer": rng.choice(["red", "blue"]), "answer_confidence": "yes", "answer_id": j + 1}
                                  for j in range(10)] for _ in ids], answers_type),
            "image_id": pa.array([i // 5 for i in ids], pa.int64()), "answer_type": ["other"] * per_file,
            "question_id": pa.array([i * 3 + 1 for i in ids], pa.int64()),
            "question": [f"What color is thing {i}?" for i in ids],
            "image": pa.array([{"bytes": os.urandom(IMAGE_BYTES), "path": None} for _ in ids], image_type)})
        pq.write_table(table, folder / "data" / f"validation-{k:05d}-of-{N_FILES:05d}.parquet",
                       row_group_size=row_group)


def over_http(folder: Path, cache: Path, n_sample: int) -> int:
    """Bytes the hub served (body bytes of every answer) for the sample read by hub id from `folder`."""
    import sys

    from huggingface_hub import constants

    from src.data import load_samples, materialize_images, sample_question_ids, select

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from hub_server import HubServer

    with HubServer({"lmms-lab/VQAv2": folder}) as hub:
        constants.ENDPOINT = hub.url
        samples = load_samples("vqav2_hub", "val", cache_dir=cache)
        materialize_images(select(samples, sample_question_ids(samples, n_sample, seed=42), "bench"), "vqav2_hub",
                           cache)
    return sum(r.body_bytes for r in hub.requests)


def main():
    from src.data import load_samples, materialize_images, sample_question_ids, select

    n_rows, n_sample = FULL_ROWS // SCALE, FULL_SAMPLE // SCALE
    print(f"{n_rows} rows x {IMAGE_BYTES // 1000} kB images in {N_FILES} files; sample of {n_sample} questions "
          f"(= 1,000 of 214,354)")
    for row_group in (100, 1000):
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            write_dataset(tmp / "ds", n_rows, row_group)
            files = sorted(str(p) for p in (tmp / "ds" / "data").glob("*.parquet"))
            total = sum(os.path.getsize(f) for f in files)
            print(f"\nrow groups of {row_group} rows; parquet {total / 1e6:.0f} MB")

            def ours():
                samples = load_samples("vqav2_hub", "val", hf_dataset=str(tmp / "ds"), cache_dir=tmp / "out")
                ids = sample_question_ids(samples, n_sample, seed=42)
                materialize_images(select(samples, ids, "bench"), "vqav2_hub", tmp / "out")

            def data_files():
                from datasets import load_dataset

                ds = load_dataset("parquet", data_files={"validation": files}, split="validation",
                                  cache_dir=str(tmp / "hf_cache"))
                ids = set(random.Random(42).sample(list(ds["question_id"]), n_sample))
                picked = ds.filter(lambda q: q in ids, input_columns="question_id")
                [row["image"] for row in picked]

            def streaming():
                from datasets import load_dataset

                ds = load_dataset("parquet", data_files={"validation": files}, split="validation", streaming=True)
                ids = set(random.Random(42).sample(range(n_rows), n_sample))
                [row["image"] for i, row in enumerate(ds) if i in ids]

            for name, fn in (("datasets data_files", data_files), ("datasets streaming", streaming),
                             ("src.hub_data (vqav2_hub)", ours)):
                read, written = measure(fn)
                print(f"  {name:<26} read {read / 1e6:8.1f} MB ({100 * read / total:5.1f}% of the parquet)   "
                      f"written {written / 1e6:8.1f} MB")
            served = over_http(tmp / "ds", tmp / "http", n_sample)
            print(f"  {'the same by hub id (HTTP)':<26} sent {served / 1e6:8.1f} MB ({100 * served / total:5.1f}% of "
                  "the parquet)")
            shutil.rmtree(tmp / "hf_cache", ignore_errors=True)


if __name__ == "__main__":
    main()
