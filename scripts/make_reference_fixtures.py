#!/usr/bin/env python3
"""Writes Tests/ModelsTests/Fixtures/reference.json: forward outputs, losses and gradients of a
small LSTM churn/CLV model and a small two-layer GraphSAGE classifier.

The Swift models are hand-written, so the tests need numbers computed independently of them.
PyTorch is not available here, so this script re-implements both models' forward and backward
passes in float64 NumPy, following PyTorch's equations and parameter layouts (nn.LSTM,
BCEWithLogitsLoss, PyG/DGL-style SAGEConv with mean aggregation, CrossEntropyLoss). Because the
backward pass is hand-written too, every gradient is checked against central finite differences
of the forward loss before anything is written; the script exits non-zero if any check fails.

Run: python3 scripts/make_reference_fixtures.py   (deterministic: fixed seed, fixed draw order)
"""

import json
import os
import sys

import numpy as np

SEED = 20261123
OUTPUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                      "Tests", "ModelsTests", "Fixtures", "reference.json")

# Finite differences: the 4-point central stencil
#   f'(x) ~ (-f(x+2h) + 8 f(x+h) - 8 f(x-h) + f(x-2h)) / (12 h)
# has O(h^4) truncation error. Rounding error is ~eps |f| / h, and some LSTM gradients are as
# small as ~4e-7, so h must not be tiny: at h = 1e-3 truncation (~1e-13) and rounding (~1e-13)
# are balanced and the worst relative error is ~1e-7, an order of magnitude inside tolerance.
FD_STEP = 1e-3
FD_TOLERANCE = 1e-6
# Relative error per element is |analytic - numeric| / max(|analytic|, |numeric|, FD_FLOOR):
# the floor stops gradients that are (near) zero from turning rounding noise into huge
# relative errors; at 1e-6 it is still far below any gradient the tests care about.
FD_FLOOR = 1e-6


def sigmoid(z):
    # Two branches so that neither exp overflows for large |z|.
    return np.where(z >= 0, 1.0 / (1.0 + np.exp(-np.abs(z))),
                    np.exp(-np.abs(z)) / (1.0 + np.exp(-np.abs(z))))


def softplus(z):
    # log(1 + e^z) without overflow; log sigmoid(z) = -softplus(-z).
    return np.logaddexp(0.0, z)


# ----------------------------------------------------------------------------------------------
# LSTM
# ----------------------------------------------------------------------------------------------

B, T, I, H = 3, 4, 5, 6
LSTM_LAYERS = 2
LSTM_LENGTHS = np.array([4, 2, 3], dtype=np.int64)
CHURN_LABEL = np.array([1.0, 0.0, 1.0])
SPEND = np.array([10.0, 0.0, 3.5])
POS_WEIGHT = 2.0
CLV_WEIGHT = 0.5


def lstm_parameter_shapes():
    """PyTorch names and shapes, in the order the parameters are drawn from the generator."""
    shapes = {}
    for layer in range(LSTM_LAYERS):
        in_size = I if layer == 0 else H
        shapes[f"lstm.weight_ih_l{layer}"] = (4 * H, in_size)
        shapes[f"lstm.weight_hh_l{layer}"] = (4 * H, H)
        shapes[f"lstm.bias_ih_l{layer}"] = (4 * H,)
        shapes[f"lstm.bias_hh_l{layer}"] = (4 * H,)
    shapes["churn_head.weight"] = (1, H)
    shapes["churn_head.bias"] = (1,)
    shapes["clv_head.weight"] = (1, H)
    shapes["clv_head.bias"] = (1,)
    return shapes


def lstm_layer_forward(xs, w_ih, w_hh, b_ih, b_hh):
    """One LSTM layer over one unpadded sequence xs [L, in], starting from h0 = c0 = 0.

    Gate order in the stacked weights is PyTorch's: input, forget, cell (g), output.
    Returns hs [L, H] and the per-step values the backward pass needs.
    """
    steps = xs.shape[0]
    h = np.zeros(H)
    c = np.zeros(H)
    hs = np.zeros((steps, H))
    cache = []
    for t in range(steps):
        gates = w_ih @ xs[t] + b_ih + w_hh @ h + b_hh
        i = sigmoid(gates[0:H])
        f = sigmoid(gates[H:2 * H])
        g = np.tanh(gates[2 * H:3 * H])
        o = sigmoid(gates[3 * H:4 * H])
        c_new = f * c + i * g
        tanh_c = np.tanh(c_new)
        h_new = o * tanh_c
        cache.append((xs[t], h, c, i, f, g, o, tanh_c))
        h, c = h_new, c_new
        hs[t] = h
    return hs, cache


