"""Float64 NumPy references of the RMSprop variants that cannot be installed here,
each written in its original's own form from the original's source.

Each class steps a list of parameter arrays in place: ``step(grads)`` applies
one update. Citations give the file, the function and the statement, as read
at the named commit. Where an original divides 0 by 0 (no epsilon, zero
history), the reference takes the step to be 0, as rmsprop_jax documents.
"""

from __future__ import annotations

import numpy as np


def _tf_number(x):
    """TensorFlow turns a Python float into a float32 tensor before casting it
    to the variable's dtype (`ops.convert_to_tensor`, `tf.cast`)."""
    return float(np.float32(x)) if isinstance(x, (int, float)) else x


def _div(a, b):
    return np.where(b > 0, a / np.where(b > 0, b, 1), 0)


class TensorFlowV1:
    """tensorflow/python/training/rmsprop.py (RMSPropOptimizer._create_slots:
    `init_rms = init_ops.ones_initializer(...)`, the `rms` slot starts at 1) and
    tensorflow/core/kernels/training_ops.cc (functor::ApplyRMSProp:
    `ms += (grad.square() - ms) * (1 - rho); mom = mom * momentum + (grad * lr) /
    ((ms + epsilon).sqrt()); var -= mom`; ApplyCenteredRMSProp: `mg += (grad - mg)
    * (1 - rho)`, denominator `ms - mg.square() + epsilon`). tensorflow/tensorflow
    at commit 0304934138cb. RMSPropOptimizer._prepare: `ops.convert_to_tensor(lr)`
    then `math_ops.cast(..., var.dtype.base_dtype)`: Python floats pass float32."""

    def __init__(self, learning_rate, decay=0.9, momentum=0.0, epsilon=1e-10, centered=False):
        self.lr, self.rho, self.mu, self.eps, self.centered = (
            _tf_number(learning_rate),
            _tf_number(decay),
            _tf_number(momentum),
            _tf_number(epsilon),
            centered,
        )

    def init(self, params):
        self.params = [np.array(p, np.float64) for p in params]
        self.ms = [np.ones_like(p) for p in self.params]
        self.mg = [np.zeros_like(p) for p in self.params]
        self.mom = [np.zeros_like(p) for p in self.params]
        self.t = 0

    def step(self, grads):
        lr = float(self.lr(np.int32(self.t))) if callable(self.lr) else self.lr
        self.t += 1
        for i, g in enumerate(grads):
            self.ms[i] += (g * g - self.ms[i]) * (1 - self.rho)
            denom = self.ms[i] + self.eps
            if self.centered:
                self.mg[i] += (g - self.mg[i]) * (1 - self.rho)
                denom = self.ms[i] - self.mg[i] ** 2 + self.eps
            self.mom[i] = self.mom[i] * self.mu + _div(g * lr, np.sqrt(denom))
            self.params[i] -= self.mom[i]


