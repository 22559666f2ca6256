"""MANN: a memory-augmented policy (a controller with an NTM-style external memory) trained like RL².

Santoro, Bartunov, Botvinick, Wierstra, Lillicrap (2016), "Meta-Learning with Memory-Augmented Neural
Networks", ICML; Graves, Wayne, Danihelka (2014), "Neural Turing Machines", arXiv:1410.5401 (sec. 3).

The policy's memory is a controller (an LSTM or GRU cell) plus an external memory matrix
``M in R^{N x W}`` (``N`` slots of width ``W``) with one write head and ``R`` read heads. The memory is
cleared (``M = 0``, head weights on slot 0, read vectors 0, controller state 0) at the start of a trial and
persists across the episodes of the trial; the trial rollout, the objective (expected total discounted
reward of a trial) and the recurrent PPO update are RL²'s (``agents/rl2.py``, :mod:`metarl.recurrent`).
Per step, with ``x_t`` the trial input ``[s_t, a_{t-1}, r_{t-1}, d_{t-1}]`` (:mod:`metarl.trials`)::

    h_t = Controller([x_t, r^1_{t-1}, ..., r^R_{t-1}], h_{t-1})
    for each head: k_t = W_k h_t,  beta_t = softplus(.),  g_t = sigmoid(.),  s_t = softmax(.)  (2S+1 shifts),
                   gamma_t = 1 + softplus(.);  write head also e_t = sigmoid(.) in [0,1]^W, a_t = tanh(.)

Addressing (Graves et al. 2014, eqs. 5-9), every function below one equation:

    content        w^c_t(i) = exp(beta_t K[k_t, M_{t-1}(i)]) / sum_j exp(beta_t K[k_t, M_{t-1}(j)]),
                   K[u, v] = u . v / (||u|| ||v||)                              (cosine similarity)
    interpolation  w^g_t = g_t w^c_t + (1 - g_t) w_{t-1}
    shift          w~_t(i) = sum_j w^g_t(j) s_t(i - j mod N)                    (circular convolution)
    sharpening     w_t(i) = w~_t(i)^gamma_t / sum_j w~_t(j)^gamma_t

Write (eqs. 3-4) then read (eq. 2) from the written memory::

    M_t(i) = M_{t-1}(i) [1 - w^w_t(i) e_t] + w^w_t(i) a_t,       r^h_t = sum_i w^h_t(i) M_t(i)

The policy and value heads read ``[h_t, r^1_t, ..., r^R_t]``.

``addressing="lrua"`` swaps NTM's heads for Santoro et al.'s *least recently used access* (sec. 3.2): every
one of the ``R`` heads reads by content alone and writes either where it read last step or to a least-used
slot, so new information goes to fresh (or stale) slots without location addressing to learn::

    read           w^r_t = softmax_i(beta_t K[k_t, M_t(i)])                            (per head; beta_t: ours)
    usage          w^u_t = gamma_u w^u_{t-1} + sum_h w^r_{h,t} + sum_h w^w_{h,t}
    least used     w^lu_t(i) = 1 if w^u_t(i) is among the R smallest usages, else 0   (ties: lower slot first)
    write weights  w^w_{h,t} = sigmoid(alpha_{h,t}) w^r_{h,t-1} + (1 - sigmoid(alpha_{h,t})) w^lu_{t-1}
    write          M_t(i) = M_{t-1}(i) [1 - 1(i = argmin_j w^u_{t-1}(j))] + sum_h w^w_{h,t}(i) a_{h,t}

The least-used slot is cleared before the write, as in the paper; ``gamma_u`` is ``usage_decay``.

Choices where codebases differ, and ours:

- Addressing: NTM's (content + location) by default, as this project's issue asks; ``addressing="lrua"`` is
  Santoro et al.'s MANN. Two LRUA details are ours: a key strength ``beta_t`` (softplus, as NTM's) scales the
  cosine before the softmax (the paper uses the plain cosine, whose softmax over many slots is nearly flat),
  and each head writes a vector ``a_{h,t} = tanh(W_a h_t)`` of its own where the paper writes the read key
  ``k_t`` (a head can still learn to write its key; the stored content need not equal the lookup key).
- Initial state: memory ``0`` and every head's previous weighting one-hot on slot 0. With a zero (or
  constant) memory every slot looks the same to content addressing, and uniform initial weights would
  keep all slots identical forever; the one-hot start lets location addressing (shifts) break the tie.
  pytorch-ntm (loudinthecloud) learns these initial values; we keep them fixed, so "clearing the
  memory" is well defined. LRUA starts with no previous read and zero usage: its least-used rule (ties in slot
  order) breaks the tie, writing the first steps to slots 0, 1, ...
- Cosine similarity with ``||u|| ||v|| + 1e-8`` in the denominator (0 for the zero memory) and sharpening of
  ``w~ + 1e-12`` (finite gradient in ``gamma`` where a weight is 0).
- Reads come from the memory *after* this step's write (so the current step's information is
  readable at once), as in Santoro et al.'s equations.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from metarl.config import option, require, require_at_least, require_choice
from metarl.recurrent import TrialPPOConfig, TrialPPOLearner
from metarl.rollout import TaskEnvs

CONTROLLERS = ("lstm", "gru")
ADDRESSING = ("ntm", "lrua")

# ----------------------------------------------------------------------------------------------------------
# NTM addressing, read and write as pure functions. Shapes: B batch, H heads, N slots, W slot width.


def cosine_similarity(keys: torch.Tensor, memory: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``K[k_h, M(i)]`` for every head and slot: keys ``[B, H, W]``, memory ``[B, N, W]`` -> ``[B, H, N]``."""
    # A broadcast product and sum, not a batched matmul: for the small memories here (N, W <= 64) it is
    # about 2x faster on CPU, whose bmm pays per batch element.
    dot = (keys.unsqueeze(2) * memory.unsqueeze(1)).sum(-1)
    return dot / (keys.norm(dim=-1, keepdim=True) * memory.norm(dim=-1).unsqueeze(1) + eps)


