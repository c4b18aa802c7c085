"""Quality evaluators: per-example values for each metric, so drops get paired bootstrap intervals.

Reference-based metrics (fidelity, KL, top-1 agreement, prediction agreement) compare a candidate
with the uncompressed baseline; for the baseline itself they take their ideal value.
"""

from __future__ import annotations

import numpy as np

from optimizer import tasks
from optimizer.data import Dataset
from optimizer.errors import UserError
from optimizer.measure.stats import MetricValues
from optimizer.metrics import METRICS
from optimizer.runtimes import Candidate


def retrieval_values(
    queries: np.ndarray, docs: np.ndarray, queries_2: np.ndarray | None = None, both: bool = False
) -> dict[str, np.ndarray]:
    """Query i's relevant document is docs[i]; cosine ranking over all documents.

    Returns per-example reciprocal rank, hit@1 and nDCG@10 (one relevant document, so IDCG = 1). With a second
    query per document (`queries_2`) and/or `both` directions (document i retrieving query i among all queries,
    as image-text retrieval reports both), each example's figure is the mean over its retrievals: one example
    still counts once, so the paired bootstrap over examples keeps its coverage, and the figures of one
    example's retrievals are noisy apart, so its interval narrows (about 1.5x on stdlib-docs with both)."""
    views = [(queries, docs)] + ([(queries_2, docs)] if queries_2 is not None else [])
    if both:
        views += [(d, q) for q, d in views]
    per_view = [_ranked(q, d) for q, d in views]
    return {k: np.mean([v[k] for v in per_view], axis=0) for k in per_view[0]}


def pairs_retrieval(emb: np.ndarray, data: Dataset, both: bool) -> dict[str, np.ndarray]:
    """retrieval_values of a pairs set from the embeddings of its `all_texts()`, in that order."""
    n = len(data)
    second = emb[2 * n :] if data.queries_2 else None
    return retrieval_values(emb[:n], emb[n : 2 * n], second, both)


def _ranked(queries: np.ndarray, docs: np.ndarray) -> dict[str, np.ndarray]:
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True).clip(1e-12)
    d = docs / np.linalg.norm(docs, axis=1, keepdims=True).clip(1e-12)
    sims = q @ d.T
    own = np.diag(sims)
    # rank = documents scoring strictly higher than the relevant one, plus half of the ties (fair to ties)
    higher = (sims > own[:, None]).sum(axis=1)
    ties = (sims == own[:, None]).sum(axis=1) - 1
    rank = higher + ties / 2.0
    return {
        "mrr": 1.0 / (rank + 1.0),
        "recall@1": np.where(higher == 0, 1.0 / (ties + 1.0), 0.0),
        "ndcg@10": np.where(rank < 10, 1.0 / np.log2(rank + 2.0), 0.0),
    }


def _values(name: str, per_example: np.ndarray) -> MetricValues:
    m = METRICS[name]
    return MetricValues(name, per_example, m.aggregate, m.higher_is_better)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # float64: a small change of an embedding moves its cosine by about its square, below float32's resolution
    a, b = a.astype(np.float64), b.astype(np.float64)
    na = np.linalg.norm(a, axis=1).clip(1e-12)
    nb = np.linalg.norm(b, axis=1).clip(1e-12)
    return (a * b).sum(axis=1) / (na * nb)


def check_data(metrics: list[str], data: Dataset) -> None:
    for m in metrics:
        need = METRICS[m].needs
        if need and data.kind != need:
            raise UserError(
                f"metric {m!r} needs {need} eval data, but data.eval gives {data.kind}",
                f"give {need} data (set data.eval.kind) or drop {m!r} from quality.metrics",
            )