class TimmTF:
    """timm/optim/rmsprop_tf.py, RMSpropTF.step (huggingface/pytorch-image-models
    at commit 0d4c04f3497f): `square_avg = torch.ones_like(p)`; weight decay
    `p.mul_(1. - lr * weight_decay)` if decoupled_decay else `grad = grad.add(p,
    alpha=weight_decay)`; `square_avg.add_(grad.pow(2) - square_avg,
    alpha=one_minus_alpha)`; centered `grad_avg.add_(grad - grad_avg, alpha=...)`,
    `avg = square_avg.addcmul(grad_avg, grad_avg, value=-1).add(eps).sqrt_()`;
    lr_in_momentum `buf.mul_(momentum).addcdiv_(grad, avg, value=lr); p.add_(-buf)`
    else `buf.addcdiv_(grad, avg); p.add_(buf, alpha=-lr)`; no momentum
    `p.addcdiv_(grad, avg, value=-lr)`."""

    def __init__(
        self,
        lr=1e-2,
        alpha=0.9,
        eps=1e-10,
        weight_decay=0.0,
        momentum=0.0,
        centered=False,
        decoupled_decay=False,
        lr_in_momentum=True,
    ):
        self.__dict__.update(locals())
        del self.__dict__["self"]

    def init(self, params):
        self.params = [np.array(p, np.float64) for p in params]
        self.sq = [np.ones_like(p) for p in self.params]
        self.ga = [np.zeros_like(p) for p in self.params]
        self.buf = [np.zeros_like(p) for p in self.params]
        self.t = 0

    def step(self, grads):
        lr = float(self.lr(np.int32(self.t))) if callable(self.lr) else self.lr
        self.t += 1
        for i, g in enumerate(grads):
            p = self.params[i]
            if self.weight_decay:
                if self.decoupled_decay:
                    p *= 1.0 - lr * self.weight_decay
                else:
                    g = g + self.weight_decay * p
            self.sq[i] += (g**2 - self.sq[i]) * (1 - self.alpha)
            if self.centered:
                self.ga[i] += (g - self.ga[i]) * (1 - self.alpha)
                avg = np.sqrt(self.sq[i] - self.ga[i] ** 2 + self.eps)
            else:
                avg = np.sqrt(self.sq[i] + self.eps)
            if self.momentum > 0:
                if self.lr_in_momentum:
                    self.buf[i] = self.buf[i] * self.momentum + lr * g / avg
                    p -= self.buf[i]
                else:
                    self.buf[i] = self.buf[i] * self.momentum + g / avg
                    p -= lr * self.buf[i]
            else:
                p -= lr * g / avg


class Sonnet:
    """sonnet/src/optimizers/rmsprop.py (google-deepmind/sonnet at commit
    5ab2b3346f53): RMSProp._initialize makes `mom`, `ms`, `mg` with zeros;
    rmsprop_update: `ms <- decay * ms + (1-decay) * update^2`, `mg <- decay * mg
    + (1-decay) * update`, `mom <- momentum * mom + learning_rate * update *
    rsqrt(ms [- mg^2] + epsilon)`, then `parameter.assign_sub(mom)`; RMSProp.apply:
    `learning_rate = tf.cast(self.learning_rate, update.dtype)` (and decay,
    momentum, epsilon): Python floats pass through float32."""

    def __init__(self, learning_rate, decay=0.9, momentum=0.0, epsilon=1e-10, centered=False):
        self.lr, self.decay, self.mu, self.eps, self.centered = (
            _tf_number(learning_rate),
            _tf_number(decay),
            _tf_number(momentum),
            _tf_number(epsilon),
            centered,
        )

    def init(self, params):
        self.params = [np.array(p, np.float64) for p in params]
        self.ms = [np.zeros_like(p) for p in self.params]
        self.mg = [np.zeros_like(p) for p in self.params]
        self.mom = [np.zeros_like(p) for p in self.params]
        self.t = 0

    def step(self, grads):
        lr = float(self.lr(np.int32(self.t))) if callable(self.lr) else self.lr
        self.t += 1
        for i, g in enumerate(grads):
            self.ms[i] = self.decay * self.ms[i] + (1 - self.decay) * g**2
            denom = self.ms[i] + self.eps
            if self.centered:
                self.mg[i] = self.decay * self.mg[i] + (1 - self.decay) * g
                denom = self.ms[i] - self.mg[i] ** 2 + self.eps
            self.mom[i] = self.mu * self.mom[i] + _div(lr * g, np.sqrt(denom))
            self.params[i] -= self.mom[i]


