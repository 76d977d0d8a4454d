"""Per-example clipping without per-example gradients (ghost / book-keeping clipping).

`clipping.clipped_grad_sum` forms every example's gradient with
`vmap(grad)`: B copies of the parameters, and for a convolution a grouped
convolution per layer, 6–8× the cost of a batched step (docs/performance.md). The
same clipped sum can be had from ONE forward and ONE backward pass:

1. Tap every parameterised layer ℓ: keep its input a_ℓ and add a zero
   perturbation to its output, so that differentiating the per-example losses
   with respect to the perturbations gives the output gradients g_ℓ
   (Goodfellow 2015, "Efficient per-example gradient computations"). This
   backward pass computes no weight gradients at all.
2. Each example's gradient of a dense or convolution kernel is
   Σ_t a_t ⊗ g_t over its positions t (all K augmult views of the example
   are positions of the same example). Its squared norm is computed per
   layer either *directly* (form a_iᵀ g_i, one example at a time in the
   batched contraction, and square it) or in the *ghost* Gram form
   Σ_{t,t'} (a_t·a_t')(g_t·g_t') (Li et al. 2022, "Large language models can
   be strong differentially private learners"), whichever needs fewer
   operations for the layer's shape (Bu et al. 2022/2023, "Scalable and
   efficient training of large convolutional neural networks with
   differential privacy"; "Differentially private optimization on large
   model at small cost" — book-keeping). Other layers with few parameters
   (GroupNorm, LayerNorm, frozen BatchNorm affine) get their per-example
   gradients by a per-layer `vmap` of the layer's own VJP: cheap reductions.
3. Summing the squares over layers gives each example's gradient norm,
   hence its clipping factor c_i = min(1, C/‖∇ℓ_i‖).
4. The clipped sum Σ_i c_i ∇ℓ_i is, per layer, the layer's parameter VJP at
   the stored inputs with the cotangent c_i · g_i: one weighted contraction
   per layer (book-keeping), no second backward pass through the network.
   It runs in float32 whatever the compute dtype, on the very values the
   norms read (below).

Weight-standardised convolutions (`layers.WSConv`) use ŵ = (v − mean v)/s per
output channel o, with s = sqrt(max(n·var v, eps)), n the fan-in. With
s = ‖v − mean v‖ (the usual case), ŵ is a unit vector and the Jacobian of
the standardisation is J = (I − ŵŵᵀ)(I − 11ᵀ/n)/s, so for the per-example
gradient G_o with respect to ŵ_o,

    ‖Jᵀ G_o‖² = (‖G_o‖² − ⟨ŵ_o, G_o⟩² − ⟨1, G_o⟩²/n) / s_o²,

(without the ŵ term and with s² = eps where the max clips). The direct form
takes all three terms from its per-offset blocks of G_o. The ghost form takes
‖G_o‖²/s_o² from the Gram matrices, ⟨ŵ_o, G_o⟩ = Σ_t y_to g_to with y the
layer's (standardised) output (recomputed in float32 under bf16 compute) and
⟨1, G_o⟩ = Σ_t S_t g_to with S the window sum of the channel-summed input.

Guarantee: the same as `clipping.clipped_grad_sum` (the result equals it up
to floating-point rounding; tests check 1e-4 relative in float32): every
example contributes c_i ∇ℓ_i with ‖c_i ∇ℓ_i‖ ≤ C up to float32 rounding,
padding rows (mask False) and examples with a non-finite gradient contribute
exactly zero, so the sum has L2 sensitivity C
(`clipping.clipped_sum_sensitivity`). With bf16 compute this needs the norms
and the sum to describe the same numbers: each layer's input and output
gradient are rounded to bf16 once, explicitly (`_pin`), and read by both; the
weighted contraction is a float32 VJP (c_i · g_i is not rounded back to
bf16); the WS-conv terms use the float32 ŵ as that VJP does; and every matmul
of the norms and the sum runs at float32 precision (no TF32 or bf16 passes on
accelerators). tests/privacy/test_contribution_bound.py sums each example
alone for each model of the zoo and checks ≤ C·(1 + 1e-6); before this,
bf16 contributions reached 1.001·C (docs/performance.md).

Which layers are handled: `nn.Dense`, `nn.Conv` (2-D, no dilation or feature
groups), `layers.WSConv`, and `nn.GroupNorm`, `nn.LayerNorm`, `nn.RMSNorm`,
`nn.BatchNorm` (frozen) by the per-layer VJP. Any other trained parameter
(a layer type not listed, a free parameter, a layer called twice with shared
weights, an `nnx` model seen through an adapter) gets its per-example
gradients by a `vmap` of `grad` over examples (`_per_example_fallback`):
slower for those parameters, exact, never refused.
The model must not mix examples (no training-mode BatchNorm), as for vmap.

Unlike the rest of `dpjax.privacy` this module knows about Flax layers: it
has to, as the trick is to take each layer apart.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dpjax.models.layers import WSConv, standardize_kernel
from dpjax.privacy import clipping

PyTree = Any
Path = tuple[str, ...]

METHODS = ("auto", "direct", "ghost", "vmap")
# The ghost form keeps a (B, T, T) Gram matrix per layer; above this many bytes
# "auto" uses the direct form even where the Gram form has fewer operations.
GHOST_GRAM_BYTES = 1 << 30
# Layers whose per-example gradients are computed by a per-layer vmap of their VJP.
_VMAP_TYPES = (nn.GroupNorm, nn.LayerNorm, nn.RMSNorm, nn.BatchNorm)


class FastClipResult(NamedTuple):
    """What one call computes; `fast_clipped_grad_sum` returns the first two."""

    clipped_sum: PyTree   # Σ_i mask_i c_i ∇ℓ_i, like params, float32
    norms: jax.Array      # (B,) per-example gradient norms before clipping
    losses: jax.Array     # (B,) per-example loss (mean over its views)
    correct: jax.Array    # (B,) fraction of the example's views classified right
    factors: jax.Array    # (B,) clipping factors c_i (0 for dropped rows)


def masked_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Softmax cross-entropy per row; 0 for rows labelled < 0 (empty unit slots, canaries)."""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(labels, 0))
    return jnp.where(labels >= 0, losses, 0.0)


