"""A policy exported by `rlcli export format=npz`, in NumPy alone (no JAX, no rlcli).

`rlcli export` copies this file as `policy.py` beside `policy.npz`:

    import policy                      # the directory on sys.path
    action = policy.act(obs)           # obs [batch, *obs_shape] -> the deterministic action
    action = policy.act(obs, deterministic=False, rng=np.random.default_rng(0))
    log_p = policy.log_prob(obs, action)   # log pi(a|s) of given actions, [batch]

A recurrent policy (network=gru) is a step function with its hidden state as input and output:

    state = policy.initial_state(batch)              # zeros [batch, gru_size]: an episode's start
    action, state = policy.act(obs, state=state)     # one step; reset rows to 0 where episodes start
    log_p, state = policy.log_prob(obs, action, state=state)

`load(path)` reads another export's npz. The arithmetic is rlcli's own act function in float32:
observation normalisation with the checkpoint's frozen statistics, (o - mean) / sqrt(var + eps)
clipped to +-clip_obs; the convolutions of a CNN torso (network=cnn); the MLP; a GRU cell
(network=gru, flax's GRUCell: r = sigmoid(x W_ir + b_ir + h W_hr), z = sigmoid(x W_iz + b_iz +
h W_hz), n = tanh(x W_in + b_in + r (h W_hn + b_hn)), h' = (1 - z) n + z h, whose output h'
feeds the head); then the head of the policy's distribution (001, "How should we parameterize
our policy?"):

* `categorical`: logits; the deterministic action is their argmax, log pi = log softmax;
* `gaussian`: a = mu(s) + sigma z with a learned log-std vector or a log-std head; the
  deterministic action is mu(s), unclipped as rlcli's act gives it (the env clips to
  `action_low`/`action_high`);
* `squashed_gaussian` (SAC, offpolicy_ac): a = tanh(u), u ~ N(mu(s), sigma(s)^2), scaled to the
  action bounds; the deterministic action is tanh(mu(s)) scaled; log pi(a|s) by the change of
  variables of Haarnoja et al. 2018 (eq. 26), with u = atanh of the action in [-1, 1].
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

LOG_2PI = math.log(2.0 * math.pi)
ATANH_LIMIT = 1.0 - 1e-6  # |tanh(u)| is clipped below 1 before u = atanh(a) in log_prob


def load(path: str | Path | None = None) -> dict:
    """The arrays of an export (default: policy.npz beside this file); no pickle."""
    path = Path(__file__).with_name("policy.npz") if path is None else Path(path)
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["kind"], arrays["activation"] = str(arrays["kind"]), str(arrays["activation"])
    return arrays


_default: dict | None = None


def _policy(policy: dict | None) -> dict:
    global _default
    if policy is not None:
        return policy
    if _default is None:
        _default = load()
    return _default


def activate(name: str, x: np.ndarray) -> np.ndarray:
    """flax.linen's activations (gelu: its default tanh approximation)."""
    if name == "tanh":
        return np.tanh(x)
    if name == "relu":
        return np.maximum(x, np.float32(0.0))
    if name == "elu":
        return np.where(x > 0, x, np.expm1(np.minimum(x, np.float32(0.0)))).astype(np.float32)
    if name == "gelu":
        inner = np.float32(math.sqrt(2.0 / math.pi)) * (x + np.float32(0.044715) * x ** 3)
        return np.float32(0.5) * x * (np.float32(1.0) + np.tanh(inner))
    if name == "silu":
        return x / (np.float32(1.0) + np.exp(-x))
    raise ValueError(f"unknown activation {name!r}")


