"""A float64 NumPy reference of rmsprop_jax.rmsprop, written from docs/algorithm.md.

It works leaf by leaf on NumPy arrays, in float64 (complex128 for complex
leaves), with no JAX at all, so it shares no code with the library.
"""

from __future__ import annotations

import numpy as np


def _abs_sq(x):
    return (x * np.conj(x)).real


class Reference:
    """RMSprop exactly as docs/algorithm.md states it, in float64."""

    def __init__(
        self,
        learning_rate,
        decay=0.9,
        eps=1e-8,
        initial_scale=0.0,
        eps_in_sqrt=True,
        centered=False,
        momentum=None,
        nesterov=False,
        bias_correction=False,
        lr_in_momentum=True,
        weight_decay=0.0,
        weight_decay_mode="decoupled",
        weight_decay_mask=None,
        maximize=False,
        split_complex=False,
        factored=False,
        min_dim_size_to_factor=128,
    ):
        self.lr = learning_rate if callable(learning_rate) else (lambda t: learning_rate)
        self.wd = weight_decay if callable(weight_decay) else (lambda t: weight_decay)
        self.decay, self.eps, self.initial_scale = decay, eps, initial_scale
        self.eps_in_sqrt, self.centered, self.bias_correction = (
            eps_in_sqrt,
            centered,
            bias_correction,
        )
        self.momentum = momentum or 0.0
        self.nesterov, self.lr_in_momentum = nesterov, lr_in_momentum
        self.wd_mode, self.mask = weight_decay_mode, weight_decay_mask
        self.maximize, self.split_complex = maximize, split_complex
        self.factored, self.min_dim = factored, min_dim_size_to_factor

    def _axes(self, shape):
        """Adafactor: the two largest axes (ties to the later one), both >= min_dim."""
        if not self.factored or len(shape) < 2:
            return None
        order = sorted(range(len(shape)), key=lambda d: (shape[d], d))
        a, b = sorted(order[-2:])
        return (a, b) if min(shape[a], shape[b]) >= self.min_dim else None

    def init(self, params: list[np.ndarray]):
        self.t = 0
        self.state = []
        for p in params:
            shape = (*p.shape, 2) if self.split_complex and np.iscomplexobj(p) else p.shape
            cplx = np.iscomplexobj(p) and not self.split_complex
            mdt = np.complex128 if cplx else np.float64
            st = dict(
                nu=np.full(shape, self.initial_scale, np.float64),
                mu=np.zeros(shape, mdt),
                b=np.zeros(shape, mdt),
            )
            axes = self._axes(shape)
            if axes:  # row: averaged over axis b; col: averaged over axis a
                st["row"] = np.full(np.mean(st["nu"], axis=axes[1]).shape, self.initial_scale)
                st["col"] = np.full(np.mean(st["nu"], axis=axes[0]).shape, self.initial_scale)
            self.state.append(st)

    def step(self, grads: list[np.ndarray], params: list[np.ndarray]) -> list[np.ndarray]:
        # A schedule is the user's JAX function of the int32 step count (its
        # precision is its own: optax's schedules return float32 for an int32
        # count even with x64), so it is called exactly as the library calls it.
        count = np.int32(self.t)
        lr, wd = float(self.lr(count)), float(self.wd(count))
        self.t += 1
        t, rho = self.t, self.decay
        out = []
        mask = self.mask or [True] * len(grads)
        for g, p, st, m in zip(grads, params, self.state, mask):
            cplx_in = np.iscomplexobj(g)
            split = self.split_complex and cplx_in
            dt = np.complex128 if cplx_in and not split else np.float64
            g = np.asarray(g).astype(np.complex128 if cplx_in else np.float64)
            p = np.asarray(p).astype(g.dtype)
            # A mask entry is a bool for the whole leaf or a boolean array of its
            # shape; a complex leaf's entry covers both parts of an element.
            m = np.asarray(m, bool)
            if split:
                g = np.stack([g.real, g.imag], -1)
                p = np.stack([p.real, p.imag], -1)
                m = np.stack([m, m], -1) if m.ndim else m
            g, p = g.astype(dt), p.astype(dt)
            wd_leaf = wd * m
            if self.maximize:
                g = -g
            if self.wd_mode == "coupled":
                g = g + wd_leaf * p
            st["mu"] = rho * st["mu"] + (1 - rho) * g
            corr = (1 - rho**t) if self.bias_correction else 1.0
            axes = self._axes(g.shape)
            if axes:
                a, b = axes
                st["row"] = rho * st["row"] + (1 - rho) * np.mean(_abs_sq(g), axis=b)
                st["col"] = rho * st["col"] + (1 - rho) * np.mean(_abs_sq(g), axis=a)
                r = np.expand_dims(st["row"] / corr, b)
                c = np.expand_dims(st["col"] / corr, a)
                scale = np.mean(r, axis=a, keepdims=True)
                nu_hat = np.where(scale > 0, r * c / np.where(scale > 0, scale, 1), 0)
            else:
                st["nu"] = rho * st["nu"] + (1 - rho) * _abs_sq(g)
                nu_hat = st["nu"] / corr
            mu_hat = st["mu"] / corr
            v = np.maximum(nu_hat - _abs_sq(mu_hat), 0) if self.centered else nu_hat
            d = np.sqrt(v + self.eps) if self.eps_in_sqrt else np.sqrt(v) + self.eps
            s = np.where(d > 0, g / np.where(d > 0, d, 1), 0)
            mom = self.momentum
            if mom == 0:
                step = lr * s
            elif self.lr_in_momentum:
                st["b"] = mom * st["b"] + lr * s
                step = lr * s + mom * st["b"] if self.nesterov else st["b"]
            else:
                st["b"] = mom * st["b"] + s
                step = lr * (s + mom * st["b"]) if self.nesterov else lr * st["b"]
            u = -step
            if self.wd_mode == "decoupled":
                u = u - lr * wd_leaf * p
            if split:
                u = u[..., 0] + 1j * u[..., 1]
            out.append(u)
        return out
