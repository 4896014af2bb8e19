"""Weighted kNN (Wu et al. 2018): the vote of each neighbour is exp(cosine / T), summed per class."""

from __future__ import annotations

import math

import pytest
import torch

from supernet.evaluation.knn import knn_accuracy, knn_predict


def test_weighted_vote_matches_a_hand_computed_answer() -> None:
    # Query along x. Neighbours: one class-1 image almost on x (cos 0.99), two class-0 images at 60
    # degrees (cos 0.5 each). An unweighted 3-NN vote says class 0 (2 votes to 1); the weighted vote
    # at T = 0.1 gives class 1 exp(9.9) = 19930 against class 0's 2 * exp(5) = 297.
    angle = math.acos(0.99)
    bank = torch.tensor([[math.cos(angle), math.sin(angle)], [0.5, math.sqrt(0.75)], [0.5, -math.sqrt(0.75)],
                         [-1.0, 0.0]])
    labels = torch.tensor([1, 0, 0, 0])
    query = torch.tensor([[3.0, 0.0]])  # norms do not matter: the similarity is cosine
    assert knn_predict(bank, labels, query, num_classes=2, k=3, temperature=0.1).tolist() == [1]
    # With a very high temperature every weight tends to 1 and the majority of the 3 neighbours wins.
    assert knn_predict(bank, labels, query, num_classes=2, k=3, temperature=1e6).tolist() == [0]
    # k = 4 brings in the opposite point (cos -1): weight exp(-10), which cannot change the answer.
    assert knn_predict(bank, labels, query, num_classes=2, k=4, temperature=0.1).tolist() == [1]


def test_votes_are_exactly_the_weighted_class_sums() -> None:
    generator = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(50, 8, generator=generator), torch.randn(7, 8, generator=generator)
    labels = torch.randint(0, 4, (50,), generator=generator)
    k, temperature = 5, 0.2
    similarity = torch.nn.functional.normalize(queries, dim=1) @ torch.nn.functional.normalize(bank, dim=1).T
    expected = []
    for row in similarity:
        values, index = row.topk(k)
        votes = [sum(math.exp(float(v) / temperature) for v, i in zip(values, index) if labels[i] == c) for c in range(4)]
        expected.append(max(range(4), key=votes.__getitem__))
    assert knn_predict(bank, labels, queries, num_classes=4, k=k, temperature=temperature).tolist() == expected


def test_accuracy_is_the_fraction_of_correct_predictions() -> None:
    bank = torch.eye(3)
    labels = torch.tensor([0, 1, 2])
    queries = torch.tensor([[1.0, 0.1, 0.0], [0.0, 1.0, 0.1], [0.1, 0.0, 1.0], [1.0, 0.0, 0.1]])
    assert knn_accuracy(bank, labels, queries, torch.tensor([0, 1, 2, 2]), num_classes=3, k=1) == pytest.approx(0.75)