class Lasagne:
    """lasagne/updates.py, rmsprop: `accu_new = rho * accu + (one - rho) * grad **
    2`; `updates[param] = param - (learning_rate * grad / T.sqrt(accu_new +
    epsilon))`, accumulators start at zeros."""

    def __init__(self, learning_rate=1.0, rho=0.9, epsilon=1e-6):
        self.lr, self.rho, self.eps = learning_rate, rho, epsilon

    def init(self, params):
        self.params = [np.array(p, np.float64) for p in params]
        self.accu = [np.zeros_like(p) for p in self.params]

    def step(self, grads):
        for i, g in enumerate(grads):
            self.accu[i] = self.rho * self.accu[i] + (1 - self.rho) * g**2
            self.params[i] -= self.lr * g / np.sqrt(self.accu[i] + self.eps)


class Hinton2012:
    """Hinton, lecture 6e slide 29 ("rmsprop"): `MeanSquare(w, t) = 0.9
    MeanSquare(w, t-1) + 0.1 (dE/dw)^2`; divide the gradient by
    `sqrt(MeanSquare(w, t))`."""

    def __init__(self, learning_rate, decay=0.9):
        self.lr, self.decay = learning_rate, decay

    def init(self, params):
        self.params = [np.array(p, np.float64) for p in params]
        self.ms = [np.zeros_like(p) for p in self.params]

    def step(self, grads):
        for i, g in enumerate(grads):
            self.ms[i] = self.decay * self.ms[i] + (1 - self.decay) * g**2
            self.params[i] -= self.lr * _div(g, np.sqrt(self.ms[i]))


class Graves2013:
    """Graves 2013, arXiv:1308.0850v5, section 4 eqs. 38-41: n_i = aleph n_i +
    (1 - aleph) e_i^2; g_i = aleph g_i + (1 - aleph) e_i; Delta_i = beth Delta_i
    - gimel e_i / sqrt(n_i - g_i^2 + daleth); w_i = w_i + Delta_i."""

    def __init__(self, learning_rate=1e-4, decay=0.95, momentum=0.9, epsilon=1e-4):
        self.lr, self.a, self.b, self.k = learning_rate, decay, momentum, epsilon

    def init(self, params):
        self.params = [np.array(p, np.float64) for p in params]
        self.n = [np.zeros_like(p) for p in self.params]
        self.g = [np.zeros_like(p) for p in self.params]
        self.delta = [np.zeros_like(p) for p in self.params]

    def step(self, grads):
        for i, e in enumerate(grads):
            self.n[i] = self.a * self.n[i] + (1 - self.a) * e**2
            self.g[i] = self.a * self.g[i] + (1 - self.a) * e
            denom = np.sqrt(self.n[i] - self.g[i] ** 2 + self.k)
            self.delta[i] = self.b * self.delta[i] - self.lr * e / denom
            self.params[i] += self.delta[i]


class DQN2015:
    """deepmind DQN 3.0, dqn/NeuralQLearner.lua, nql:qLearnMinibatch: `self.g:mul(
    0.95):add(0.05, self.dw)`; `self.g2:mul(0.95):add(0.05, dw^2)`; `tmp =
    sqrt(g2 - g^2 + 0.01)`; `self.deltas:mul(0):addcdiv(self.lr, self.dw,
    self.tmp)`; `self.w:add(self.deltas)`. There `dw` is the ascent direction,
    so it is the negated loss gradient here."""

    def __init__(self, learning_rate=2.5e-4, decay=0.95, min_squared_gradient=0.01):
        self.lr, self.decay, self.msg = learning_rate, decay, min_squared_gradient

    def init(self, params):
        self.w = [np.array(p, np.float64) for p in params]
        self.g = [np.zeros_like(p) for p in self.w]
        self.g2 = [np.zeros_like(p) for p in self.w]

    @property
    def params(self):
        return self.w

    def step(self, grads):
        for i, loss_grad in enumerate(grads):
            dw = -loss_grad
            self.g[i] = self.g[i] * self.decay + (1 - self.decay) * dw
            self.g2[i] = self.g2[i] * self.decay + (1 - self.decay) * dw * dw
            tmp = np.sqrt(self.g2[i] - self.g[i] * self.g[i] + self.msg)
            self.w[i] += self.lr * dw / tmp