def same_padding(n: int, kernel: int, stride: int) -> tuple[int, int]:
    """(pad before, pad after) of one spatial axis of n positions in a SAME convolution as flax
    (XLA) pads it: ceil(n / stride) outputs, the odd pad after."""
    total = max((-(-n // stride) - 1) * stride + kernel - n, 0)
    return total // 2, total - total // 2


def conv2d_same(x, kernel, stride: int):
    """x [B, H, W, C] convolved (cross-correlated, as flax and XLA do) with kernel [k, k, C, O]
    at `stride`, SAME padding (ceil(n / stride) outputs, the odd pad after) -> [B, H', W', O]."""
    k = kernel.shape[0]
    padded = np.pad(x, ((0, 0), *(same_padding(n, k, stride) for n in x.shape[1:3]), (0, 0)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (k, k), axis=(1, 2))[:, ::stride, ::stride]
    return np.einsum("bhwcij,ijco->bhwo", windows, kernel, optimize=True).astype(np.float32)


def initial_state(batch: int, policy: dict | None = None) -> np.ndarray:
    """A recurrent policy's hidden state at an episode's start: zeros [batch, gru_size]."""
    return np.zeros((batch, int(_policy(policy)["gru_size"])), np.float32)


def gru(x, h, p):
    """One step of the GRU cell: (inputs [B, F], state [B, H]) -> state' [B, H] (its output)."""
    def sigmoid(v):
        return np.float32(1.0) / (np.float32(1.0) + np.exp(-v))

    def dense(name, v):  # the hidden-side r and z layers have no bias
        out = v @ p[f"gru_{name}_kernel"]
        return out + p[f"gru_{name}_bias"] if f"gru_{name}_bias" in p else out

    r = sigmoid(dense("ir", x) + dense("hr", h))
    z = sigmoid(dense("iz", x) + dense("hz", h))
    n = np.tanh(dense("in", x) + r * dense("hn", h))
    return ((np.float32(1.0) - z) * n + z * h).astype(np.float32)


def distribution(obs, policy: dict | None = None, state=None):
    """The distribution's parameters for a batch of observations [B, *obs_shape]: logits [B, A]
    (categorical), or (mean [B, D], log_std [B, D]) of the Gaussian over the action (gaussian)
    or over the pre-squash u (squashed_gaussian). A recurrent policy takes its `state` [B, H]
    (None: zeros) and returns (parameters, state')."""
    p = _policy(policy)
    if "gru_size" in p:
        x, state = _features(obs, p, initial_state(len(obs), p) if state is None else np.asarray(state, np.float32))
        return _head(x, p), state
    return _head(_features(obs, p), p)


def _features(obs, p, state=None):
    x = np.asarray(obs, np.float32).reshape(-1, int(np.prod(p["obs_shape"])))
    if "obs_mean" in p:
        x = np.clip((x - p["obs_mean"].reshape(1, -1)) / p["obs_scale"].reshape(1, -1), -p["obs_clip"], p["obs_clip"])
    if int(p.get("num_conv", 0)):  # network=cnn: the convolutions over [B, H, W, C], then flattened
        x = x.reshape((-1, *map(int, p["obs_shape"])))
        for i in range(int(p["num_conv"])):
            x = activate(p["activation"], conv2d_same(x, p[f"conv_kernel_{i}"], int(p["conv_stride"])) + p[f"conv_bias_{i}"])
        x = x.reshape(x.shape[0], -1)
    for i in range(int(p["num_hidden"])):
        x = activate(p["activation"], x @ p[f"hidden_kernel_{i}"] + p[f"hidden_bias_{i}"])
    if state is None:
        return x
    state = gru(x, state, p)
    return state, state  # the cell's output is its new state


def _head(x, p):
    head = x @ p["head_kernel"] + p["head_bias"]
    if p["kind"] == "categorical":
        return head
    if "sde_log_std" in p:  # gSDE: the per-step variance sum_i features_i^2 sigma_i^2
        variance = np.square(x) @ np.exp(np.float32(2.0) * p["sde_log_std"])
        return np.clip(head, -2.0, 2.0), np.float32(0.5) * np.log(variance + np.float32(1e-6))
    if "log_std" in p:
        return head, np.broadcast_to(p["log_std"], head.shape)
    log_std = x @ p["log_std_kernel"] + p["log_std_bias"]
    if "log_std_clip" in p:
        log_std = np.clip(log_std, p["log_std_clip"][0], p["log_std_clip"][1])
    return head, log_std


def _from_unit(a, p):
    return p["action_low"] + np.float32(0.5) * (a + np.float32(1.0)) * (p["action_high"] - p["action_low"])


def act(obs, deterministic: bool = True, rng: np.random.Generator | None = None, policy: dict | None = None,
        state=None):
    """The policy's action for each observation: [B] int for a Discrete space, [B, D] float32
    for a Box one. deterministic=False samples with `rng` (default: a fresh generator). A
    recurrent policy returns (action, state'), from `state` (None: an episode's start)."""
    p = _policy(policy)
    if "gru_size" in p:
        params, state = distribution(obs, p, state)
        return _act(params, p, deterministic, rng), state
    return _act(distribution(obs, p), p, deterministic, rng)


def _act(params, p, deterministic, rng):
    rng = rng or np.random.default_rng()
    if p["kind"] == "categorical":
        if deterministic:
            return np.argmax(params, axis=-1)
        return np.argmax(params + rng.gumbel(size=params.shape), axis=-1)  # the Gumbel-max trick
    mean, log_std = params
    u = mean if deterministic else (mean + np.exp(log_std) * rng.standard_normal(mean.shape)).astype(np.float32)
    return _from_unit(np.tanh(u), p) if p["kind"] == "squashed_gaussian" else u


def log_prob(obs, action, policy: dict | None = None, state=None):
    """log pi(a|s) [B] of the given actions (in the env's units); a recurrent policy returns
    (log pi, state') from `state` (None: an episode's start)."""
    p = _policy(policy)
    if "gru_size" in p:
        params, state = distribution(obs, p, state)
        return _log_prob(params, action, p), state
    return _log_prob(distribution(obs, p), action, p)


def _log_prob(params, action, p):
    if p["kind"] == "categorical":
        shifted = params - params.max(axis=-1, keepdims=True)
        log_softmax = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
        return np.take_along_axis(log_softmax, np.asarray(action).astype(np.int64)[..., None], axis=-1)[..., 0]
    mean, log_std = params
    action = np.asarray(action, np.float32)
    if p["kind"] == "gaussian":
        return _gaussian_log_prob(mean, log_std, action)
    low, high = p["action_low"], p["action_high"]
    unit = np.clip(np.float32(2.0) * (action - low) / (high - low) - np.float32(1.0), -ATANH_LIMIT, ATANH_LIMIT)
    u = np.arctanh(unit.astype(np.float32))
    log_det = np.sum(np.float32(2.0) * (np.float32(math.log(2.0)) - u - np.logaddexp(np.float32(0.0), -2.0 * u)), axis=-1)
    return _gaussian_log_prob(mean, log_std, u) - log_det - np.sum(np.log(np.float32(0.5) * (high - low)))


def _gaussian_log_prob(mean, log_std, x):
    z = (x - mean) * np.exp(-log_std)
    return np.sum(np.float32(-0.5) * (np.float32(LOG_2PI) + np.float32(2.0) * log_std + z * z), axis=-1)
