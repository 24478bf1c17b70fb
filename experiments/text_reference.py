"""sentence-transformers' own throughput on texts bench_text.py hands over (run by it, in the
interpreter that has sentence-transformers, e.g. a separate virtual environment).

  python experiments/text_reference.py --model_dir=DIR --texts=corpora.json --batch_size=64

``corpora.json`` maps a corpus name to its list of texts. Prints one JSON line per corpus:
sentences/s (median of --repeats passes after a warm-up pass), torch's version and threads,
and the embeddings' cosine with ``--compare`` (an .npz of our embeddings per corpus), so
the speed comparison is of the same outputs.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--texts", required=True, help="JSON: {corpus name: [texts]}")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--compare", help=".npz of embeddings per corpus to compare with")
    args = parser.parse_args()

    import sentence_transformers
    import torch

    torch.set_num_threads(args.threads)
    model = sentence_transformers.SentenceTransformer(args.model_dir, device="cpu")
    corpora = json.loads(pathlib.Path(args.texts).read_text())
    ours = np.load(args.compare) if args.compare else None
    for name, texts in corpora.items():

        def run(texts=texts):
            return model.encode(texts, batch_size=args.batch_size, convert_to_numpy=True)

        embeddings = run()  # warm-up
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        row = {
            "corpus": name,
            "sentences": len(texts),
            "reference_sentences_per_s": len(texts) / statistics.median(times),
            "reference": f"sentence-transformers {sentence_transformers.__version__}",
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "batch_size": args.batch_size,
        }
        if ours is not None and name in ours:
            cos = np.sum(np.asarray(ours[name]) * embeddings, axis=1)
            row["min_cosine_with_ours"] = float(cos.min())
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