@dataclasses.dataclass(frozen=True)
class _Tap:
    """One parameterised layer call, as seen during tracing (static)."""

    path: Path
    module: nn.Module     # unbound clone, applied on its own
    kind: str             # "dense" | "conv" | "wsconv" | "vmap"


def _kind(module: nn.Module) -> str | None:
    """How a layer's per-example norms are computed, or None for an untapped module."""
    t = type(module)
    if t is nn.Dense:
        return "dense"
    if t in (nn.Conv, WSConv) and _conv_geometry(module) is not None:
        return "wsconv" if t is WSConv else "conv"
    if t in (nn.Conv, WSConv) or t in _VMAP_TYPES:
        return "vmap"
    return None


def _conv_geometry(module: nn.Module) -> tuple | None:
    """(kernel_size, strides, padding) of a plain 2-D convolution, None if not supported."""
    ks = tuple(module.kernel_size)
    if len(ks) != 2:
        return None
    if isinstance(module, nn.Conv):
        if (module.feature_group_count != 1 or module.input_dilation not in (None, 1)
                or module.kernel_dilation not in (None, 1)):
            return None
    strides = module.strides if module.strides is not None else 1
    strides = (strides, strides) if isinstance(strides, int) else tuple(strides)
    padding = module.padding
    if isinstance(padding, str):
        if padding not in ("SAME", "VALID"):
            return None
    elif isinstance(padding, int):
        padding = ((padding, padding),) * 2
    else:
        padding = tuple((p, p) if isinstance(p, int) else tuple(p) for p in padding)
    return ks, strides, padding


def _subtree(tree: PyTree, path: Path) -> PyTree:
    for name in path:
        tree = tree[name]
    return tree


def _tapped_apply(model: nn.Module, variables: PyTree, inputs: jax.Array,
                  perturbations: dict | None, taps: dict, apply_kwargs: dict | None = None,
                  skip: frozenset = frozenset(), shared: set | None = None):
    """model.apply with each parameterised layer's output perturbed; records inputs.

    Returns (logits, {path: (layer input, layer output before perturbation)});
    `taps` is filled with the static description of each tapped layer. Layers in
    `skip` run untapped. A layer called more than once (shared weights) is added
    to `shared` (the static pass) and must then be skipped.
    """
    records = {}

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        kind = _kind(module) if context.method_name == "__call__" else None
        path = tuple(module.path)
        if kind is None or path in skip:
            return next_fun(*args, **kwargs)
        if path in records or len(args) != 1 or kwargs:
            if shared is None:
                raise NotImplementedError(f"fast clipping: layer {'/'.join(path)!r} is shared "
                                          "or called with extra arguments.")
            shared.add(path)
            return next_fun(*args, **kwargs)
        y = next_fun(*args, **kwargs)
        records[path] = (args[0], y)
        taps[path] = _Tap(path, module.clone(parent=None), kind)
        if perturbations is not None and path in perturbations:
            y = y + perturbations[path]
        return y

    with nn.intercept_methods(interceptor):
        logits = model.apply(variables, inputs, **(apply_kwargs or {}))
    return logits, records