def lstm_layer_backward(dhs, cache, w_ih, w_hh):
    """Backpropagation through time for lstm_layer_forward.

    dhs [L, H] is the loss gradient arriving at each h_t from above (next layer or head).
    Returns dxs [L, in] and gradients for (w_ih, w_hh, b_ih, b_hh).
    """
    steps = dhs.shape[0]
    dw_ih = np.zeros_like(w_ih)
    dw_hh = np.zeros_like(w_hh)
    db = np.zeros(4 * H)
    dxs = np.zeros((steps, w_ih.shape[1]))
    dh_next = np.zeros(H)   # gradient reaching h_t through step t+1's recurrence
    dc_next = np.zeros(H)   # gradient reaching c_t through step t+1's cell update
    for t in reversed(range(steps)):
        x, h_prev, c_prev, i, f, g, o, tanh_c = cache[t]
        dh = dhs[t] + dh_next
        do = dh * tanh_c
        dc = dc_next + dh * o * (1.0 - tanh_c ** 2)
        di = dc * g
        df = dc * c_prev
        dg = dc * i
        # Back through the gate nonlinearities to the pre-activations.
        dgates = np.concatenate([di * i * (1.0 - i), df * f * (1.0 - f),
                                 dg * (1.0 - g ** 2), do * o * (1.0 - o)])
        dw_ih += np.outer(dgates, x)
        dw_hh += np.outer(dgates, h_prev)
        db += dgates
        dxs[t] = w_ih.T @ dgates
        dh_next = w_hh.T @ dgates
        dc_next = dc * f
    # b_ih and b_hh enter the gates identically, so they receive the same gradient.
    return dxs, dw_ih, dw_hh, db, db.copy()


def stacked_forward(params, xs):
    """All LSTM layers over one unpadded sequence xs [L, I]: the top layer's hs and each layer's cache."""
    caches = []
    for layer in range(LSTM_LAYERS):
        xs, cache = lstm_layer_forward(
            xs, params[f"lstm.weight_ih_l{layer}"], params[f"lstm.weight_hh_l{layer}"],
            params[f"lstm.bias_ih_l{layer}"], params[f"lstm.bias_hh_l{layer}"])
        caches.append(cache)
    return xs, caches


def stacked_backward(params, caches, d_last, steps, grads):
    """Back through all layers from d(loss)/d(h) at the last step; adds the weight gradients
    into `grads` and returns d(loss)/d(xs) [L, I]."""
    dhs = np.zeros((steps, H))
    dhs[-1] = d_last
    for layer in reversed(range(LSTM_LAYERS)):
        dhs, dw_ih, dw_hh, db_ih, db_hh = lstm_layer_backward(
            dhs, caches[layer], params[f"lstm.weight_ih_l{layer}"], params[f"lstm.weight_hh_l{layer}"])
        grads[f"lstm.weight_ih_l{layer}"] += dw_ih
        grads[f"lstm.weight_hh_l{layer}"] += dw_hh
        grads[f"lstm.bias_ih_l{layer}"] += db_ih
        grads[f"lstm.bias_hh_l{layer}"] += db_hh
    return dhs


