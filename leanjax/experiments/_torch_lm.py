"""The leanjax `CausalLM` in plain PyTorch, for the `fusion` experiment's side-by-side benchmark.

Same layout as `leanjax.models.transformer` with `norm_first=False` (post-LN BERT blocks, embedding
LayerNorm, exact-erf GELU, tied output head, no dropout), built from a leanjax params dict so both start
from the same values and give the same loss. Imported only when torch (the optional `bench` extra) is
installed; leanjax itself never depends on it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def _tensor(x) -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.from_numpy(np.array(x, dtype=np.float32)))


class _Linear(torch.nn.Module):
    def __init__(self, p: dict):
        super().__init__()
        # leanjax kernels are [in, out]; F.linear takes [out, in].
        self.weight = _tensor(np.asarray(p["kernel"]).T)
        self.bias = _tensor(p["bias"])

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class _Norm(torch.nn.Module):
    def __init__(self, p: dict, eps: float):
        super().__init__()
        self.weight, self.bias, self.eps = _tensor(p["scale"]), _tensor(p["bias"]), eps

    def forward(self, x):
        return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)


class _Block(torch.nn.Module):
    def __init__(self, p: dict, num_heads: int, eps: float):
        super().__init__()
        a = p["attention"]
        self.query, self.key, self.value, self.out = (_Linear(a[k]) for k in ("query", "key", "value", "output"))
        self.attention_norm = _Norm(p["attention_norm"], eps)
        self.intermediate, self.output = _Linear(p["intermediate"]), _Linear(p["output"])
        self.output_norm = _Norm(p["output_norm"], eps)
        self.num_heads = num_heads

    def forward(self, h, mask):
        b, t, d = h.shape
        q, k, v = (f(h).view(b, t, self.num_heads, -1) for f in (self.query, self.key, self.value))
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
        probs = scores.masked_fill(~mask, torch.finfo(scores.dtype).min).softmax(-1)
        context = torch.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, t, d)
        h = self.attention_norm(h + self.out(context))
        return self.output_norm(h + self.output(F.gelu(self.intermediate(h))))


class TorchLM(torch.nn.Module):
    """`forward(inputs [B, T] int64, targets [B, T] int64) -> mean next-token cross-entropy`."""

    def __init__(self, params: dict, *, num_heads: int, eps: float):
        super().__init__()
        t, e = params["transformer"], params["transformer"]["embeddings"]
        if "layers" not in t or not isinstance(t["layers"], dict) or 0 not in t["layers"]:
            raise ValueError("TorchLM needs an unrolled leanjax CausalLM (scan_layers=False)")
        if "lm_head" in params or "final_norm" in t:
            raise ValueError("TorchLM mirrors the tied-head, post-LN CausalLM only")
        self.word, self.position = _tensor(e["word"]["embedding"]), _tensor(e["position"]["embedding"])
        self.norm = _Norm(e["norm"], eps)
        self.blocks = torch.nn.ModuleList(_Block(t["layers"][i], num_heads, eps) for i in sorted(t["layers"]))

    def forward(self, inputs, targets):
        t = inputs.shape[1]
        h = self.norm(self.word[inputs] + self.position[:t][None])
        mask = torch.ones(t, t, dtype=torch.bool, device=inputs.device).tril()
        for block in self.blocks:
            h = block(h, mask)
        logits = h @ self.word.T
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def train_step(forward, optimizer: torch.optim.Optimizer):
    """`step(inputs, targets) -> loss`: forward (`forward`, maybe `torch.compile`d), backward, AdamW."""

    def step(inputs, targets):
        optimizer.zero_grad(set_to_none=True)
        loss = forward(inputs, targets)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step
