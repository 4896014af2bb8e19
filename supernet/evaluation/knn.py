"""Weighted k-nearest-neighbour classification on frozen features (Wu et al. 2018, as used by DINO).

Each query votes with its k most cosine-similar bank features, weighted by exp(similarity / T);
defaults k = 20, T = 0.07. The bank may arrive in chunks (:func:`knn_predict_chunked`), so raw
pixels of large images never sit in memory as one float matrix.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from supernet.evaluation.data import EvalData, ImageBank

__all__ = ["Neighbours", "embed_tensor", "knn_accuracy", "knn_predict", "knn_predict_chunked", "knn_score", "knn_votes",
           "knn_votes_chunked", "nearest_neighbours", "raw_pixel_knn"]


def knn_predict(
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    queries: torch.Tensor,
    *,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Predicted class (Q,) of each query (Q, D) from a labeled bank (N, D), cosine similarity."""
    return knn_predict_chunked(lambda: [bank], bank_labels, queries, num_classes=num_classes, k=k,
                               temperature=temperature, chunk_size=chunk_size)


def knn_predict_chunked(
    bank_chunks: Callable[[], Iterable[torch.Tensor]],
    bank_labels: torch.Tensor,
    queries: torch.Tensor,
    *,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """:func:`knn_predict` with the bank given as consecutive chunks (B_i, D), re-read per query chunk.

    The running top-k over the chunks equals the top-k over the whole bank. Ties are broken as
    :func:`nearest_neighbours` and :func:`knn_votes` say: the lower bank index, then the lower class.
    """
    votes = knn_votes_chunked(bank_chunks, bank_labels, queries, num_classes=num_classes, k=k, temperature=temperature,
                              chunk_size=chunk_size)
    return torch.cat([chunk.argmax(dim=1) for chunk in votes])  # the first maximum: the lower class wins a tie


def knn_votes_chunked(
    bank_chunks: Callable[[], Iterable[torch.Tensor]],
    bank_labels: torch.Tensor,
    queries: torch.Tensor,
    *,
    num_classes: int,
    k: int,
    temperature: float,
    chunk_size: int,
) -> Iterator[torch.Tensor]:
    """:func:`knn_votes` (q, C) of consecutive chunks of ``chunk_size`` queries, in order."""
    for start in range(0, queries.shape[0], chunk_size):
        neighbours = nearest_neighbours(bank_chunks, queries[start : start + chunk_size], k=k)
        yield knn_votes(neighbours, bank_labels, num_classes=num_classes, temperature=temperature)


@dataclass(frozen=True)
class Neighbours:
    """The k most cosine-similar bank rows of each query: ``similarity`` and ``index``, both (Q, k).

    Within a row the neighbours are in ascending bank index (their order does not change a vote).
    """

    similarity: torch.Tensor
    index: torch.Tensor


def nearest_neighbours(bank_chunks: Callable[[], Iterable[torch.Tensor]], queries: torch.Tensor, *,
                       k: int) -> Neighbours:
    """The ``k`` bank rows (of all chunks, (B_i, D) each, in bank order) most cosine-similar to each query (Q, D).

    Deterministic: where several bank rows tie for the last places, the lower bank index is kept
    (``torch.topk`` leaves that choice to the implementation). Runs on the queries' device.

    >>> bank = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    >>> nearest_neighbours(lambda: [bank], torch.tensor([[1.0, 0.0]]), k=1).index.tolist()
    [[0]]
    """
    device = queries.device
    query = F.normalize(queries.float(), dim=1)
    best = torch.empty((query.shape[0], 0), device=device)
    best_index = torch.empty((query.shape[0], 0), dtype=torch.long, device=device)
    offset = 0
    for chunk in bank_chunks():
        similarity = query @ F.normalize(chunk.to(device).float(), dim=1).T
        index = torch.arange(offset, offset + chunk.shape[0], device=device).expand(query.shape[0], -1)
        # the kept rows come first and have the lower indices: position order is bank order
        best, best_index = _lowest_index_top_k(torch.cat([best, similarity], dim=1),
                                               torch.cat([best_index, index], dim=1), k)
        offset += chunk.shape[0]
    return Neighbours(best, best_index)


def _lowest_index_top_k(values: torch.Tensor, index: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The top ``k`` of each row of ``values`` (R, M), ties at the k-th value broken by position (the first
    wins); both in position order. NaN (features that are not numbers) ranks below every number.

    ``topk`` alone is exact wherever the k-th value beats the next one; only rows with a tie across that
    boundary are resolved by position, so the common case costs one ``topk``.
    """
    k = min(k, values.shape[1])
    if bool(values.isnan().any()):
        values = values.masked_fill(values.isnan(), float("-inf"))
    top, position = values.topk(min(k + 1, values.shape[1]), dim=1)
    position = position[:, :k].sort(dim=1).values
    if top.shape[1] > k:
        tied = (top[:, k - 1] == top[:, k]).nonzero()[:, 0] if k else top.new_zeros(0, dtype=torch.long)
        if tied.numel():
            rows = values[tied]
            kth = top[tied, k - 1 : k]
            above, level = rows > kth, rows == kth
            needed = k - above.sum(dim=1, keepdim=True)  # places left for the values equal to the k-th
            keep = above | (level & (level.cumsum(dim=1) <= needed))
            position[tied] = keep.nonzero()[:, 1].view(tied.numel(), k)  # row-major: ascending positions
    return values.gather(1, position), index.gather(1, position)


def knn_votes(neighbours: Neighbours, bank_labels: torch.Tensor, *, num_classes: int,
              temperature: float = 0.07) -> torch.Tensor:
    """Weighted votes (Q, C): each neighbour adds exp(similarity / T) to its class (Wu et al. 2018).

    Every row is scaled by exp(-max similarity / T), which changes no ratio between votes (nor their
    argmax) and keeps a small T from overflowing. Votes are float64.
    """
    similarity = neighbours.similarity.double()
    votes = torch.zeros(similarity.shape[0], num_classes, dtype=torch.float64, device=similarity.device)
    if similarity.shape[1] == 0:
        return votes
    weights = ((similarity - similarity.max(dim=1, keepdim=True).values) / temperature).exp()
    return votes.scatter_add_(1, bank_labels.to(similarity.device)[neighbours.index], weights)


def knn_accuracy(
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    queries: torch.Tensor,
    query_labels: torch.Tensor,
    *,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
) -> float:
    """Top-1 accuracy in [0, 1] of :func:`knn_predict`."""
    predicted = knn_predict(bank, bank_labels, queries, num_classes=num_classes, k=k, temperature=temperature)
    return float((predicted == query_labels.to(predicted.device)).float().mean())


@torch.no_grad()
def embed_tensor(model: nn.Module, images: torch.Tensor | ImageBank, *, batch_size: int,
                 device: torch.device | str) -> torch.Tensor:
    """Features (N, D) of in-memory images (a float tensor or an :class:`ImageBank`), model in eval mode."""
    model.eval()
    return torch.cat([model(images[s : s + batch_size].to(device)).float().cpu() for s in range(0, len(images), batch_size)])


def knn_score(
    network: nn.Module, data: EvalData, *, k: int = 20, temperature: float = 0.07, batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> float:
    """kNN top-1 in [0, 1] of ``network``'s features: ``data.bank`` votes for ``data.val``."""
    device = torch.device(device)
    bank = embed_tensor(network, data.bank, batch_size=batch_size, device=device)
    val = embed_tensor(network, data.val, batch_size=batch_size, device=device)
    return knn_accuracy(bank, data.bank_labels, val, data.val_labels, num_classes=data.num_classes, k=k,
                        temperature=temperature)


def raw_pixel_knn(data: EvalData, *, k: int = 20, temperature: float = 0.07, chunk_size: int = 256) -> float:
    """kNN top-1 with the flattened, normalised pixels as features: what no network at all achieves.

    A trained encoder that does not beat this has learned nothing a lookup of images would not do.
    """
    def bank_chunks() -> Iterable[torch.Tensor]:
        return (images.flatten(1) for images in data.bank.split(chunk_size))

    predicted = torch.cat([
        knn_predict_chunked(bank_chunks, data.bank_labels, queries.flatten(1), num_classes=data.num_classes, k=k,
                            temperature=temperature, chunk_size=chunk_size)
        for queries in data.val.split(chunk_size)
    ])
    return float((predicted == data.val_labels).float().mean())