def lstm_forward_backward(params, x, want_grads=True):
    """Whole model: stacked LSTM over packed sequences, two linear heads, combined loss.

    Variable lengths follow pack_padded_sequence: sequence b only runs steps t < lengths[b],
    so padded steps never touch the state and get exactly zero input gradient. Running each
    sequence on its own slice is the simplest way to get exactly those semantics.
    """
    churn_logit = np.zeros(B)
    clv_pred = np.zeros(B)
    features = np.zeros((B, H))
    caches = []
    for b in range(B):
        hs, seq_caches = stacked_forward(params, x[b, :LSTM_LENGTHS[b]])
        caches.append(seq_caches)
        features[b] = hs[-1]   # top layer's h at step lengths[b] - 1
        churn_logit[b] = params["churn_head.weight"][0] @ features[b] + params["churn_head.bias"][0]
        clv_pred[b] = params["clv_head.weight"][0] @ features[b] + params["clv_head.bias"][0]

    # BCEWithLogitsLoss(pos_weight=p): -[p y log s(z) + (1 - y) log(1 - s(z))], with
    # log s(z) = -softplus(-z) and log(1 - s(z)) = -softplus(z) for numerical stability.
    y = CHURN_LABEL
    bce = POS_WEIGHT * y * softplus(-churn_logit) + (1.0 - y) * softplus(churn_logit)
    clv_target = np.log1p(SPEND)
    mse = (clv_pred - clv_target) ** 2
    loss = bce.mean() + CLV_WEIGHT * mse.mean()
    outputs = {"churn_logit": churn_logit, "clv_pred": clv_pred, "loss": np.array([loss])}
    if not want_grads:
        return outputs, None, None

    # d bce / dz = -p y (1 - s(z)) + (1 - y) s(z); both losses are means over the batch.
    s = sigmoid(churn_logit)
    d_logit = (-POS_WEIGHT * y * (1.0 - s) + (1.0 - y) * s) / B
    d_clv = CLV_WEIGHT * 2.0 * (clv_pred - clv_target) / B

    grads = {name: np.zeros_like(value) for name, value in params.items()}
    grads["churn_head.weight"][0] = d_logit @ features
    grads["churn_head.bias"][0] = d_logit.sum()
    grads["clv_head.weight"][0] = d_clv @ features
    grads["clv_head.bias"][0] = d_clv.sum()
    dx = np.zeros_like(x)   # padded steps keep their zero gradient
    for b in range(B):
        # Only the last real step of the top layer feeds the heads.
        d_last = d_logit[b] * params["churn_head.weight"][0] + d_clv[b] * params["clv_head.weight"][0]
        dx[b, :LSTM_LENGTHS[b]] = stacked_backward(params, caches[b], d_last, LSTM_LENGTHS[b], grads)
    return outputs, grads, dx


def make_lstm_case(rng):
    # Draw order (fixed, part of the fixture's definition): x, then parameters in
    # lstm_parameter_shapes() order.
    x = rng.uniform(-1.0, 1.0, size=(B, T, I))
    for b in range(B):
        x[b, LSTM_LENGTHS[b]:] = 0.0   # padding, as a padded batch would hold
    params = {name: rng.uniform(-0.5, 0.5, size=shape)
              for name, shape in lstm_parameter_shapes().items()}

    outputs, grads, dx = lstm_forward_backward(params, x)

    def loss_fn(p, xx):
        return lstm_forward_backward(p, xx, want_grads=False)[0]["loss"][0]

    errors = check_gradients(loss_fn, params, x, grads, dx)
    # pack_padded_sequence semantics: padded steps must have exactly zero gradient.
    for b in range(B):
        if np.any(dx[b, LSTM_LENGTHS[b]:] != 0.0):
            fail(f"lstm: grad.x is non-zero at padded steps of sequence {b}")

    case = {
        "x": x,
        "lengths": LSTM_LENGTHS,
        "churn_label": CHURN_LABEL,
        "spend": SPEND,
        "pos_weight": np.array([POS_WEIGHT]),
        "clv_weight": np.array([CLV_WEIGHT]),
    }
    case.update(params)
    case.update(outputs)
    case.update({f"grad.{name}": grads[name] for name in params})
    case["grad.x"] = dx
    return case, errors


# ----------------------------------------------------------------------------------------------
# LSTM with the shipped heads: churn, zero-inflated lognormal CLV, lifecycle stages
# ----------------------------------------------------------------------------------------------

# Spend with a zero (the ZILN's point mass), small and large positives.
HEADS_SPEND = np.array([10.0, 0.0, 3.5])
STAGES = 3
STAGE_LABEL = np.array([2, 0, 1], dtype=np.int64)
STAGE_CLASS_WEIGHT = np.array([1.0, 2.0, 0.5])
STAGE_WEIGHT = 0.7
# google/lifetime_value floors sigma at sqrt(float32 epsilon); the fixture stays clear of it.
MIN_SIGMA = 3.1622777e-4
# Units of the dense path from the customer-level inputs (last step, per-feature means over the
# valid steps, length / T) to the heads.
CUSTOMER_UNITS = 3
CUSTOMER_INPUTS = 2 * I + 1