# --- per-layer squared norms -------------------------------------------------

def _f32dot(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)


def _by_example(x: jax.Array, batch: int) -> jax.Array:
    """(B·K, ..., d) -> (B, T, d): an example's views and positions become one axis."""
    return x.reshape(batch, -1, x.shape[-1])


def _choose(method: str, batch: int, positions: int, fan_in: int, fan_out: int) -> str:
    """"direct" or "ghost" for a layer: fewest multiply-adds, Gram memory permitting.

    Direct: T·p·o per example (form a_iᵀ g_i). Ghost: T²·(p + o) (two Gram
    matrices), and a B·T² float32 buffer.
    """
    if method != "auto":
        return method
    direct = positions * fan_in * fan_out
    ghost = positions * positions * (fan_in + fan_out)
    fits = 4 * batch * positions * positions <= GHOST_GRAM_BYTES
    return "ghost" if ghost < direct and fits else "direct"


def _pin(x: jax.Array, dtype: Any) -> jax.Array:
    """x as a float32 array holding exactly the values of x in `dtype`.

    With `dtype` below float32 (bf16), XLA may keep a bf16 value in float32
    without rounding it in some of its uses and not others (its
    "excess precision"): the per-example norms and the clipped sum could then
    read different values, and an example contribute more than C (measured:
    up to 1.0008·C). `reduce_precision` is the one rounding XLA keeps; every
    later use reads its float32 result.
    """
    x = x.astype(dtype)
    if jnp.dtype(dtype) == jnp.float32:
        return x
    info = jnp.finfo(dtype)
    return jax.lax.reduce_precision(x.astype(jnp.float32), exponent_bits=info.nexp,
                                    mantissa_bits=info.nmant)


def _dense_sqnorm(a: jax.Array, g: jax.Array, method: str) -> jax.Array:
    """Σ_i ‖a_iᵀ g_i‖² per example for a (B, T, p), g (B, T, o)."""
    if method == "ghost":
        return jnp.sum(_f32dot("btp,bsp->bts", a, a) * _f32dot("bto,bso->bts", g, g), (1, 2))
    return jnp.sum(jnp.square(_f32dot("btp,bto->bpo", a, g)), (1, 2))


def _shifted_windows(x: jax.Array, geometry: tuple, out_hw: tuple[int, int]) -> list:
    """The kh·kw shifted, strided views of x (N, H, W, C) that a kernel tap sees.

    Window (di, dj) is the (N, H', W', C) array whose position t holds the
    input pixel that kernel entry (di, dj) multiplies at output position t:
    the im2col patches, one kernel offset at a time, never all at once.
    """
    (kh, kw), (sh, sw), padding = geometry
    if isinstance(padding, str):
        padding = jax.lax.padtype_to_pads(x.shape[1:3], (kh, kw), (sh, sw), padding)
    xp = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
    ho, wo = out_hw
    return [jax.lax.slice(xp, (0, di, dj, 0),
                          (xp.shape[0], di + sh * (ho - 1) + 1, dj + sw * (wo - 1) + 1,
                           xp.shape[3]), (1, sh, sw, 1))
            for di in range(kh) for dj in range(kw)]