def content_weights(keys: torch.Tensor, strength: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """``w^c = softmax_i(beta K[k, M(i)])``: keys ``[B, H, W]``, strength ``beta [B, H]`` -> ``[B, H, N]``."""
    return torch.softmax(strength.unsqueeze(-1) * cosine_similarity(keys, memory), dim=-1)


def interpolate(content: torch.Tensor, previous: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """``w^g = g w^c + (1 - g) w_{t-1}``: ``[B, H, N]``, ``[B, H, N]``, gate ``g [B, H]`` in [0, 1]."""
    g = gate.unsqueeze(-1)
    return g * content + (1.0 - g) * previous


def circular_shift(weights: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``w~(i) = sum_j w(j) s(i - j mod N)``: weights ``[B, H, N]``, shift ``[B, H, 2S + 1]`` (a
    distribution over the offsets ``-S, ..., S``) -> ``[B, H, N]``."""
    n, radius = weights.shape[-1], (shift.shape[-1] - 1) // 2
    offsets = torch.arange(-radius, radius + 1, device=weights.device)
    # behind[i, o] = i - o mod N, so w(i - o) for every slot i and offset o is one gather, and the
    # convolution sum_o s(o) w(i - o) one product and sum (one op each instead of one per offset).
    behind = (torch.arange(n, device=weights.device)[:, None] - offsets) % n
    return (weights[..., behind] * shift.unsqueeze(-2)).sum(-1)


def sharpen(weights: torch.Tensor, gamma: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``w(i) = w~(i)^gamma / sum_j w~(j)^gamma``: weights ``[B, H, N]``, gamma ``[B, H]`` >= 1."""
    w = (weights + eps) ** gamma.unsqueeze(-1)
    return w / w.sum(dim=-1, keepdim=True)


def address(keys: torch.Tensor, strength: torch.Tensor, gate: torch.Tensor, shift: torch.Tensor,
            gamma: torch.Tensor, previous: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """The NTM addressing pipeline (content -> interpolation -> shift -> sharpening): ``[B, H, N]``."""
    return sharpen(circular_shift(interpolate(content_weights(keys, strength, memory), previous, gate), shift),
                   gamma)


def write_memory(memory: torch.Tensor, weights: torch.Tensor, erase: torch.Tensor, add: torch.Tensor) -> torch.Tensor:
    """``M_t(i) = M_{t-1}(i) [1 - w(i) e] + w(i) a``: memory ``[B, N, W]``, weights ``[B, N]``, erase and add
    ``[B, W]``."""
    w = weights.unsqueeze(-1)
    return memory * (1.0 - w * erase.unsqueeze(1)) + w * add.unsqueeze(1)


def read_memory(memory: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``r^h = sum_i w^h(i) M(i)``: memory ``[B, N, W]``, weights ``[B, H, N]`` -> ``[B, H, W]``."""
    return weights @ memory


# LRUA (Santoro et al. 2016, sec. 3.2)


def least_used(usage: torch.Tensor, n: int) -> torch.Tensor:
    """``w^lu(i) = 1`` for the ``n`` slots of smallest usage, else 0 (ties: the lower slot first): usage
    ``[B, N]`` -> ``[B, N]``. Piecewise constant in the usage, so no gradient flows through it (as in the paper)."""
    # A stable sort keeps equal usages in slot order, so a cleared memory fills slot 0, 1, 2, ...
    order = torch.sort(usage.detach(), dim=-1, stable=True).indices[:, :n]
    return torch.zeros_like(usage).scatter(-1, order, 1.0)


def lrua_write_weights(previous_read: torch.Tensor, least: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """``w^w_h = sigmoid(alpha_h) w^r_{h,t-1} + (1 - sigmoid(alpha_h)) w^lu_{t-1}``: previous read weights
    ``[B, H, N]``, least-used indicator ``[B, N]``, gate ``sigmoid(alpha) [B, H]`` -> ``[B, H, N]``."""
    g = gate.unsqueeze(-1)
    return g * previous_read + (1.0 - g) * least.unsqueeze(1)


def lrua_write(memory: torch.Tensor, usage: torch.Tensor, weights: torch.Tensor, add: torch.Tensor) -> torch.Tensor:
    """Clear the least-used slot (by the previous usage ``[B, N]``), then ``M(i) += sum_h w^w_h(i) a_h``:
    memory ``[B, N, W]``, write weights ``[B, H, N]``, add ``[B, H, W]``."""
    # argmin returns the first of equal minima: the slot least_used(usage, 1) marks, without a sort per step.
    cleared = memory * (1.0 - F.one_hot(usage.argmin(-1), usage.shape[-1]).to(memory.dtype)).unsqueeze(-1)
    return cleared + weights.transpose(1, 2) @ add


def usage_update(usage: torch.Tensor, read: torch.Tensor, write: torch.Tensor, decay: float) -> torch.Tensor:
    """``w^u_t = gamma_u w^u_{t-1} + sum_h w^r_{h,t} + sum_h w^w_{h,t}``: usage ``[B, N]``, weights ``[B, H, N]``."""
    return decay * usage + read.sum(1) + write.sum(1)


# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MANNConfig(TrialPPOConfig):
    controller: str = option("lstm", "controller cell: lstm (Santoro et al.) or gru")
    controller_size: int = option(128, "controller hidden units")
    memory_slots: int = option(16, "memory slots N (Santoro et al.: 128)")
    memory_width: int = option(16, "slot width W (Santoro et al.: 40)")
    read_heads: int = option(1, "read heads R (Santoro et al.: 4)")
    shift_range: int = option(1, "circular shifts -S..S of location addressing (NTM: 1)")
    addressing: str = option("ntm", "ntm: content + location addressing, erase/add writes (Graves et al.); lrua: "
                                    "Santoro et al.'s least recently used access (module docstring)")
    usage_decay: float = option(0.95, "LRUA: decay gamma_u of the usage weights")
    compile_step: bool = option(False, "compile the memory step with torch.compile (CPU, benchmarks/speed/"
                                       "memory_core.py: 2.9x faster unroll + backward, 2.0x faster rollout "
                                       "steps, after about a minute of compiling; needs a C++ compiler)")

    def __post_init__(self) -> None:
        super().__post_init__()
        require_choice(self, "controller", CONTROLLERS)
        require_choice(self, "addressing", ADDRESSING)
        require(0.0 <= self.usage_decay <= 1.0, f"usage_decay must be in [0, 1], got {self.usage_decay}")
        require_at_least(self, 1, "controller_size", "memory_slots", "memory_width", "read_heads")
        require(self.addressing == "lrua" or 0 <= self.shift_range and 2 * self.shift_range + 1 <= self.memory_slots,
                f"shift_range must be in [0, (memory_slots - 1) / 2] = [0, {(self.memory_slots - 1) // 2}], "
                f"got {self.shift_range}; lower it or add memory slots")
        # TRPO needs second derivatives of the policy: a compiled step has no double backward, and LRUA's content
        # read of a cleared (all-zero) slot has a NaN one (the norm's second derivative at 0).
        require(self.outer != "trpo" or not self.compile_step,
                "outer=trpo differentiates the policy twice, which a torch.compile'd memory step does not support: "
                "set compile_step=false")
        require(self.outer != "trpo" or self.addressing == "ntm",
                "outer=trpo needs the policy's second derivatives, which are NaN through LRUA's read of a cleared "
                "slot: use addressing=ntm with outer=trpo, or outer=ppo with addressing=lrua")


class NTMCore(nn.Module):
    """Controller + external memory; the whole state in one flat tensor ``[B, S]``.

    State layout: controller ``h`` (and ``c`` for an LSTM), read vectors ``[R, W]``, read weights
    ``[R, N]``, write weights ``[N]`` (LRUA: the usage weights ``w^u``), memory ``[N, W]``.
    """

    def __init__(self, input_size: int, config: MANNConfig) -> None:
        super().__init__()
        c = config
        self.n, self.w, self.r, self.hidden = c.memory_slots, c.memory_width, c.read_heads, c.controller_size
        self.shifts = 2 * c.shift_range + 1
        self.lstm, self.lrua, self.usage_decay = c.controller == "lstm", c.addressing == "lrua", c.usage_decay
        cell_in = input_size + self.r * self.w
        self.cell: nn.Module = nn.LSTMCell(cell_in, self.hidden) if self.lstm else nn.GRUCell(cell_in, self.hidden)
        if self.lrua:  # every head: key, strength, write gate alpha, add vector
            self.per_head = 2 * self.w + 2
            self.read_params = nn.Linear(self.hidden, self.r * self.per_head)
        else:  # read heads: key, strength, gate, gamma, shift; the write head also erase and add
            self.per_head = self.w + 3 + self.shifts
            self.read_params = nn.Linear(self.hidden, self.r * self.per_head)
            self.write_params = nn.Linear(self.hidden, self.per_head + 2 * self.w)
        self.sizes = [self.hidden * (2 if self.lstm else 1), self.r * self.w, self.r * self.n, self.n,
                      self.n * self.w]
        self.state_size = sum(self.sizes)
        self.output_size = self.hidden + self.r * self.w
        if c.compile_step:
            # One step's ~60 small ops fused into a few kernels (forward and backward); same arithmetic up
            # to rounding (tests/test_mann.py). The eager method stays reachable as NTMCore._advance.
            self._advance = torch.compile(self._advance)  # type: ignore[method-assign]

    def unpack(self, state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Flat ``[B, S]`` -> controller state, reads ``[B, R, W]``, read weights ``[B, R, N]``, write weights
        (LRUA: usage) ``[B, 1, N]``, memory ``[B, N, W]``."""
        ctrl, reads, w_read, w_write, memory = torch.split(state, self.sizes, dim=-1)
        b = state.shape[0]
        return (ctrl, reads.reshape(b, self.r, self.w), w_read.reshape(b, self.r, self.n),
                w_write.reshape(b, 1, self.n), memory.reshape(b, self.n, self.w))

    def pack(self, ctrl: torch.Tensor, reads: torch.Tensor, w_read: torch.Tensor, w_write: torch.Tensor,
             memory: torch.Tensor) -> torch.Tensor:
        return torch.cat([t.flatten(1) for t in (ctrl, reads, w_read, w_write, memory)], dim=-1)

    def initial_state(self, batch: int, device: torch.device | str) -> torch.Tensor:
        """Cleared memory: zeros, with every head's previous weighting one-hot on slot 0 (LRUA: no previous
        read, zero usage, so the first writes fill slots 0, 1, ... in turn)."""
        dtype = self.read_params.weight.dtype
        onehot = torch.zeros(batch, 1, self.n, device=device, dtype=dtype)
        if not self.lrua:
            onehot[..., 0] = 1.0
        return self.pack(torch.zeros(batch, self.sizes[0], device=device, dtype=dtype),
                         torch.zeros(batch, self.r, self.w, device=device, dtype=dtype),
                         onehot.expand(batch, self.r, self.n), onehot,
                         torch.zeros(batch, self.n, self.w, device=device, dtype=dtype))

    def _head(self, p: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Raw head parameters ``[B, H, per_head]`` -> key, beta >= 0, g in (0, 1), shift distribution, gamma >= 1."""
        key, strength, gate, gamma, shift = torch.split(p, [self.w, 1, 1, 1, self.shifts], dim=-1)
        return (key, F.softplus(strength.squeeze(-1)), torch.sigmoid(gate.squeeze(-1)), torch.softmax(shift, dim=-1),
                1.0 + F.softplus(gamma.squeeze(-1)))

    def _heads_layer(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The write and read heads' layers stacked into one (one product per step instead of two)."""
        if self.lrua:
            return self.read_params.weight, self.read_params.bias
        return (torch.cat([self.write_params.weight, self.read_params.weight]),
                torch.cat([self.write_params.bias, self.read_params.bias]))

    def _ntm_memory(self, params: torch.Tensor, w_read: torch.Tensor, w_write: torch.Tensor,
                    memory: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """NTM: address the write head, erase and add, then address the read heads on the written memory."""
        b = params.shape[0]
        wp, rp = params[:, :self.per_head + 2 * self.w], params[:, self.per_head + 2 * self.w:]
        # The head transforms are elementwise: one call for the write head and the R read heads together.
        key, beta, gate, shift, gamma = self._head(
            torch.cat([wp[:, None, :self.per_head], rp.reshape(b, self.r, self.per_head)], dim=1))
        w_write = address(key[:, :1], beta[:, :1], gate[:, :1], shift[:, :1], gamma[:, :1], w_write, memory)
        erase = torch.sigmoid(wp[:, self.per_head:self.per_head + self.w])
        add = torch.tanh(wp[:, self.per_head + self.w:])
        memory = write_memory(memory, w_write[:, 0], erase, add)
        w_read = address(key[:, 1:], beta[:, 1:], gate[:, 1:], shift[:, 1:], gamma[:, 1:], w_read, memory)
        return w_read, w_write, memory

    def _lrua_memory(self, params: torch.Tensor, w_read: torch.Tensor, usage: torch.Tensor,
                     memory: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """LRUA: write where each head read last step or to the least-used slot, then read by content."""
        key, strength, alpha, add = torch.split(params.reshape(params.shape[0], self.r, self.per_head),
                                                [self.w, 1, 1, self.w], dim=-1)
        usage = usage[:, 0]
        w_write = lrua_write_weights(w_read, least_used(usage, self.r), torch.sigmoid(alpha.squeeze(-1)))
        memory = lrua_write(memory, usage, w_write, torch.tanh(add))
        w_read = content_weights(key, F.softplus(strength.squeeze(-1)), memory)
        usage = usage_update(usage, w_read, w_write, self.usage_decay)
        return w_read, usage[:, None], memory

    def _advance(self, x: torch.Tensor, parts: tuple[torch.Tensor, ...],
                 heads: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """One step on the unpacked state (:meth:`unpack`): output ``[B, H + R W]`` and the next parts."""
        ctrl, reads, w_read, w_write, memory = parts
        cell_in = torch.cat([x, reads.flatten(1)], dim=-1)
        if self.lstm:
            h, c = self.cell(cell_in, tuple(ctrl.chunk(2, dim=-1)))
            new_ctrl = torch.cat([h, c], dim=-1)
        else:
            h = self.cell(cell_in, ctrl)
            new_ctrl = h
        memory_step = self._lrua_memory if self.lrua else self._ntm_memory
        w_read, w_write, memory = memory_step(F.linear(h, *heads), w_read, w_write, memory)
        reads = read_memory(memory, w_read)
        return torch.cat([h, reads.flatten(1)], dim=-1), (new_ctrl, reads, w_read, w_write, memory)

    def step(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, parts = self._advance(x, self.unpack(state), self._heads_layer())
        return out, self.pack(*parts)

    def unroll(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``T`` steps over ``x [T, B, D]``, the arithmetic of ``T`` calls of :meth:`step` (tested) with the state
        kept unpacked between steps and the heads' layer stacked once."""
        heads, parts = self._heads_layer(), self.unpack(state)
        outs = []
        for x_t in x.unbind(0):
            out, parts = self._advance(x_t, parts, heads)
            outs.append(out)
        return torch.stack(outs), self.pack(*parts)


class MANNAgent(TrialPPOLearner):
    """A controller with an NTM-style external memory, cleared per trial, trained with PPO over trials."""

    def __init__(self, envs: TaskEnvs, config: MANNConfig, seed: int = 0, device: torch.device | str = "cpu") -> None:
        super().__init__(envs, config, lambda d: NTMCore(d, config), seed, device)


__all__ = ["MANNAgent", "MANNConfig", "NTMCore", "address", "circular_shift", "content_weights", "cosine_similarity",
           "interpolate", "least_used", "lrua_write", "lrua_write_weights", "read_memory", "sharpen", "usage_update",
           "write_memory"]