def customer_inputs(xs, length):
    """The CustomerInputs summary of one sequence's valid steps xs [length, I]."""
    return np.concatenate([xs[length - 1], xs[:length].mean(axis=0), [length / T]])


def heads_parameter_shapes():
    shapes = {name: shape for name, shape in lstm_parameter_shapes().items() if "head" not in name}
    shapes["customer_dense.weight"] = (CUSTOMER_UNITS, CUSTOMER_INPUTS)
    shapes["customer_dense.bias"] = (CUSTOMER_UNITS,)
    shapes["churn_head.weight"] = (1, H + CUSTOMER_UNITS)
    shapes["clv_head.weight"] = (3, H + CUSTOMER_UNITS)
    shapes["stage_head.weight"] = (STAGES, H + CUSTOMER_UNITS)
    shapes["churn_head.bias"] = (1,)
    shapes["clv_head.bias"] = (3,)
    shapes["stage_head.bias"] = (STAGES,)
    return shapes


def ziln_nll(spend, logits):
    """Zero-inflated lognormal negative log-likelihood per customer (Wang, Liu & Miao 2019).

    BCE of the purchase logit against spend > 0, plus for spenders the lognormal NLL of the
    spend itself: log y + log sigma + log(2 pi)/2 + (log y - mu)^2 / (2 sigma^2).
    """
    positive = (spend > 0).astype(float)
    bce = softplus(logits[:, 0]) - positive * logits[:, 0]
    sigma = np.maximum(softplus(logits[:, 2]), MIN_SIGMA)
    safe = np.where(positive > 0, spend, 1.0)
    z = (np.log(safe) - logits[:, 1]) / sigma
    lognormal = np.log(safe) + np.log(sigma) + 0.5 * np.log(2 * np.pi) + 0.5 * z ** 2
    return bce + positive * lognormal