class QualityEvaluator:
    """Evaluates candidates on one eval set; caches the reference's outputs (embeddings, predictions)."""

    def __init__(self, task: str, data: Dataset, metrics: list[str], batch_size: int, both_directions: bool = False) -> None:
        check_data(metrics, data)
        self.task, self.data, self.metrics, self.batch_size = task, data, metrics, batch_size
        self.both_directions = both_directions  # retrieval pairs: documents retrieve their queries too
        self.sort = True  # length-sorted batches; False: the data's own order, as serving batches requests
        self._reference_outputs: dict[int, np.ndarray] = {}

    def _outputs(self, cand: Candidate) -> np.ndarray:
        if self.task == "embedding":
            return tasks.embed(cand, tasks.prompted(cand, self.data).all_texts(), self.batch_size, self.sort)
        return tasks.classify(cand, self.data.texts, self.batch_size, self.sort)

    def _reference(self, reference: Candidate) -> np.ndarray:
        if id(reference) not in self._reference_outputs:
            self._reference_outputs[id(reference)] = self._outputs(reference)
        return self._reference_outputs[id(reference)]

    def evaluate(self, cand: Candidate, reference: Candidate | None = None) -> dict[str, MetricValues]:
        """reference=None means `cand` is the baseline."""
        fn = {"embedding": self._embedding, "causal-lm": self._causal_lm, "classification": self._classification}
        values = fn[self.task](cand, reference)
        for name, mv in values.items():
            if not np.isfinite(mv.values).all():
                raise FloatingPointError(f"metric {name} produced NaN or infinite values: the model's outputs are broken")
        return values

    def _embedding(self, cand: Candidate, reference: Candidate | None) -> dict[str, MetricValues]:
        emb = self._reference(cand) if reference is None else self._outputs(cand)
        n = len(self.data)
        out: dict[str, MetricValues] = {}
        if self.data.kind == "pairs":
            for name, v in pairs_retrieval(emb, self.data, self.both_directions).items():
                if name in self.metrics:
                    out[name] = _values(name, v)
        if "spearman" in self.metrics:
            pred = cosine_rows(emb[:n], emb[n : 2 * n])
            out["spearman"] = _values("spearman", np.stack([pred, np.asarray(self.data.scores)], 1))
        if "fidelity" in self.metrics:
            fid = np.ones(len(emb)) if reference is None else cosine_rows(emb, self._reference(reference))
            out["fidelity"] = _values("fidelity", fid)
        return out

    def _causal_lm(self, cand: Candidate, reference: Candidate | None) -> dict[str, MetricValues]:
        s = tasks.lm_stats(cand, self.data.texts, self.batch_size, reference, self.sort)
        if s.tokens.sum() == 0:
            raise UserError("the eval texts give no predicted tokens (each needs at least two tokens)", "give longer eval texts")
        if reference is None:
            s.agree = s.tokens.copy()  # the baseline agrees with itself on every token, KL 0
        out = {
            "perplexity": _values("perplexity", np.stack([s.nll, s.tokens], 1)),
            "kl": _values("kl", np.stack([s.kl, s.tokens], 1)),
            "top1-agreement": _values("top1-agreement", np.stack([s.agree, s.tokens], 1)),
        }
        return {k: v for k, v in out.items() if k in self.metrics}

    def _classification(self, cand: Candidate, reference: Candidate | None) -> dict[str, MetricValues]:
        logits = self._reference(cand) if reference is None else self._outputs(cand)
        pred = logits.argmax(1)
        labels = self._label_ids(cand)
        ref_pred = pred if reference is None else self._reference(reference).argmax(1)
        out = {
            "accuracy": _values("accuracy", (pred == labels).astype(float)),
            "f1": _values("f1", np.stack([pred, labels], 1).astype(float)),
            "agreement": _values("agreement", (pred == ref_pred).astype(float)),
        }
        return {k: v for k, v in out.items() if k in self.metrics}

    def _label_ids(self, cand: Candidate) -> np.ndarray:
        label2id = getattr(getattr(getattr(cand, "module", None), "config", None), "label2id", None) or {}
        out = []
        for lab in self.data.labels or []:
            if isinstance(lab, (int, np.integer)) or (isinstance(lab, str) and lab.isdigit()):
                out.append(int(lab))
            elif lab in label2id:
                out.append(int(label2id[lab]))
            else:
                raise UserError(
                    f"label {lab!r} is not one of the model's labels ({', '.join(map(str, label2id))})",
                    "use the model's label names or integer class ids in the eval data",
                )
        return np.asarray(out)