def _window_fn(x: jax.Array, geometry: tuple, out_hw: tuple[int, int], batch: int):
    """k -> kernel offset k's strided view of x (B·K, H, W, C), as (B, T, C).

    Built one offset at a time inside a loop (a `lax.scan`, not a Python sum),
    so that only one window is ever in memory.
    """
    (kh, kw), (sh, sw), padding = geometry
    if isinstance(padding, str):
        padding = jax.lax.padtype_to_pads(x.shape[1:3], (kh, kw), (sh, sw), padding)
    xp = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
    ho, wo = out_hw

    def window(k):
        w = jax.lax.dynamic_slice(xp, (0, k // kw, k % kw, 0),
                                  (xp.shape[0], sh * (ho - 1) + 1, sw * (wo - 1) + 1,
                                   xp.shape[3]))
        return _by_example(w[:, ::sh, ::sw], batch)

    return window


def _conv_sqnorm(x: jax.Array, g: jax.Array, geometry: tuple, batch: int,
                 method: str, out_weight: jax.Array | None = None) -> jax.Array:
    """Per-example ‖Σ_t patch_t ⊗ g_t‖² for a conv with input x (B·K, H, W, C).

    With `out_weight` (O,), output channel o's share of the squared norm is
    weighted by out_weight_o, in float32 (g itself is not rescaled).

    Neither form materialises the patch tensor: the direct form accumulates
    the (B, C, O) block of each kernel offset; the ghost form accumulates the
    patch Gram matrix as a sum over kernel offsets of shifted pixel Grams.
    """
    (kh, kw) = geometry[0]
    window = _window_fn(x, geometry, g.shape[1:3], batch)
    gb = _by_example(g, batch)
    if method == "ghost":
        def add_gram(gram, k):
            w = window(k)
            return gram + _f32dot("btc,bsc->bts", w, w), None

        t = gb.shape[1]
        gram_a, _ = jax.lax.scan(add_gram, jnp.zeros((batch, t, t), jnp.float32),
                                 jnp.arange(kh * kw))
        weighted = gb if out_weight is None else gb.astype(jnp.float32) * out_weight
        return jnp.sum(gram_a * _f32dot("bto,bso->bts", weighted, gb), (1, 2))

    def add_block(sq, k):
        block = jnp.square(_f32dot("btc,bto->bco", window(k), gb))
        if out_weight is not None:
            block = block * out_weight
        return sq + jnp.sum(block, (1, 2)), None

    sq, _ = jax.lax.scan(add_block, jnp.zeros((batch,), jnp.float32), jnp.arange(kh * kw))
    return sq


def _conv_direct_terms(x: jax.Array, g: jax.Array, geometry: tuple, batch: int,
                       w_hat: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per example and output channel, (‖G_o‖², ⟨ŵ_o, G_o⟩, ⟨1, G_o⟩), each (B, O).

    G is the example's gradient with respect to the (standardised) kernel
    w_hat (kh, kw, C, O), taken one kernel offset's (B, C, O) block at a time
    as in `_conv_sqnorm`'s direct form: all three from the same float32 blocks.
    """
    (kh, kw) = geometry[0]
    window = _window_fn(x, geometry, g.shape[1:3], batch)
    gb = _by_example(g, batch)
    w_hat = w_hat.reshape((kh * kw,) + w_hat.shape[2:])

    def add_block(carry, k):
        sq, w_dot, one_dot = carry
        block = _f32dot("btc,bto->bco", window(k), gb)
        return (sq + jnp.sum(jnp.square(block), 1), w_dot + jnp.sum(block * w_hat[k], 1),
                one_dot + jnp.sum(block, 1)), None

    zeros = jnp.zeros((batch, g.shape[-1]), jnp.float32)
    terms, _ = jax.lax.scan(add_block, (zeros, zeros, zeros), jnp.arange(kh * kw))
    return terms


def _ws_scale(kernel: jax.Array, eps: float) -> tuple[jax.Array, jax.Array, int]:
    """(s² per output channel, whether the eps floor is inactive, fan-in n), as WSConv."""
    kernel = kernel.astype(jnp.float32)
    axes = tuple(range(kernel.ndim - 1))
    fan_in = 1
    for axis in axes:
        fan_in *= kernel.shape[axis]
    nvar = jnp.var(kernel, axis=axes) * fan_in
    return jnp.maximum(nvar, eps), nvar > eps, fan_in


def _wsconv_sqnorm(x: jax.Array, y: jax.Array, g: jax.Array, tap: _Tap, layer_params: dict,
                   batch: int, method: str) -> jax.Array:
    """Per-example ‖Jᵀ G_i‖² for a weight-standardised conv (see the module docstring).

    x is the input as the layer used it (its compute dtype). Every term is of
    the gradient with respect to the float32 standardised kernel ŵ, as the
    float32 VJP of the clipped sum uses it. The direct form takes all three
    terms from its per-offset blocks of G. The ghost form needs ⟨ŵ_o, G_o⟩ as
    Σ_t y_to g_to: below float32 the layer's own output y (made with ŵ rounded
    to bf16, and rounded itself) would misstate it by ~2⁻⁸, so ŵ·x is then
    recomputed in float32. And g/s_o is never rounded back to bf16.
    """
    module = tap.module
    geometry = _conv_geometry(module)
    kernel = layer_params["kernel"]
    s2, active, fan_in = _ws_scale(kernel, module.eps)
    if method == "direct":
        w_hat = standardize_kernel(kernel.astype(jnp.float32), module.eps)
        sq, w_dot, one_dot = _conv_direct_terms(x, g, geometry, batch, w_hat)
        plain = jnp.sum(sq / s2, -1)
    else:
        if g.dtype == jnp.float32:  # ‖G_o‖²/s_o² from g/s_o (one float32 rounding)
            plain = _conv_sqnorm(x, g * jax.lax.rsqrt(s2), geometry, batch, method)
        else:
            plain = _conv_sqnorm(x, g, geometry, batch, method, out_weight=1.0 / s2)
        if y.dtype != jnp.float32:
            plain_ws = module.clone(parent=None, dtype=jnp.float32, use_bias=False)
            y = plain_ws.apply({"params": {"kernel": kernel}}, x.astype(jnp.float32))
        elif module.use_bias:
            y = y - layer_params["bias"].astype(y.dtype)
        gb = _by_example(g, batch)
        w_dot = _f32dot("bto,bto->bo", _by_example(y, batch), gb)             # ⟨ŵ_o, G_o⟩
        window_sum = sum(_shifted_windows(jnp.sum(x.astype(jnp.float32), -1, keepdims=True),
                                          geometry, g.shape[1:3]))
        one_dot = _f32dot("btc,bto->bo", _by_example(window_sum, batch),
                          gb.astype(jnp.float32))                              # ⟨1, G_o⟩
    correction = jnp.sum((jnp.where(active, w_dot ** 2, 0.0) + one_dot ** 2 / fan_in) / s2, -1)
    return jnp.maximum(plain - correction, 0.0)


def _layer_vjp(tap: _Tap, layer_vars: dict, x: jax.Array) -> Callable:
    """Cotangent of the layer output -> gradient of its params (at input x)."""
    def apply(p):
        return tap.module.apply({**layer_vars, "params": p}, x)

    return jax.vjp(apply, layer_vars["params"])[1]


def _per_example_layer_grads(tap: _Tap, layer_vars: dict, x: jax.Array, g: jax.Array,
                             batch: int) -> dict:
    """Per-example parameter gradients of one (small) layer, by vmap of its VJP."""
    xs = x.reshape((batch, -1) + x.shape[1:])
    gs = g.reshape((batch, -1) + g.shape[1:])
    return jax.vmap(lambda xi, gi: _layer_vjp(tap, layer_vars, xi)(gi)[0])(xs, gs)


def _layer_sqnorm(tap: _Tap, layer_vars: dict, x: jax.Array, y: jax.Array, g: jax.Array,
                  batch: int, method: str, train: dict[str, bool]):
    """(Per-example squared gradient norm of one layer's trained parameters (B,),
    per-example gradients when they were formed (the "vmap" kind), else None)."""
    sq = jnp.zeros((batch,), jnp.float32)
    if tap.kind == "vmap" or method == "vmap":
        grads = _per_example_layer_grads(tap, layer_vars, x, g, batch)
        for name, leaf in grads.items():
            if train[name]:
                sq = sq + jnp.sum(jnp.square(leaf.astype(jnp.float32)).reshape(batch, -1), 1)
        return sq, grads
    layer_params = layer_vars["params"]
    kernel = layer_params["kernel"]
    p, o = kernel.size // kernel.shape[-1], kernel.shape[-1]
    positions = g.size // (batch * o)
    how = _choose(method, batch, positions, p, o)
    x, g = x.astype(y.dtype), g.astype(y.dtype)  # as the layer computed (exact when pinned)
    if train.get("kernel", False):
        if tap.kind == "dense":
            sq = sq + _dense_sqnorm(_by_example(x, batch), _by_example(g, batch), how)
        elif tap.kind == "conv":
            sq = sq + _conv_sqnorm(x, g, _conv_geometry(tap.module), batch, how)
        else:
            sq = sq + _wsconv_sqnorm(x, y, g, tap, layer_params, batch, how)
    if train.get("bias", False):
        bias_grad = jnp.sum(_by_example(g, batch).astype(jnp.float32), 1)
        sq = sq + jnp.sum(jnp.square(bias_grad), 1)
    return sq, None


# --- choosing each layer's form by timing it ----------------------------------

def measure_norm_methods(model: nn.Module, params: PyTree, extra_variables: PyTree,
                         input_shape: tuple[int, ...], num_views: int = 1, *,
                         dtype: Any = jnp.float32, repeats: int = 3) -> dict[str, str]:
    """Per dense/conv layer, the faster norm form ("direct" or "ghost"), timed here.

    The operation counts `_choose` uses ("auto") ignore what the hardware
    does well: Gram matrices are large, well-shaped matmuls; the direct form
    is many thin ones. This compiles and times both forms of each layer's
    per-example norm computation on this device, at the step's shapes
    (B·K rows of `input_shape`), on random activations and output gradients,
    and returns {layer path: fastest form} for `method=`. Layers of the same
    kind and shapes are timed once. A Gram matrix over `GHOST_GRAM_BYTES` is
    not tried. Runs outside `jit`; it takes two small compiles per distinct
    layer shape.
    """
    import time

    variables = {**(extra_variables or {}), "params": params}
    taps: dict[Path, _Tap] = {}
    shapes = jax.eval_shape(
        lambda v, x: {p: r for p, r in _tapped_apply(model, v, x, None, taps)[1].items()},
        variables, jax.ShapeDtypeStruct(tuple(input_shape), dtype))
    batch = input_shape[0] // num_views
    rng = np.random.default_rng(0)
    timed: dict[tuple, str] = {}
    chosen = {}
    for path, tap in taps.items():
        if tap.kind not in ("dense", "conv", "wsconv"):
            continue
        x_shape, y_shape = shapes[path]
        layer_vars = _layer_variables(variables, path)
        kernel = layer_vars["params"]["kernel"]
        signature = (tap.kind, x_shape.shape, y_shape.shape, kernel.shape,
                     _conv_geometry(tap.module) if tap.kind != "dense" else None)
        if signature not in timed:
            positions = int(np.prod(y_shape.shape)) // (batch * kernel.shape[-1])
            arrays = [jnp.asarray(rng.normal(size=a.shape), a.dtype)
                      for a in (x_shape, y_shape, y_shape)]
            seconds = {}
            for how in ("direct", "ghost"):
                if how == "ghost" and 4 * batch * positions ** 2 > GHOST_GRAM_BYTES:
                    continue
                fn = jax.jit(functools.partial(
                    lambda lv, x, y, g, tap, how: _layer_sqnorm(
                        tap, lv, x, y, g, batch, how, {"kernel": True, "bias": True})[0],
                    tap=tap, how=how))
                jax.block_until_ready(fn(layer_vars, *arrays))
                runs = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    jax.block_until_ready(fn(layer_vars, *arrays))
                    runs.append(time.perf_counter() - start)
                seconds[how] = sorted(runs)[len(runs) // 2]
            timed[signature] = min(seconds, key=seconds.get)
        chosen["/".join(path)] = timed[signature]
    return chosen


# --- the whole step --------------------------------------------------------

def _layer_variables(variables: PyTree, path: Path) -> dict:
    out = {}
    for collection, tree in variables.items():
        try:
            out[collection] = _subtree(tree, path)
        except (KeyError, TypeError):
            continue
    return out


def clipped_sum_and_stats(
    model: nn.Module,
    params: PyTree,
    extra_variables: PyTree,
    inputs: jax.Array,
    labels: jax.Array,
    mask: jax.Array,
    clip_norm: float,
    num_views: int = 1,
    *,
    is_trainable: Callable[[str], bool] | None = None,
    method: str | dict[str, str] = "auto",
    loss_fn: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
    extra_sqnorms: jax.Array | None = None,
    apply_kwargs: dict | None = None,
) -> FastClipResult:
    """`fast_clipped_grad_sum`, also returning each example's loss, accuracy and factor.

    Args: as `fast_clipped_grad_sum`, and
      loss_fn: `loss_fn(logits, labels) -> losses` per input row (default
        `masked_cross_entropy`: softmax cross-entropy, 0 for rows labelled < 0).
        Example i's loss is the sum of its rows' losses divided by `num_views`:
        the mean over its views, summed over its images when `labels` is
        (B, K) (a privacy unit of K images, −1 on empty slots).
      extra_sqnorms: (B,) squared norms of gradient parts that live outside the
        model (e.g. audit canaries' own coordinates), added before clipping;
        the caller forms their clipped sum with the returned `factors`.
      apply_kwargs: extra keyword arguments of `model.apply` (e.g. `train=True`).

    Returns:
      FastClipResult(clipped_sum, norms, losses, correct, factors).
    """
    if isinstance(method, str) and method not in METHODS:
        raise ValueError(f"Expected method in {METHODS}, got {method!r}.")
    loss_fn = loss_fn or masked_cross_entropy
    batch = labels.shape[0]
    per_example_labels = labels.reshape(batch, -1)
    rows = inputs.shape[0]
    if rows != per_example_labels.size * num_views:
        raise ValueError(f"Expected inputs.shape[0]={rows} to be labels.size · num_views = "
                         f"{per_example_labels.size} · {num_views}.")
    variables = {**(extra_variables or {}), "params": params}
    row_labels = jnp.repeat(per_example_labels, num_views, axis=1).reshape(-1)

    # Static structure: which layers are tapped, and their output shapes. Layers this
    # module cannot take apart (unknown types, shared weights) are not tapped: their
    # parameters get per-example gradients by vmap below.
    taps: dict[Path, _Tap] = {}
    shared: set = set()
    jax.eval_shape(lambda v, x: _tapped_apply(model, v, x, None, taps, apply_kwargs,
                                              shared=shared)[0], variables, inputs)
    skip = frozenset(shared)
    taps = {p: t for p, t in taps.items() if p not in skip}
    out_shapes = jax.eval_shape(
        lambda v, x: {p: r[1] for p, r in _tapped_apply(model, v, x, None, {}, apply_kwargs,
                                                         skip)[1].items()},
        variables, inputs)
    trainable_leaf = _trainable_predicate(params, is_trainable)
    active = {p: t for p, t in taps.items()
              if any(trainable_leaf(p + (n,)) for n in _subtree(params, p))}
    uncovered = _uncovered(params, active, trainable_leaf)

    def forward(perturbations):
        logits, records = _tapped_apply(model, variables, inputs, perturbations, {},
                                        apply_kwargs, skip)
        losses = loss_fn(logits, row_labels).reshape(batch, -1)
        valid = (row_labels >= 0).reshape(batch, -1)
        correct = ((jnp.argmax(logits, -1) == row_labels).reshape(batch, -1) & valid)
        per_example = losses.sum(1) / num_views
        accuracy = correct.sum(1) / jnp.maximum(valid.sum(1), 1)
        aux = (records, per_example, accuracy.astype(jnp.float32))
        return per_example, aux

    zeros = {p: jnp.zeros(out_shapes[p].shape, out_shapes[p].dtype) for p in active}
    _, vjp_fn, (records, losses, correct) = jax.vjp(forward, zeros, has_aux=True)
    (out_grads,) = vjp_fn(jnp.ones((batch,), jnp.float32))

    # Per-example squared norms, layer by layer. A dense or conv layer's input (as the
    # layer used it) and output gradient are pinned first: the norms and the weighted
    # contraction below must read the same values (see `_pin`).
    sq = jnp.zeros((batch,), jnp.float32)
    per_example = {}
    pinned = {}
    for path, tap in active.items():
        x, y = records[path]
        g = out_grads[path]
        layer_method = _method_for(method, path)
        if tap.kind != "vmap" and layer_method != "vmap":
            x, g = _pin(x, y.dtype), _pin(g, g.dtype)
            pinned[path] = (x, g)
        layer_vars = _layer_variables(variables, path)
        train = {n: trainable_leaf(path + (n,)) for n in layer_vars["params"]}
        with jax.default_matmul_precision("float32"):
            layer_sq, grads = _layer_sqnorm(tap, layer_vars, x, y, g, batch, layer_method,
                                            train)
        sq = sq + layer_sq
        if grads is not None:
            per_example[path] = grads
    if uncovered:
        fallback = _per_example_fallback(model, variables, inputs, row_labels, batch, num_views,
                                         uncovered, loss_fn, apply_kwargs)
        sq = sq + sum(jnp.sum(jnp.square(g.reshape(batch, -1)), axis=1)
                      for g in fallback.values())
    if extra_sqnorms is not None:
        sq = sq + extra_sqnorms.astype(jnp.float32)
    norms = jnp.sqrt(sq)

    # Clipping factors; dropped examples (padding, non-finite) get exactly 0.
    factor = jnp.where(mask & jnp.isfinite(norms), clipping.clip_factor(norms, clip_norm), 0.0)
    keep = factor > 0
    rows_per_example = rows // batch
    row_factor = jnp.repeat(factor, rows_per_example)
    row_keep = jnp.repeat(keep, rows_per_example)

    def rows_where(k, v):
        return jnp.where(k.reshape((-1,) + (1,) * (v.ndim - 1)), v, jnp.zeros((), v.dtype))

    clipped = {}
    for path, tap in active.items():
        layer_vars = _layer_variables(variables, path)
        if path in per_example:
            grads = per_example[path]
            clipped[path] = jax.tree_util.tree_map(
                lambda leaf: jnp.einsum("b,b...->...", factor,
                                        rows_where(keep, leaf.astype(jnp.float32)),
                                        precision=jax.lax.Precision.HIGHEST), grads)
            continue
        # In float32 whatever the compute dtype, so that example i contributes c_i times
        # the gradient whose norm gave c_i: the pinned input and output gradient, c_i·g
        # not rounded back to the compute dtype, and the parameter VJP of a float32
        # clone of the layer (float32 sums, full float32 matmuls on any device).
        x, g = pinned[path]
        weighted = rows_where(row_keep, g * row_factor.reshape((-1,) + (1,) * (g.ndim - 1)))
        tap32 = dataclasses.replace(tap, module=tap.module.clone(parent=None,
                                                                 dtype=jnp.float32))
        with jax.default_matmul_precision("float32"):
            (grads,) = _layer_vjp(tap32, layer_vars, rows_where(row_keep, x))(weighted)
        clipped[path] = grads

    result = _assemble(params, clipped, trainable_leaf)
    if uncovered:
        flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(result))
        for path, g in fallback.items():
            flat[path] = jnp.einsum("b,b...->...", factor, rows_where(keep, g),
                                    precision=jax.lax.Precision.HIGHEST)
        result = flax.traverse_util.unflatten_dict(flat)
    return FastClipResult(result, norms, losses, correct, factor)


def fast_clipped_grad_sum(
    model: nn.Module,
    params: PyTree,
    extra_variables: PyTree,
    inputs: jax.Array,
    labels: jax.Array,
    mask: jax.Array,
    clip_norm: float,
    num_views: int = 1,
    *,
    is_trainable: Callable[[str], bool] | None = None,
    method: str | dict[str, str] = "auto",
) -> tuple[PyTree, jax.Array]:
    """Σ_i mask_i · clip_C(∇ℓ_i) from one backward pass, without per-example gradients.

    The same contract as `clipping.clipped_grad_sum` with the per-example
    loss ℓ_i = mean softmax cross-entropy over the K views of example i; see
    the module docstring for the method and the guarantee.

    Args:
      model: a Flax linen classifier, `model.apply(variables, x) -> logits`.
      params: its 'params' collection (all differentiated unless `is_trainable`).
      extra_variables: other collections (e.g. frozen 'batch_stats'), or None.
      inputs: float (B·K, H, W, C) normalised images; rows i·K … i·K + K − 1 are
        the K views of example i.
      labels: int (B,).
      mask: bool (B,), False on padding rows (which contribute exactly 0).
      clip_norm: C (inf disables clipping: not private).
      num_views: K, the augmult multiplicity.
      is_trainable: predicate on a parameter's "/"-joined path; other
        parameters are not clipped over and get a zero sum.
      method: "auto" (per layer, the form with fewer operations), "direct",
        "ghost" or "vmap" (per-layer per-example gradients), or a dict from a
        layer's "/"-joined path to one of these (others "auto").

    Returns:
      (clipped sum, a pytree like params in float32; per-example gradient
      norms before clipping, (B,)).

    """
    result = clipped_sum_and_stats(model, params, extra_variables, inputs, labels, mask,
                                   clip_norm, num_views, is_trainable=is_trainable,
                                   method=method)
    return result.clipped_sum, result.norms


def _method_for(method: str | dict[str, str], path: Path) -> str:
    if isinstance(method, str):
        return method
    chosen = method.get("/".join(path), "auto")
    if chosen not in METHODS:
        raise ValueError(f"Expected method[{'/'.join(path)!r}] in {METHODS}, got {chosen!r}.")
    return chosen


def _trainable_predicate(params: PyTree, is_trainable: Callable[[str], bool] | None):
    def trainable(path: Path) -> bool:
        return is_trainable is None or bool(is_trainable("/".join(path)))

    return trainable


def _uncovered(params: PyTree, taps: dict, trainable: Callable[[Path], bool]) -> list[Path]:
    """Trained parameters no tapped layer owns: they get per-example gradients by vmap."""
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
    covered = {p + (n,) for p in taps for n in _subtree(params, p)}
    return [path for path in flat if trainable(path) and path not in covered]


def _per_example_fallback(model, variables, inputs, row_labels, batch: int, num_views: int,
                          paths: list[Path], loss_fn, apply_kwargs) -> dict:
    """{path: (B, ...) per-example gradients} of the given parameters, by vmap of grad.

    Each example's rows (its views, its unit's images) go through the model on
    their own, so nothing here mixes examples; the other parameters are constants.
    """
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables["params"]))
    chosen = {p: flat[p] for p in paths}
    rows = inputs.reshape((batch, -1) + inputs.shape[1:])
    labels = row_labels.reshape(batch, -1)

    def example_loss(leaves, x, y):
        params = flax.traverse_util.unflatten_dict({**flat, **leaves})
        logits = model.apply({**variables, "params": params}, x, **(apply_kwargs or {}))
        return jnp.sum(loss_fn(logits, y)) / num_views

    return jax.vmap(jax.grad(example_loss), in_axes=(None, 0, 0))(chosen, rows, labels)


def _assemble(params: PyTree, clipped: dict, trainable: Callable[[Path], bool]) -> PyTree:
    """The per-layer sums as a pytree like params (float32; zeros where not trained)."""
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
    out = {}
    for path, leaf in flat.items():
        layer, name = path[:-1], path[-1]
        if layer in clipped and trainable(path):
            out[path] = clipped[layer][name].astype(jnp.float32)
        else:
            out[path] = jnp.zeros(leaf.shape, jnp.float32)
    return flax.traverse_util.unflatten_dict(out)
