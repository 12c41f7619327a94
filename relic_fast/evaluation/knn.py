"""The kNN monitor: classify features by a temperature-weighted vote of their nearest neighbours.

The InstDisc / DINO protocol: cosine similarity between L2-normalized features, the k most similar
training samples vote for their class with weight exp(sim / T), the class with the largest total
wins. It needs no training, so it is the cheap signal during pretraining that the encoder learns.
Test rows are processed in chunks so memory stays at chunk x num_train similarities.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def knn_classify(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                 *, k: int = 20, temperature: float = 0.07, num_classes: int,
                 chunk_size: int = 1024) -> torch.Tensor:
    """Predicted labels (int64, shape (num_test,)) of `test_features` by weighted kNN over the train set.

    Features are L2-normalized here (cosine similarity); `k` is capped at the train set's size.
    Runs on whatever device the inputs live on.
    """
    if train_features.shape[0] != train_labels.shape[0]:
        raise ValueError(f"{train_features.shape[0]} train features but {train_labels.shape[0]} labels")
    if train_features.shape[0] == 0:
        raise ValueError("kNN needs at least one training sample")
    train_n = F.normalize(train_features.float(), dim=1)
    test_n = F.normalize(test_features.float(), dim=1)
    labels = train_labels.to(train_n.device).long()
    k = min(k, train_n.shape[0])
    predictions = []
    for start in range(0, test_n.shape[0], chunk_size):
        similarity = test_n[start:start + chunk_size] @ train_n.T        # (chunk, num_train)
        top_sim, top_idx = similarity.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        votes = torch.zeros(similarity.shape[0], num_classes, device=similarity.device)
        votes.scatter_add_(1, labels[top_idx], weights)
        predictions.append(votes.argmax(dim=1))
    if not predictions:
        return torch.zeros(0, dtype=torch.long, device=test_n.device)
    return torch.cat(predictions)


def knn_accuracy(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                 test_labels: torch.Tensor, *, k: int = 20, temperature: float = 0.07, num_classes: int,
                 chunk_size: int = 1024) -> float:
    """Top-1 accuracy (percent) of `knn_classify` on the labelled test features."""
    predicted = knn_classify(train_features, train_labels, test_features, k=k, temperature=temperature,
                             num_classes=num_classes, chunk_size=chunk_size)
    if predicted.numel() == 0:
        return float("nan")
    return 100.0 * (predicted.cpu() == test_labels.cpu().long()).float().mean().item()


def knn_neighbours(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor, *,
                   k: int, chunk_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """(similarities, labels) of each test row's k most similar train rows, shaped (num_test, k), best first;
    rows past the train set's size hold similarity -inf. One rank's share of a sharded kNN: the k best of
    every rank's k best are the k best overall (`knn_vote` merges them)."""
    train_n = F.normalize(train_features.float(), dim=1)
    test_n = F.normalize(test_features.float(), dim=1)
    labels = train_labels.to(train_n.device).long()
    similarities = torch.full((test_n.shape[0], k), float("-inf"), device=test_n.device)
    neighbour_labels = torch.zeros((test_n.shape[0], k), dtype=torch.long, device=test_n.device)
    found = min(k, train_n.shape[0])
    for start in range(0, test_n.shape[0], chunk_size) if found else ():
        top_sim, top_idx = (test_n[start:start + chunk_size] @ train_n.T).topk(found, dim=1)
        similarities[start:start + chunk_size, :found] = top_sim
        neighbour_labels[start:start + chunk_size, :found] = labels[top_idx]
    return similarities, neighbour_labels


def knn_vote(similarities: torch.Tensor, labels: torch.Tensor, *, k: int, temperature: float,
             num_classes: int) -> torch.Tensor:
    """Predicted labels from candidate neighbours (num_test, C) of any number of shards: the k most similar
    vote with weight exp(sim / T), as `knn_classify` does over one set."""
    top_sim, top_idx = similarities.topk(min(k, similarities.shape[1]), dim=1)
    weights = (top_sim / temperature).exp()  # exp(-inf) = 0: a missing neighbour has no vote
    votes = torch.zeros(similarities.shape[0], num_classes, device=similarities.device)
    votes.scatter_add_(1, labels.gather(1, top_idx), weights)
    return votes.argmax(dim=1)
