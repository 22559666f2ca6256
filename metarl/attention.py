"""A causal self-attention memory core: the trial's past steps kept as keys and values, read by attention.

An alternative to RL²'s GRU (``agents/rl2.py``, ``core="attention"``) for tasks whose memory is a table:
on the RL² tabular MDPs a good strategy keeps the mean reward of every (state, action) pair
(``benchmarks/tabular_baselines.py``), which a GRU has to squeeze into one vector and, measured, does not
learn (``benchmarks/rl2_tabular_imitation.py``), while attention can look the pairs up. Transformer memories
for meta-RL: Mishra et al. (2018), "A Simple Neural Attentive Meta-Learner" (SNAIL; causal convolutions and
attention over the trial); Melo (2022), "Transformers are Meta-Reinforcement Learners" (TrMRL).

Per step ``t`` of a trial, with ``x_t`` the trial input ``[s_t, a_{t-1}, r_{t-1}, d_{t-1}]`` (:mod:`metarl.trials`)::

    e_t   = W_e [x_t, x_{t-1}] + b_e                                  (token shift, x_{-1} = 0)
    for each of L pre-norm blocks:
        q_t, k_t, v_t = split(W_qkv LN(e_t))                          (H heads of width d / H)
        o_t = sum_{j in C_t} softmax_j(q_t . k_j / sqrt(d / H)) v_j,  C_t = {j : t - W <= j <= t}
        e_t = e_t + W_o o_t;      e_t = e_t + MLP(LN(e_t))            (MLP: d -> 4d -> d, GELU)
    out_t = LN(e_t)

Why these choices:

- **Token shift.** ``x_t`` holds the reward of the previous step but ``s_{t-1}`` sits in the previous
  token; ``e_t`` reads both, so every token is a whole transition ``(s_{t-1}, a_{t-1}, r_{t-1})`` plus the
  current state, and one attention layer can key past rewards by (state, action) and query with the
  current state. There is no positional encoding: attention over a trial's past is then a weighted
  average over a *set* of transitions (counts and means are what a table of rewards needs); order within
  the trial is visible through the token shift and the done flags.
- **Context window** ``W`` (``context``): in each layer a step attends to itself and the ``W`` steps before
  it (through the layers below and the token shift, a step's output can depend on up to ``L W + 1`` steps
  back). With ``W`` at least the trial's length nothing is forgotten within a trial; a longer trial (e.g.
  evaluation with more episodes than training) slides the window.
- **Flat state** (:class:`metarl.recurrent.MemoryCore`): ``[x_{t-1}, valid (W), K_1, V_1, ..., K_L, V_L]`` with
  each cache ``W x d``: the previous input, which of the ``W`` cache slots hold a step of this trial, and
  every layer's keys and values of the last ``W`` steps; all zeros clears the memory (no slot valid).
  ``step`` appends one step to the cache; ``unroll`` runs a whole sequence in parallel from a stored state
  with the causal window mask, and equals ``T`` calls of ``step`` (tested), so the recurrent PPO update
  reproduces the rollout.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def windowed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """``o_i = sum_j softmax_j(q_i . k_j / sqrt(D) | allowed_ij) v_j``: q ``[B, H, T, D]``, k and v ``[B, H, S, D]``,
    ``allowed`` (bool) ``[B, 1, T, S]``; every query must be allowed at least one key."""
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), v)


class AttentionBlock(nn.Module):
    """One pre-norm transformer block whose attention also reads cached keys and values (module docstring)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, d] -> [B, H, T, d / H]``."""
        b, t, d = x.shape
        return x.reshape(b, t, self.heads, d // self.heads).transpose(1, 2)

    def forward(self, e: torch.Tensor, cache_k: torch.Tensor, cache_v: torch.Tensor,
                allowed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``e [B, T, d]`` after the cache ``[B, W, d]``; returns the new ``e`` and the keys and values of the
        cache followed by the ``T`` new steps (``[B, W + T, d]``)."""
        q, k, v = self.qkv(self.norm1(e)).chunk(3, dim=-1)
        keys, values = torch.cat([cache_k, k], dim=1), torch.cat([cache_v, v], dim=1)
        o = windowed_attention(self.split_heads(q), self.split_heads(keys), self.split_heads(values), allowed)
        e = e + self.proj(o.transpose(1, 2).reshape(e.shape))
        return e + self.mlp(self.norm2(e)), keys, values


class AttentionCore(nn.Module):
    """Causal self-attention over the trial's last ``context`` steps (module docstring), a
    :class:`metarl.recurrent.MemoryCore`: state ``[B, D_in + W + 2 L W d]``, output ``[B, d]``.

    The state is batch-first, ``[x_{t-1} | valid | K_1 | V_1 | ... | K_L | V_L]`` with each cache ``[W, d]``
    row-major, so reading a layer's cache is a view and a step writes the new state with one copy (the
    rollout steps it ~100 times per trial).
    """

    def __init__(self, input_size: int, width: int, layers: int, heads: int, context: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"the attention width ({width}) must be a multiple of the number of heads ({heads}); "
                             "choose hidden_size and attention_heads accordingly")
        self.input_size, self.width, self.context = input_size, width, context
        self.embed = nn.Linear(2 * input_size, width)
        self.blocks = nn.ModuleList(AttentionBlock(width, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.state_size = input_size + context + 2 * layers * context * width
        self.output_size = width

    def initial_state(self, batch: int, device: torch.device | str) -> torch.Tensor:
        return torch.zeros(batch, self.state_size, device=device, dtype=self.embed.weight.dtype)

    def unpack(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``state [B, S]`` -> previous input ``[B, D_in]``, valid slots ``[B, W]`` (bool) and the caches
        ``[B, L, 2, W, d]`` (keys, values), views of ``state``."""
        b, d_in, w = state.shape[0], self.input_size, self.context
        prev, valid, caches = state.split([d_in, w, self.state_size - d_in - w], dim=-1)
        return prev, valid > 0.5, caches.reshape(b, len(self.blocks), 2, w, self.width)

    def unroll(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """All ``T`` steps of ``x [T, B, D_in]`` at once from ``state``: outputs ``[T, B, d]`` and the final state."""
        t, b, w = x.shape[0], x.shape[1], self.context
        prev, valid, caches = self.unpack(state)
        xb = x.transpose(0, 1)  # [B, T, D_in]
        e = self.embed(torch.cat([xb, torch.cat([prev[:, None], xb[:, :-1]], dim=1)], dim=-1))
        # Key j (0..W+T-1) is step j - W relative to the first new step; query i sees keys i - W ... i that hold
        # steps of this trial.
        rows = torch.arange(t, device=x.device)[:, None]
        pos = torch.arange(w + t, device=x.device)[None, :] - w
        window = (pos <= rows) & (pos >= rows - w)  # [T, W + T]
        filled = torch.cat([valid, valid.new_ones(b, t)], dim=1)  # [B, W + T]
        allowed = (window[None] & filled[:, None, :])[:, None]  # [B, 1, T, W + T]
        parts = [x[-1], filled[:, -w:].to(x.dtype)]
        for i, block in enumerate(self.blocks):
            e, keys, values = block(e, caches[:, i, 0], caches[:, i, 1], allowed)
            parts += [keys[:, -w:].reshape(b, -1), values[:, -w:].reshape(b, -1)]
        return self.norm(e).transpose(0, 1), torch.cat(parts, dim=-1)

    def step(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, state = self.unroll(x[None], state)
        return out[0], state


__all__ = ["AttentionBlock", "AttentionCore", "windowed_attention"]
