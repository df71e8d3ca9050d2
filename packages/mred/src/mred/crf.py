"""A linear-chain CRF over the sentences of one document (forward algorithm and Viterbi).

Shapes: ``S`` sentences (time steps), ``K`` tags. One document at a time, as upstream trains
with batch size 1 (one meta-review per step).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["LinearChainCRF"]


class LinearChainCRF(nn.Module):
    """Score of a tag path ``y`` for emissions ``E`` (S, K)::

    start[y_0] + sum_t E[t, y_t] + sum_t transitions[y_{t-1}, y_t] + end[y_{S-1}]
    """

    def __init__(self, num_tags: int) -> None:
        super().__init__()
        if num_tags < 1:
            raise ValueError(f"num_tags must be >= 1, got {num_tags}")
        self.num_tags = num_tags
        self.start = nn.Parameter(torch.zeros(num_tags))
        self.end = nn.Parameter(torch.zeros(num_tags))
        self.transitions = nn.Parameter(torch.zeros(num_tags, num_tags))  # (K from, K to)
        nn.init.uniform_(self.transitions, -0.1, 0.1)

    def path_score(self, emissions_SK: torch.Tensor, tags_S: torch.Tensor) -> torch.Tensor:
        """The unnormalised score of one tag path (a scalar)."""
        steps = torch.arange(emissions_SK.shape[0], device=emissions_SK.device)
        score = self.start[tags_S[0]] + emissions_SK[steps, tags_S].sum() + self.end[tags_S[-1]]
        if tags_S.shape[0] > 1:
            score = score + self.transitions[tags_S[:-1], tags_S[1:]].sum()
        return score

    def log_partition(self, emissions_SK: torch.Tensor) -> torch.Tensor:
        """log Z = logsumexp over every tag path (forward algorithm), a scalar."""
        alpha_K = self.start + emissions_SK[0]
        for t in range(1, emissions_SK.shape[0]):
            # (K from, 1) + (K from, K to) -> logsumexp over from -> (K to)
            alpha_K = torch.logsumexp(alpha_K[:, None] + self.transitions, dim=0) + emissions_SK[t]
        return torch.logsumexp(alpha_K + self.end, dim=0)

    def neg_log_likelihood(self, emissions_SK: torch.Tensor, tags_S: torch.Tensor) -> torch.Tensor:
        """-log p(tags | emissions) (a scalar)."""
        return self.log_partition(emissions_SK) - self.path_score(emissions_SK, tags_S)

    def neg_log_likelihood_batch(
        self, emissions_BSK: torch.Tensor, tags_BS: torch.Tensor, mask_BS: torch.Tensor
    ) -> torch.Tensor:
        """Sum over a padded batch of -log p(tags | emissions); ``mask_BS`` marks real steps
        (every sequence starts at step 0 and has at least one step)."""
        batch, steps, _ = emissions_BSK.shape
        rows = torch.arange(batch, device=emissions_BSK.device)
        maskf_BS = mask_BS.to(emissions_BSK.dtype)
        lengths_B = mask_BS.sum(dim=1)
        emitted_BS = emissions_BSK.gather(2, tags_BS[:, :, None])[:, :, 0]
        score_B = self.start[tags_BS[:, 0]] + (emitted_BS * maskf_BS).sum(dim=1)
        if steps > 1:
            moves_BS = self.transitions[tags_BS[:, :-1], tags_BS[:, 1:]]  # (B, S-1)
            score_B = score_B + (moves_BS * maskf_BS[:, 1:]).sum(dim=1)
        score_B = score_B + self.end[tags_BS[rows, lengths_B - 1]]
        alpha_BK = self.start + emissions_BSK[:, 0]
        for t in range(1, steps):
            # (B, K from, 1) + (K from, K to) -> logsumexp over from -> (B, K to)
            step_BK = (
                torch.logsumexp(alpha_BK[:, :, None] + self.transitions, dim=1)
                + emissions_BSK[:, t]
            )
            alpha_BK = torch.where(mask_BS[:, t, None], step_BK, alpha_BK)
        log_z_B = torch.logsumexp(alpha_BK + self.end, dim=1)
        return (log_z_B - score_B).sum()

    @torch.no_grad()
    def viterbi(self, emissions_SK: torch.Tensor) -> tuple[list[int], float]:
        """The best tag path and its score."""
        score_K = self.start + emissions_SK[0]
        backpointers = []
        for t in range(1, emissions_SK.shape[0]):
            candidates_KK = score_K[:, None] + self.transitions  # (K from, K to)
            score_K, best_from_K = candidates_KK.max(dim=0)
            score_K = score_K + emissions_SK[t]
            backpointers.append(best_from_K)
        score_K = score_K + self.end
        best_score, last = score_K.max(dim=0)
        path = [int(last)]
        for best_from_K in reversed(backpointers):
            path.append(int(best_from_K[path[-1]]))
        path.reverse()
        return path, float(best_score)
