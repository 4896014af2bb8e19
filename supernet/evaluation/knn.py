"""Weighted k-nearest-neighbour classification on frozen features (Wu et al. 2018, as used by DINO).

Each query votes with its k most cosine-similar bank features, weighted by exp(similarity / T);
defaults k = 20, T = 0.07.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from supernet.evaluation.data import EvalData


@torch.no_grad()
def embed(model: nn.Module, batches: Iterable, *, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Features (N, D) and labels (N,) of every ``(images, labels)`` batch, model in eval mode."""
    model.eval()
    features, labels = [], []
    for images, targets in batches:
        features.append(model(images.to(device, non_blocking=True)).float().cpu())
        labels.append(torch.as_tensor(targets))
    return torch.cat(features), torch.cat(labels)


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
    bank = F.normalize(bank.float(), dim=1)
    k = min(k, bank.shape[0])
    predictions = []
    for start in range(0, queries.shape[0], chunk_size):
        query = F.normalize(queries[start : start + chunk_size].float(), dim=1)
        similarity, index = (query @ bank.T).topk(k, dim=1)  # (q, k)
        weights = (similarity / temperature).exp()
        votes = torch.zeros(query.shape[0], num_classes)
        votes.scatter_add_(1, bank_labels[index], weights)
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
    return float((predicted == query_labels).float().mean())


@torch.no_grad()
def embed_tensor(model: nn.Module, images: torch.Tensor, *, batch_size: int, device: torch.device) -> torch.Tensor:
    """Features (N, D) of an in-memory image tensor, model in eval mode."""
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