def heads_forward_backward(params, x, want_grads=True):
    """The LSTM of lstm_forward_backward, a ReLU dense path from the customer-level inputs,
    [churn | ZILN (3) | stages] heads on [h_last, dense], and the loss
    BCE + clv_weight * ZILN NLL + stage_weight * class-weighted cross-entropy."""
    features = np.zeros((B, H + CUSTOMER_UNITS))
    summaries = np.zeros((B, CUSTOMER_INPUTS))
    pre_activation = np.zeros((B, CUSTOMER_UNITS))
    caches = []
    for b in range(B):
        layer_input, seq_caches = stacked_forward(params, x[b, :LSTM_LENGTHS[b]])
        caches.append(seq_caches)
        summaries[b] = customer_inputs(x[b], LSTM_LENGTHS[b])
        pre_activation[b] = params["customer_dense.weight"] @ summaries[b] + params["customer_dense.bias"]
        features[b] = np.concatenate([layer_input[-1], np.maximum(pre_activation[b], 0.0)])
    outputs_extra = {"relu_pre_activation": pre_activation}
    weight = np.concatenate([params["churn_head.weight"], params["clv_head.weight"], params["stage_head.weight"]])
    bias = np.concatenate([params["churn_head.bias"], params["clv_head.bias"], params["stage_head.bias"]])
    head = features @ weight.T + bias            # [B, 1 + 3 + STAGES]
    churn_logit, clv, stage_logits = head[:, 0], head[:, 1:4], head[:, 4:]

    y = CHURN_LABEL
    bce = POS_WEIGHT * y * softplus(-churn_logit) + (1.0 - y) * softplus(churn_logit)
    ziln = ziln_nll(HEADS_SPEND, clv)
    shifted = stage_logits - stage_logits.max(axis=1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    w = STAGE_CLASS_WEIGHT[STAGE_LABEL]
    ce = -(w * log_softmax[np.arange(B), STAGE_LABEL]).sum() / w.sum()
    loss = bce.mean() + CLV_WEIGHT * ziln.mean() + STAGE_WEIGHT * ce
    outputs = {"head_outputs": head, "loss": np.array([loss])}
    if not want_grads:
        return outputs, None, outputs_extra

    d_head = np.zeros_like(head)
    s = sigmoid(churn_logit)
    d_head[:, 0] = (-POS_WEIGHT * y * (1.0 - s) + (1.0 - y) * s) / B
    positive = (HEADS_SPEND > 0).astype(float)
    d_head[:, 1] = CLV_WEIGHT * (sigmoid(clv[:, 0]) - positive) / B
    sigma = np.maximum(softplus(clv[:, 2]), MIN_SIGMA)
    safe = np.where(positive > 0, HEADS_SPEND, 1.0)
    z = (np.log(safe) - clv[:, 1]) / sigma
    d_head[:, 2] = CLV_WEIGHT * positive * (-z / sigma) / B
    d_sigma = positive * (1.0 - z ** 2) / sigma
    d_head[:, 3] = CLV_WEIGHT * d_sigma * sigmoid(clv[:, 2]) * (softplus(clv[:, 2]) > MIN_SIGMA) / B
    softmax = np.exp(log_softmax)
    onehot = np.eye(STAGES)[STAGE_LABEL]
    d_head[:, 4:] = STAGE_WEIGHT * w[:, None] * (softmax - onehot) / w.sum()

    grads = {name: np.zeros_like(value) for name, value in params.items()}
    d_weight = d_head.T @ features
    d_bias = d_head.sum(axis=0)
    grads["churn_head.weight"] = d_weight[0:1]
    grads["clv_head.weight"] = d_weight[1:4]
    grads["stage_head.weight"] = d_weight[4:]
    grads["churn_head.bias"] = d_bias[0:1]
    grads["clv_head.bias"] = d_bias[1:4]
    grads["stage_head.bias"] = d_bias[4:]
    dx = np.zeros_like(x)
    d_features = d_head @ weight
    d_dense = d_features[:, H:] * (pre_activation > 0)
    grads["customer_dense.weight"] = d_dense.T @ summaries
    grads["customer_dense.bias"] = d_dense.sum(axis=0)
    d_summaries = d_dense @ params["customer_dense.weight"]
    for b in range(B):
        steps = LSTM_LENGTHS[b]
        dx[b, steps - 1] += d_summaries[b, :I]
        dx[b, :steps] += d_summaries[b, I:2 * I] / steps
        dx[b, :steps] += stacked_backward(params, caches[b], d_features[b, :H], steps, grads)
    return outputs, grads, dx


def make_heads_case(rng):
    # Drawn after the other two cases, so theirs stay as they were.
    x = rng.uniform(-1.0, 1.0, size=(B, T, I))
    for b in range(B):
        x[b, LSTM_LENGTHS[b]:] = 0.0
    params = {name: rng.uniform(-0.5, 0.5, size=shape) for name, shape in heads_parameter_shapes().items()}
    outputs, grads, dx = heads_forward_backward(params, x)
    # Finite differences move a pre-activation by ~1e-3; one that close to the ReLU's kink
    # would make the numeric gradient straddle it.
    pre = heads_forward_backward(params, x, want_grads=False)[2]["relu_pre_activation"]
    if np.abs(pre).min() < RELU_MARGIN:
        fail(f"lstm_heads: a dense pre-activation is {np.abs(pre).min():.2e} from the ReLU kink")
    if (pre > 0).all() or (pre <= 0).all():
        fail("lstm_heads: the dense path's ReLU must be both on and off somewhere for the check to mean anything")

    def loss_fn(p, xx):
        return heads_forward_backward(p, xx, want_grads=False)[0]["loss"][0]

    errors = check_gradients(loss_fn, params, x, grads, dx)
    case = {
        "x": x, "lengths": LSTM_LENGTHS, "churn_label": CHURN_LABEL, "spend": HEADS_SPEND,
        "stage": STAGE_LABEL, "stage_class_weight": STAGE_CLASS_WEIGHT,
        "pos_weight": np.array([POS_WEIGHT]), "clv_weight": np.array([CLV_WEIGHT]),
        "stage_weight": np.array([STAGE_WEIGHT]),
        "ziln_nll": ziln_nll(HEADS_SPEND, outputs["head_outputs"][:, 1:4]),
    }
    case.update(params)
    case.update(outputs)
    case.update({f"grad.{name}": grads[name] for name in params})
    case["grad.x"] = dx
    return case, errors


# ----------------------------------------------------------------------------------------------
# GraphSAGE
# ----------------------------------------------------------------------------------------------

F_IN, HIDDEN, K = 4, 5, 3
# Block 0: 9 sources, the first 5 are the destinations. Destination 1 has no neighbours,
# destination 2 lists source 7 twice (it counts twice in the mean).
BLOCK0_NUM_SRC = 9
BLOCK0_NUM_DST = 5
BLOCK0_OFFSETS = np.array([0, 3, 3, 6, 8, 11], dtype=np.int64)
BLOCK0_INDICES = np.array([1, 5, 6,   7, 7, 3,   0, 8,   2, 6, 4], dtype=np.int64)
# Block 1: sources are layer 0's 5 outputs, the first 3 are the destinations. Destination 2
# has no neighbours.
BLOCK1_NUM_DST = 3
BLOCK1_OFFSETS = np.array([0, 2, 5, 5], dtype=np.int64)
BLOCK1_INDICES = np.array([3, 4,   0, 2, 1], dtype=np.int64)
SAGE_LABELS = np.array([2, 0, 1], dtype=np.int64)
CLASS_WEIGHT = np.array([1.0, 2.0, 0.5])
# Every input to the first layer is in [-1, 1] and every weight in [-0.5, 0.5], so moving one
# parameter or one feature by at most 2 * FD_STEP moves a pre-activation by at most ~2e-3. A
# 1e-2 margin therefore keeps all finite-difference evaluations on the same side of the ReLU
# kink (the check in sage_forward_backward verifies it rather than trusting this estimate).
RELU_MARGIN = 1e-2
BLOCKS = [(BLOCK0_OFFSETS, BLOCK0_INDICES, BLOCK0_NUM_DST),
          (BLOCK1_OFFSETS, BLOCK1_INDICES, BLOCK1_NUM_DST)]


def sage_parameter_shapes():
    """PyTorch (PyG SAGEConv) names and shapes, in draw order."""
    return {
        "convs.0.lin_l.weight": (HIDDEN, F_IN),
        "convs.0.lin_l.bias": (HIDDEN,),
        "convs.0.lin_r.weight": (HIDDEN, F_IN),
        "convs.1.lin_l.weight": (K, HIDDEN),
        "convs.1.lin_l.bias": (K,),
        "convs.1.lin_r.weight": (K, HIDDEN),
    }


def sage_layer_forward(h_src, offsets, indices, num_dst, w_l, b_l, w_r):
    """out_i = W_l mean_{j in N(i)} h_src[j] + b_l + W_r h_src[i] for the first num_dst sources.

    The mean of an empty neighbourhood is the zero vector; duplicated indices count each time.
    """
    agg = np.zeros((num_dst, h_src.shape[1]))
    for i in range(num_dst):
        neighbours = indices[offsets[i]:offsets[i + 1]]
        if len(neighbours) > 0:
            agg[i] = h_src[neighbours].mean(axis=0)
    out = agg @ w_l.T + b_l + h_src[:num_dst] @ w_r.T
    return out, agg


def sage_layer_backward(d_out, h_src, agg, offsets, indices, num_dst, w_l, w_r):
    """Returns d h_src and gradients for (w_l, b_l, w_r)."""
    dw_l = d_out.T @ agg
    db_l = d_out.sum(axis=0)
    dw_r = d_out.T @ h_src[:num_dst]
    dh_src = np.zeros_like(h_src)
    dh_src[:num_dst] += d_out @ w_r   # root (self) term: destination i is source i
    d_agg = d_out @ w_l
    for i in range(num_dst):
        neighbours = indices[offsets[i]:offsets[i + 1]]
        # Each listed neighbour (duplicates included) gets 1/deg of the aggregate's gradient;
        # np.add.at accumulates repeated indices instead of overwriting.
        if len(neighbours) > 0:
            np.add.at(dh_src, neighbours, d_agg[i] / len(neighbours))
    return dh_src, dw_l, db_l, dw_r


def sage_forward_backward(params, x, want_grads=True, expected_relu_mask=None):
    pre0, agg0 = sage_layer_forward(x, *BLOCKS[0], params["convs.0.lin_l.weight"],
                                    params["convs.0.lin_l.bias"], params["convs.0.lin_r.weight"])
    relu_mask = pre0 > 0.0
    if expected_relu_mask is not None and np.any(relu_mask != expected_relu_mask):
        # A finite-difference step crossed the ReLU kink: the derivative there is undefined.
        fail("sage: finite-difference step changed the ReLU pattern; increase RELU_MARGIN")
    h1 = pre0 * relu_mask
    logits, agg1 = sage_layer_forward(h1, *BLOCKS[1], params["convs.1.lin_l.weight"],
                                      params["convs.1.lin_l.bias"], params["convs.1.lin_r.weight"])

    # CrossEntropyLoss(weight=w, reduction="mean"): sum_i w[y_i] nll_i / sum_i w[y_i].
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    rows = np.arange(BLOCK1_NUM_DST)
    w = CLASS_WEIGHT[SAGE_LABELS]
    loss = -(w * log_softmax[rows, SAGE_LABELS]).sum() / w.sum()
    outputs = {"logits": logits, "loss": np.array([loss])}
    if not want_grads:
        return outputs, None, None, pre0

    # d loss / d logits_i = w[y_i] (softmax_i - onehot(y_i)) / sum w.
    d_logits = np.exp(log_softmax)
    d_logits[rows, SAGE_LABELS] -= 1.0
    d_logits *= (w / w.sum())[:, None]

    grads = {}
    dh1, grads["convs.1.lin_l.weight"], grads["convs.1.lin_l.bias"], grads["convs.1.lin_r.weight"] = \
        sage_layer_backward(d_logits, h1, agg1, *BLOCKS[1], params["convs.1.lin_l.weight"],
                            params["convs.1.lin_r.weight"])
    d_pre0 = dh1 * relu_mask
    dx, grads["convs.0.lin_l.weight"], grads["convs.0.lin_l.bias"], grads["convs.0.lin_r.weight"] = \
        sage_layer_backward(d_pre0, x, agg0, *BLOCKS[0], params["convs.0.lin_l.weight"],
                            params["convs.0.lin_r.weight"])
    return outputs, grads, dx, pre0


def make_sage_case(rng):
    # Draw order: x, then parameters in sage_parameter_shapes() order. If any layer-0
    # pre-activation lies within RELU_MARGIN of zero, the parameters are drawn again from the
    # same generator (still deterministic), so finite differences never straddle the kink.
    x = rng.uniform(-1.0, 1.0, size=(BLOCK0_NUM_SRC, F_IN))
    for attempt in range(100):
        params = {name: rng.uniform(-0.5, 0.5, size=shape)
                  for name, shape in sage_parameter_shapes().items()}
        outputs, grads, dx, pre0 = sage_forward_backward(params, x)
        if np.all(np.abs(pre0) > RELU_MARGIN):
            break
    else:
        fail("sage: could not draw parameters with all ReLU inputs away from zero")
    relu_mask = pre0 > 0.0
    if relu_mask.all() or not relu_mask.any():
        # Not an error, but then the fixture would not exercise one side of the ReLU.
        print(f"warning: sage ReLU mask is uniform ({int(relu_mask.sum())} of {relu_mask.size} active)")

    def loss_fn(p, xx):
        return sage_forward_backward(p, xx, want_grads=False,
                                     expected_relu_mask=relu_mask)[0]["loss"][0]

    errors = check_gradients(loss_fn, params, x, grads, dx)

    case = {
        "x": x,
        "block0.offsets": BLOCK0_OFFSETS,
        "block0.indices": BLOCK0_INDICES,
        "block0.num_dst": np.array([BLOCK0_NUM_DST], dtype=np.int64),
        "block1.offsets": BLOCK1_OFFSETS,
        "block1.indices": BLOCK1_INDICES,
        "block1.num_dst": np.array([BLOCK1_NUM_DST], dtype=np.int64),
        "labels": SAGE_LABELS,
        "class_weight": CLASS_WEIGHT,
    }
    case.update(params)
    case.update(outputs)
    case.update({f"grad.{name}": grads[name] for name in params})
    case["grad.x"] = dx
    return case, errors, int(relu_mask.sum()), relu_mask.size


# ----------------------------------------------------------------------------------------------
# Gradient check, output
# ----------------------------------------------------------------------------------------------

def fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def numeric_gradient(f, array):
    """Central finite differences of the scalar f() with respect to every element of array,
    perturbing it in place (and restoring it exactly afterwards)."""
    grad = np.zeros_like(array)
    flat = array.reshape(-1)   # a view: writes go through to array
    for k in range(flat.size):
        original = flat[k]
        values = []
        for offset in (2.0, 1.0, -1.0, -2.0):
            flat[k] = original + offset * FD_STEP
            values.append(f())
        flat[k] = original
        grad.reshape(-1)[k] = (-values[0] + 8.0 * values[1] - 8.0 * values[2] + values[3]) \
            / (12.0 * FD_STEP)
    return grad


def max_relative_error(analytic, numeric):
    denominator = np.maximum(np.maximum(np.abs(analytic), np.abs(numeric)), FD_FLOOR)
    return float(np.max(np.abs(analytic - numeric) / denominator))


def check_gradients(loss_fn, params, x, grads, dx):
    """Compares every analytic gradient with finite differences; returns {name: error}."""
    errors = {}
    for name, value in params.items():
        numeric = numeric_gradient(lambda: loss_fn(params, x), value)
        errors[f"grad.{name}"] = max_relative_error(grads[name], numeric)
    numeric = numeric_gradient(lambda: loss_fn(params, x), x)
    errors["grad.x"] = max_relative_error(dx, numeric)
    return errors


def tensor_json(value):
    """{"shape": [...], "data": [...]} with data flattened row-major. Integer arrays stay ints;
    floats go through Python float, whose JSON form is repr (shortest exact round-trip)."""
    array = np.asarray(value)
    if np.issubdtype(array.dtype, np.integer):
        data = [int(v) for v in array.reshape(-1)]
    else:
        data = [float(v) for v in array.reshape(-1)]
        if not all(np.isfinite(data)):
            fail("non-finite value in output")
    return {"shape": list(array.shape), "data": data}


def write_fixtures(path, cases):
    # One tensor per line keeps diffs of the fixture readable while staying plain JSON.
    lines = ["{"]
    for case_index, (case_name, tensors) in enumerate(cases.items()):
        lines.append(f"  {json.dumps(case_name)}: {{")
        names = list(tensors)
        for index, name in enumerate(names):
            comma = "," if index + 1 < len(names) else ""
            encoded = json.dumps(tensor_json(tensors[name]), allow_nan=False)
            lines.append(f"    {json.dumps(name)}: {encoded}{comma}")
        lines.append("  }" + ("," if case_index + 1 < len(cases) else ""))
    lines.append("}")
    text = "\n".join(lines) + "\n"
    json.loads(text)   # guard against a formatting mistake producing invalid JSON
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        handle.write(text)


def main():
    rng = np.random.default_rng(SEED)
    lstm_case, lstm_errors = make_lstm_case(rng)
    sage_case, sage_errors, relu_active, relu_total = make_sage_case(rng)
    heads_case, heads_errors = make_heads_case(rng)

    worst = 0.0
    for case_name, errors in (("lstm", lstm_errors), ("sage", sage_errors), ("lstm_heads", heads_errors)):
        print(f"{case_name}: max relative error vs finite differences")
        for name, error in errors.items():
            print(f"  {name:28s} {error:.2e}")
            worst = max(worst, error)
    print(f"lstm loss {lstm_case['loss'][0]:.17g}, sage loss {sage_case['loss'][0]:.17g}, "
          f"sage ReLU active {relu_active}/{relu_total}")
    if worst >= FD_TOLERANCE:
        fail(f"gradient check failed: worst relative error {worst:.2e} >= {FD_TOLERANCE:.0e}")

    write_fixtures(OUTPUT, {"lstm": lstm_case, "sage": sage_case, "lstm_heads": heads_case})
    print(f"wrote {os.path.normpath(OUTPUT)} (worst error {worst:.2e})")


if __name__ == "__main__":
    main()
