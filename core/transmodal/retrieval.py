"""Cross-modal retrieval metrics: Recall@K and median rank, as reported for CLIP-style models.

Row i of one modality's embeddings and row i of the other's are a pair (one sample seen through two modalities).
Each row of one side is a query; the other side's rows are the gallery it is ranked against, by dot product (the
cosine when the rows are L2-normalised, as aligned embeddings are). Pure functions of tensors, so that they are
tested on constructed embeddings whose ranks are known.

Ties count against the query: the rank of the true partner is the number of gallery rows scoring at least as high
as it (itself included). A model whose embeddings collapsed to one point then ranks every partner last instead of
first, and Recall@K is never flattered by ties.
"""

from __future__ import annotations

import torch

RECALL_AT = (1, 5, 10)


def pair_ranks(queries: torch.Tensor, gallery: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """1-based rank of ``gallery[i]`` among all gallery rows for query ``queries[i]``, (N, D) x (N, D) -> (N,)
    int64; ties count against the query. Computed ``chunk`` queries at a time, so memory stays ``chunk x N``."""
    if queries.shape != gallery.shape or queries.dim() != 2:
        raise ValueError(f"queries and gallery should both be (N, D), got {tuple(queries.shape)} and "
                         f"{tuple(gallery.shape)}")
    queries, gallery = queries.float(), gallery.float()
    ranks = []
    for start in range(0, queries.shape[0], chunk):
        scores = queries[start:start + chunk] @ gallery.T  # (c, N)
        rows = torch.arange(scores.shape[0], device=scores.device)
        partner = scores[rows, rows + start]
        ranks.append((scores >= partner.unsqueeze(1)).sum(dim=1))
    return torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.int64)


def median(values: torch.Tensor) -> float:
    """The median as statistics.median computes it: the mean of the two middle values of an even count
    (torch.median takes the lower one)."""
    ordered = values.double().sort().values
    count = ordered.numel()
    return float((ordered[(count - 1) // 2] + ordered[count // 2]) / 2)


def rank_metrics(ranks: torch.Tensor, ks: tuple[int, ...] = RECALL_AT) -> dict[str, float]:
    """Recall@K (the fraction of queries whose partner ranks K-th or better) for each K, and the median rank."""
    if ranks.numel() == 0:
        raise ValueError("no queries to rank")
    metrics = {f"R@{k}": float((ranks <= k).double().mean()) for k in ks}
    metrics["median_rank"] = median(ranks)
    return metrics


def retrieval_metrics(first: torch.Tensor, second: torch.Tensor, names: tuple[str, str],
                      ks: tuple[int, ...] = RECALL_AT) -> dict[str, object]:
    """Both directions between two modalities' paired embeddings (N, D): ``"a->b"`` ranks b's rows for each query
    of a, ``"b->a"`` the reverse; ``"pool"`` is N, on which Recall@K depends (chance Recall@K is K / N)."""
    a, b = names
    return {
        "pool": int(first.shape[0]),
        f"{a}->{b}": rank_metrics(pair_ranks(first, second), ks),
        f"{b}->{a}": rank_metrics(pair_ranks(second, first), ks),
    }
