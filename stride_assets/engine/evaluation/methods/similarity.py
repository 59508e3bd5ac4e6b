"""Similarity baselines: representation cosine (RepSim) and TF-IDF cosine on texts.

Neither looks at the loss; "more similar" is read as "training on it lowers the query's loss",
which is the sign the harness expects (positive = helpful).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from stride_assets.engine.backbone import Batch
from stride_assets.engine.errors import StrideConfigError
from stride_assets.engine.evaluation.methods.base import Clock, MethodResult, chunks, evaluating
from stride_assets.engine.evaluation.task import Task, Trained

TFIDF_ON = ("words", "token_ids")


def _features(task: Task, model: torch.nn.Module, batch: Batch, chunk_size: int) -> torch.Tensor:
    """The task's representation (N, D) of a batch, computed in chunks (flattened per example)."""
    with evaluating(model), torch.no_grad():
        parts = [task.features(model, part) for part in chunks(batch, chunk_size)]
    return torch.cat([p.reshape(p.shape[0], -1) for p in parts]).double()


def _cosine(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    A = A / A.norm(dim=1, keepdim=True).clamp_min(1e-12)
    B = B / B.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return A @ B.T


def repsim(task: Task, trained: Trained, split: str, chunk_size: int = 256) -> MethodResult:
    """score[q, i] = cos(features(q), features(i)) with the task's representation (``task.features``)."""
    clock = Clock()
    with clock("one_time"):
        F_train = _features(task, trained.model, task.train_batch(None), chunk_size)
    with clock("per_query"):
        scores = _cosine(_features(task, trained.model, task.query_batch(split), chunk_size), F_train)
    return clock.result(scores, {"chunk_size": chunk_size})


def _documents(task: Task, split: str | None, on: str) -> list[str]:
    """Texts of a split (None = training set): words as they are, or token ids as space-separated numbers."""
    if on == "words":
        texts = task.texts(split)
        if texts is None:
            raise StrideConfigError(f"task {task.name!r} has no texts; tfidf does not apply")
        return list(texts)
    token_ids = getattr(task, "token_ids", None)
    if token_ids is None:
        raise StrideConfigError(f"task {task.name!r} exposes no token_ids(split); use tfidf on='words'")
    return [" ".join(str(int(t)) for t in row) for row in token_ids(split)]


def tfidf(task: Task, trained: Trained, split: str, on: str = "words", sublinear_tf: bool = False,
          min_df: int = 1) -> MethodResult:
    """score[q, i] = cosine of TF-IDF vectors (fitted on the training texts) of query q and example i.

    ``on="words"``: scikit-learn's default word tokenizer (lowercased words of 2+ characters);
    ``on="token_ids"``: every token id of ``task.token_ids(split)`` is a term.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer

    if on not in TFIDF_ON:
        raise StrideConfigError(f"tfidf on={on!r}: expected one of {TFIDF_ON}")
    settings: dict[str, Any] = {"on": on, "sublinear_tf": sublinear_tf, "min_df": min_df}
    clock = Clock()
    with clock("one_time"):
        extra = {"token_pattern": r"\S+", "lowercase": False} if on == "token_ids" else {}
        vectorizer = TfidfVectorizer(sublinear_tf=sublinear_tf, min_df=min_df, **extra)
        X_train = vectorizer.fit_transform(_documents(task, None, on))  # rows are l2-normalised
    with clock("per_query"):
        X_query = vectorizer.transform(_documents(task, split, on))
        scores = np.asarray((X_query @ X_train.T).todense())
    return clock.result(scores, settings, vocabulary=len(vectorizer.vocabulary_))
