"""The oracle's finer scores (issue 23), checked by hand on toy banks: known neighbours, known votes,
ties broken the stated way; the logistic-regression probe's log-likelihood; linear CKA; Kendall's tau-b."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from supernet.evaluation.knn import knn_predict, knn_predict_chunked, knn_votes, nearest_neighbours
from supernet.evaluation.linear import fit_linear_head, linear_probe
from supernet.evaluation.ranking import kendall_tau_b
from supernet.evaluation.scores import (
    ImageScores,
    knn_image_scores,
    knn_summary,
    linear_cka,
    probe_image_scores,
    probe_summary,
    vote_log_probabilities,
)


def toy_bank() -> tuple[torch.Tensor, torch.Tensor]:
    """A class-1 image at cos 0.99 to the x axis, two class-0 images at cos 0.5, one class-0 image at cos -1."""
    angle = math.acos(0.99)
    bank = torch.tensor([[math.cos(angle), math.sin(angle)], [0.5, math.sqrt(0.75)], [0.5, -math.sqrt(0.75)],
                         [-1.0, 0.0]])
    return bank, torch.tensor([1, 0, 0, 0])


def test_knn_scores_by_hand_on_a_toy_bank() -> None:
    bank, labels = toy_bank()
    queries = torch.tensor([[3.0, 0.0]] * 3)  # the same query asked with each of three true classes
    truth = torch.tensor([1, 0, 2])  # class 2 has no image in the bank: no votes
    k, temperature, floor = 3, 0.1, 1e-3
    neighbours = nearest_neighbours(lambda: [bank], queries[:1], k=k)
    assert neighbours.index.tolist() == [[0, 1, 2]]  # the opposite image (cos -1) is not among the 3 nearest
    assert neighbours.similarity[0].tolist() == pytest.approx([0.99, 0.5, 0.5], abs=1e-6)
    # votes: class 1 exp(0.99 / 0.1), class 0 2 exp(0.5 / 0.1), class 2 nothing
    votes = {1: math.exp(9.9), 0: 2 * math.exp(5.0), 2: 0.0}
    total = sum(votes.values())
    q = {c: (v / total + floor) / (1 + 3 * floor) for c, v in votes.items()}
    scores = knn_image_scores(bank, labels, queries, truth, num_classes=3, k=k, temperature=temperature, floor=floor)
    assert scores.correct.tolist() == [True, False, False]
    assert scores.probability.tolist() == pytest.approx([q[1], q[0], q[2]], rel=1e-6)
    assert scores.log_likelihood.tolist() == pytest.approx([math.log(q[1]), math.log(q[0]), math.log(floor / 1.003)],
                                                           rel=1e-6)
    assert math.isfinite(float(scores.log_likelihood[2]))  # a class without votes keeps a finite log
    summary = knn_summary(scores)
    assert summary["knn_top1"] == pytest.approx(1 / 3)
    assert summary["knn_loglik"] == pytest.approx((math.log(q[1]) + math.log(q[0]) + math.log(q[2])) / 3, rel=1e-6)
    assert summary["knn_vote"] == pytest.approx((q[1] + q[0] + q[2]) / 3, rel=1e-6)
    # the shares are the votes normalised: relative to the largest, whatever T does to their size
    raw = knn_votes(neighbours, labels, num_classes=3, temperature=temperature)[0]
    assert (raw / raw.sum()).tolist() == pytest.approx([votes[c] / total for c in range(3)], rel=1e-6)


def test_the_log_likelihood_ranks_what_top1_ties() -> None:
    # Two networks that both get the query right: top-1 ties at 1.0, the one whose neighbours agree more
    # has the higher log-likelihood.
    labels = torch.tensor([0, 0, 1])
    confident = torch.tensor([[1.0, 0.0], [0.99, 0.14], [0.0, 1.0]])
    hesitant = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.99, 0.14]])
    query, truth = torch.tensor([[1.0, 0.0]]), torch.tensor([0])
    a = knn_summary(knn_image_scores(confident, labels, query, truth, num_classes=2, k=3, temperature=0.5))
    b = knn_summary(knn_image_scores(hesitant, labels, query, truth, num_classes=2, k=3, temperature=0.5))
    assert a["knn_top1"] == b["knn_top1"] == 1.0
    assert a["knn_loglik"] > b["knn_loglik"] and a["knn_vote"] > b["knn_vote"]


def test_a_tie_for_the_last_neighbour_goes_to_the_lower_bank_index() -> None:
    same = torch.tensor([[1.0, 0.0], [1.0, 0.0], [2.0, 0.0]])  # three images at cos 1 to the query
    query = torch.tensor([[1.0, 0.0]])
    assert nearest_neighbours(lambda: [same], query, k=2).index.tolist() == [[0, 1]]
    assert knn_predict(same, torch.tensor([1, 0, 0]), query, num_classes=2, k=1).tolist() == [1]
    assert knn_predict(same, torch.tensor([0, 1, 1]), query, num_classes=2, k=1).tolist() == [0]
    # the same when the bank arrives in chunks that split the tied images
    chunks = lambda: [same[:1], same[1:2], same[2:]]  # noqa: E731
    assert nearest_neighbours(chunks, query, k=2).index.tolist() == [[0, 1]]
    assert knn_predict_chunked(chunks, torch.tensor([1, 0, 0]), query, num_classes=2, k=1).tolist() == [1]


def test_a_tie_between_classes_goes_to_the_lower_class_index() -> None:
    bank, query = torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([[1.0, 0.0]])
    for labels in ([2, 1], [1, 2]):  # equal votes for classes 1 and 2, in either bank order
        assert knn_predict(bank, torch.tensor(labels), query, num_classes=3, k=2).tolist() == [1]
        scores = knn_image_scores(bank, torch.tensor(labels), query.repeat(2, 1), torch.tensor([1, 2]), num_classes=3, k=2)
        assert scores.correct.tolist() == [True, False]
        assert scores.probability[0] == scores.probability[1]  # same share, only the answer breaks the tie


def test_neighbours_match_a_sort_by_similarity_then_bank_index() -> None:
    # Integer features on a few directions: many exact ties in cosine similarity.
    generator = torch.Generator().manual_seed(0)
    bank = torch.randint(-1, 2, (300, 3), generator=generator).float()
    bank[bank.abs().sum(dim=1) == 0] = 1.0
    queries = torch.randint(-1, 2, (40, 3), generator=generator).float() + 0.0
    queries[queries.abs().sum(dim=1) == 0] = 1.0
    k = 7
    similarity = F.normalize(queries, dim=1) @ F.normalize(bank, dim=1).T
    for chunks in ([bank], list(bank.split(64)), list(bank.split(1))):
        found = nearest_neighbours(lambda chunks=chunks: chunks, queries, k=k)
        for row, index in zip(similarity, found.index):
            expected = sorted(range(len(row)), key=lambda i: (-round(float(row[i]), 5), i))[:k]
            assert sorted(index.tolist()) == sorted(expected)


def test_scores_are_the_same_on_every_call() -> None:
    generator = torch.Generator().manual_seed(1)
    bank, queries = torch.randn(200, 4, generator=generator).round(), torch.randn(50, 4, generator=generator).round()
    labels, truth = torch.randint(0, 5, (200,), generator=generator), torch.randint(0, 5, (50,), generator=generator)
    first = knn_image_scores(bank, labels, queries, truth, num_classes=5, k=10, chunk_size=7)
    again = knn_image_scores(bank, labels, queries, truth, num_classes=5, k=10, chunk_size=50)
    assert torch.equal(first.correct, again.correct) and torch.equal(first.log_likelihood, again.log_likelihood)


def test_vote_floor_keeps_a_distribution() -> None:
    votes = torch.tensor([[5.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    shares = vote_log_probabilities(votes, floor=0.01).exp()
    assert shares.sum(dim=1).tolist() == pytest.approx([1.0, 1.0])
    assert shares[0].tolist() == pytest.approx([1.01 / 1.04, 0.01 / 1.04, 0.01 / 1.04, 0.01 / 1.04])
    assert shares[1].tolist() == pytest.approx([0.25] * 4)


def test_probe_scores_are_its_softmax_on_the_true_class() -> None:
    generator = torch.Generator().manual_seed(2)
    centres = 3.0 * torch.randn(4, 6, generator=generator)
    labels = torch.arange(4).repeat(60)
    features = centres[labels] + torch.randn(240, 6, generator=generator) * 1.5
    train, test = slice(0, 160), slice(160, 240)
    scores = probe_image_scores(features[train], labels[train], features[test], labels[test], num_classes=4, epochs=30)
    head = fit_linear_head(features[train], labels[train], num_classes=4, epochs=30)
    expected = torch.log_softmax(head.logits(features[test]), dim=1)[torch.arange(80), labels[test]]
    assert torch.allclose(scores.log_likelihood, expected)
    assert torch.allclose(scores.probability, expected.exp())
    summary = probe_summary(scores)
    assert summary["probe_top1"] == pytest.approx(linear_probe(features[train], labels[train], features[test],
                                                               labels[test], num_classes=4, epochs=30))
    assert summary["probe_loglik"] == pytest.approx(float(expected.mean()))
    # features that carry nothing about the labels score near chance, and a lower log-likelihood
    noise = torch.randn(240, 6, generator=generator)
    chance = probe_summary(probe_image_scores(noise[train], labels[train], noise[test], labels[test], num_classes=4,
                                              epochs=30))
    assert chance["probe_loglik"] < summary["probe_loglik"] and chance["probe_top1"] < summary["probe_top1"]


def test_image_scores_scatter_back_to_their_rows() -> None:
    a = ImageScores(torch.tensor([True, False]), torch.tensor([0.9, 0.1], dtype=torch.float64),
                    torch.tensor([0.9, 0.1], dtype=torch.float64).log())
    b = ImageScores(torch.tensor([True]), torch.tensor([0.5], dtype=torch.float64),
                    torch.tensor([0.5], dtype=torch.float64).log())
    merged = ImageScores.scatter([(torch.tensor([True, False, True]), a), (torch.tensor([False, True, False]), b)], 3)
    assert merged.correct.tolist() == [True, True, False]
    assert merged.probability.tolist() == pytest.approx([0.9, 0.5, 0.1])
    with pytest.raises(ValueError, match="in no part"):
        ImageScores.scatter([(torch.tensor([True, False, True]), a)], 3)


def test_linear_cka_by_hand_and_its_invariances() -> None:
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    y = torch.tensor([[1.0], [0.0], [-1.0], [0.0]])  # the first column of x alone
    # centred already; X^T X = 2 I, Y^T Y = [[2]], Y^T X = [[2, 0]]: 4 / (2 sqrt(2) * 2)
    assert linear_cka(x, y) == pytest.approx(4 / (2 * math.sqrt(2) * 2))
    generator = torch.Generator().manual_seed(3)
    features = torch.randn(100, 8, generator=generator)
    rotation = torch.linalg.qr(torch.randn(8, 8, generator=generator))[0]
    assert linear_cka(features, 5.0 * features @ rotation + 2.0) == pytest.approx(1.0)
    assert linear_cka(features, torch.randn(100, 8, generator=generator)) < 0.2  # unrelated features
    assert linear_cka(features, torch.ones(100, 3)) == 0.0  # a constant representation carries nothing


def test_kendall_tau_b_matches_scipy_with_ties() -> None:
    stats = pytest.importorskip("scipy.stats")
    generator = torch.Generator().manual_seed(4)
    for _ in range(5):
        x = torch.randint(0, 6, (25,), generator=generator).tolist()
        y = torch.randint(0, 6, (25,), generator=generator).tolist()
        assert kendall_tau_b(x, y) == pytest.approx(stats.kendalltau(x, y).statistic)
    assert kendall_tau_b([1, 2, 3], [3, 2, 1]) == -1.0
    assert math.isnan(kendall_tau_b([1, 1, 1], [1, 2, 3]))  # a score that ties everything orders nothing


def test_features_that_are_not_numbers_never_vote_and_score_nan() -> None:
    bank = torch.tensor([[float("nan"), 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.1]])
    labels = torch.tensor([0, 1, 0, 1])
    queries = torch.tensor([[1.0, 0.0], [float("nan"), 1.0]])
    neighbours = nearest_neighbours(lambda: [bank], queries, k=2)
    assert neighbours.index[0].tolist() == [1, 3]  # the NaN image ranks below every number
    scores = knn_image_scores(bank, labels, queries, torch.tensor([1, 1]), num_classes=2, k=2)
    assert bool(scores.correct[0]) and math.isfinite(float(scores.log_likelihood[0]))
    assert math.isnan(float(scores.log_likelihood[1]))  # a query that is not a number has no likelihood
