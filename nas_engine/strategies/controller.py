"""The NASNet controller: an autoregressive LSTM policy over the decision sequence.

Zoph et al. 2017, sec. 3 and 4 (NASNET.md section 2): a one-layer LSTM with 100 hidden
units, every weight initialised uniform in [-0.1, 0.1], making the 2 x 5 x B decisions in
order (normal cell, then reduction cell; per block: input_a, input_b, op_a, op_b, combine),
each with its own softmax. As in Zoph & Le 2017, the embedding of the choice just made is
the next step's input; the first step reads a learnt start vector.

Heads: one softmax head *per decision* (a (options x hidden) weight and a bias for each of
the 2 x 5 x B decisions), sized by `SearchSpace.decision_sizes()`, so a restricted op menu,
add-only combine or any B just changes the sizes. Likewise one embedding row per option of
every decision. For speed all heads live in one padded (K, max options, hidden) tensor and
the unused padding is masked out of every softmax, so it never gets a gradient.

Optional logit shaping from the ENAS code (Pham et al. 2018), off by default (the NASNet
paper uses neither): `temperature` divides the logits, then `tanh_constant` C maps them
to C * tanh(logits).

Everything runs in float32 on the CPU: the controller is tiny and its log-probs must be
reproducible bit for bit (checkpoint/restore exactness, PPO's ratios). Sampling draws its
randomness only from the `torch.Generator` it is given (inverse-CDF sampling: one uniform
number per decision and architecture), so that generator's state pins all future samples.

Threads: every op here is tiny, so intra-op parallelism only costs. On a busy machine
it costs a lot: with 2 torch threads on an oversubscribed 2-core host one PPO update took
2 s instead of 13 ms. Run the process that hosts the controller (a search command, the
controller worker) with `torch.set_num_threads(1)`; this module does not change that
process-wide setting itself, since a trainer may share the process.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_MASKED = -1e9  # logit of a padding option: exp() underflows to exactly 0


class Controller(nn.Module):
    def __init__(
        self,
        sizes: list[int],
        hidden_size: int = 100,
        init_range: float = 0.1,
        temperature: float | None = None,
        tanh_constant: float | None = None,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        if len(sizes) < 2 or min(sizes) < 1:
            raise ValueError(f"need at least two decisions with at least one option each, got {sizes}")
        self.sizes = list(sizes)
        self.temperature = temperature
        self.tanh_constant = tanh_constant
        k, widest = len(sizes), max(sizes)
        # The choice of decision k (k < K-1) is embedded as the input of step k+1.
        offsets = torch.tensor([0] + sizes[:-2], dtype=torch.long).cumsum(0)
        self.register_buffer("offsets", offsets, persistent=False)
        mask = torch.arange(widest)[None, :] < torch.tensor(sizes)[:, None]
        self.register_buffer("mask", mask, persistent=False)
        self.start = nn.Parameter(torch.empty(hidden_size))
        self.embedding = nn.Embedding(sum(sizes[:-1]), hidden_size)
        self.lstm = nn.LSTM(hidden_size, hidden_size, num_layers=1)
        self.head_weight = nn.Parameter(torch.empty(k, widest, hidden_size))
        self.head_bias = nn.Parameter(torch.empty(k, widest))
        with torch.no_grad():
            for p in self.parameters():
                p.uniform_(-init_range, init_range, generator=generator)

    def _shape(self, logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if self.temperature is not None:
            logits = logits / self.temperature
        if self.tanh_constant is not None:
            logits = self.tanh_constant * torch.tanh(logits)
        return logits if mask is None else logits.masked_fill(~mask, _MASKED)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """n architectures: decisions (n, K) long and their log-probabilities (n,) float32."""
        hidden = self.start.shape[0]
        x = self.start.expand(n, hidden)
        h = c = torch.zeros(n, hidden)
        # The same LSTM as `evaluate` uses, one step at a time (lstm_cell: 5x less overhead
        # than nn.LSTM per call), and each head cut to its real options (no mask needed).
        weights = (self.lstm.weight_ih_l0, self.lstm.weight_hh_l0, self.lstm.bias_ih_l0, self.lstm.bias_hh_l0)
        offsets = self.offsets.tolist()
        choices, log_probs = [], []
        for k, size in enumerate(self.sizes):
            h, c = torch.lstm_cell(x, (h, c), *weights)
            logits = torch.addmm(self.head_bias[k, :size], h, self.head_weight[k, :size].T)
            logp = torch.log_softmax(self._shape(logits, None), dim=-1)
            u = torch.rand(n, 1, generator=generator)
            choice = (logp.exp().cumsum(-1) <= u).sum(-1).clamp_(max=size - 1)
            choices.append(choice)
            log_probs.append(logp.gather(1, choice[:, None]))
            if k + 1 < len(self.sizes):
                x = F.embedding(choice + offsets[k], self.embedding.weight)
        return torch.stack(choices, dim=1), torch.cat(log_probs, dim=1).sum(1)

    def evaluate(self, decisions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Teacher-forced pass over given decisions (B, K).

        Returns the log-probability of each architecture (B,), the entropy of the policy
        along it (B,: sum over decisions of each softmax's exact entropy) and the
        probabilities of every option at every decision (K, B, max options; 0 = padding).
        """
        batch = decisions.shape[0]
        emb = self.embedding(decisions[:, :-1] + self.offsets)  # (B, K-1, H)
        x = torch.cat([self.start.expand(batch, 1, -1), emb], dim=1).transpose(0, 1)  # (K, B, H)
        out, _ = self.lstm(x)
        logits = torch.baddbmm(self.head_bias[:, None, :], out, self.head_weight.transpose(1, 2))  # (K, B, M)
        logp_all = torch.log_softmax(self._shape(logits, self.mask[:, None, :]), dim=-1)
        log_prob = logp_all.gather(2, decisions.T[..., None]).squeeze(-1).sum(0)
        probs = logp_all.exp()
        entropy = -(probs * logp_all).sum(-1).sum(0)
        return log_prob, entropy, probs

    def marginals(self, probs: torch.Tensor) -> list[list[float]]:
        """Ragged per-decision option probabilities averaged over a batch (from `evaluate`)."""
        mean = probs.mean(1)
        return [mean[k, :size].tolist() for k, size in enumerate(self.sizes)]
