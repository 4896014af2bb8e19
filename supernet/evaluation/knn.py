"""Weighted k-nearest-neighbour classification on frozen features (Wu et al. 2018, as used by DINO).

Each query votes with its k most cosine-similar bank features, weighted by exp(similarity / T);
defaults k = 20, T = 0.07. The bank may arrive in chunks (:func:`knn_predict_chunked`), so raw
pixels of large images never sit in memory as one float matrix.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from supernet.evaluation.data import EvalData, ImageBank

__all__ = ["embed_tensor", "knn_accuracy", "knn_predict", "knn_predict_chunked", "knn_score", "raw_pixel_knn"]


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

    The running top-k over the chunks equals the top-k over the whole bank.
    """
    k = min(k, bank_labels.shape[0])
    device = queries.device  # the queries' device does the work (a GPU's, when the features are there)
    bank_labels = bank_labels.to(device)
    predictions = []
    for start in range(0, queries.shape[0], chunk_size):
        query = F.normalize(queries[start : start + chunk_size].float(), dim=1)
        best = torch.full((query.shape[0], 0), -2.0, device=device)
        best_index = torch.zeros((query.shape[0], 0), dtype=torch.long, device=device)
        offset = 0
        for chunk in bank_chunks():
            similarity = query @ F.normalize(chunk.to(device).float(), dim=1).T
            candidates = torch.cat([best, similarity], dim=1)
            arange = torch.arange(offset, offset + chunk.shape[0], device=device).expand(query.shape[0], -1)
            index = torch.cat([best_index, arange], dim=1)
            best, position = candidates.topk(min(k, candidates.shape[1]), dim=1)
            best_index = index.gather(1, position)
            offset += chunk.shape[0]
        votes = torch.zeros(query.shape[0], num_classes, device=device)
        votes.scatter_add_(1, bank_labels[best_index], (best / temperature).exp())
        predictions.append(votes.argmax(dim=1))
    return torch.cat(predictions)


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
