"""A float64 NumPy reference of rmsprop_jax.rmsprop, written from SPEC section 2.

It works leaf by leaf on NumPy arrays, in float64 (complex128 for complex
leaves), with no JAX at all, so it shares no code with the library.
"""

from __future__ import annotations

import numpy as np


def _abs_sq(x):
    return (x * np.conj(x)).real


class Reference:
    """RMSprop exactly as the SPEC's equations state it, in float64."""

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

    def init(self, params: list[np.ndarray]):
        self.t = 0
        self.state = []
        for p in params:
            shape = (*p.shape, 2) if self.split_complex and np.iscomplexobj(p) else p.shape
            cplx = np.iscomplexobj(p) and not self.split_complex
            mdt = np.complex128 if cplx else np.float64
            self.state.append(
                dict(
                    nu=np.full(shape, self.initial_scale, np.float64),
                    mu=np.zeros(shape, mdt),
                    b=np.zeros(shape, mdt),
                )
            )

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
            if split:
                g = np.stack([g.real, g.imag], -1)
                p = np.stack([p.real, p.imag], -1)
            g, p = g.astype(dt), p.astype(dt)
            wd_leaf = wd if m else 0.0
            if self.maximize:
                g = -g
            if self.wd_mode == "coupled":
                g = g + wd_leaf * p
            st["nu"] = rho * st["nu"] + (1 - rho) * _abs_sq(g)
            st["mu"] = rho * st["mu"] + (1 - rho) * g
            corr = (1 - rho**t) if self.bias_correction else 1.0
            nu_hat, mu_hat = st["nu"] / corr, st["mu"] / corr
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
