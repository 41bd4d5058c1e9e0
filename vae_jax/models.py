"""The chapter's models in Flax NNX.

Every model has the chapter's constructor arguments and defaults, the chapter's attribute names
(so `vae_jax.convert` maps each parameter to the torch key of the same name), and one interface:

    encode(x[, y])                     -> (mu, logvar)      (Autoencoder: z)
    reparameterize(mu, logvar, key)    -> z = mu + exp(logvar / 2) * eps
    decode_logits(z[, y])              -> pre-sigmoid decoder output
    decode(z[, y])                     -> sigmoid(decode_logits(z))
    __call__(x, key[, y], eps=None)    -> (x_recon, mu, logvar)   (Autoencoder: (x_recon, z))
    sample(num_samples, key[, y])      -> decode(z), z ~ N(0, I) drawn from `key`

Randomness enters only through explicit `jax.random` keys (or an injected `eps`, which the parity
suite uses to feed both frameworks the same noise). There is no hidden RNG state.

Layout: MLP models take (B, D). Convolutional models take and return NHWC (B, H, W, C), JAX's
layout; torch's models take NCHW. The fully connected layers next to the conv stacks see the
features in torch's (C, H, W) flatten order (the activation is transposed before flattening and
after un-flattening), so a torch state_dict maps onto the Flax layers with plain per-layer
transposes and no permutation of the fc weights.

Initialisation follows torch's defaults (U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and
biases, BatchNorm scale 1 and bias 0), so that both frameworks start from the same distribution.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

# k4 s2 p1 transposed conv of torch == lax.conv_transpose with explicit padding k-1-p = 2 on each
# side and a spatially flipped kernel (the flip is done by `vae_jax.convert`). torch's
# output_padding=1 adds one row/column at the high end.
_TCONV_PAD = ((2, 2), (2, 2))
_TCONV_PAD_OUT1 = ((2, 3), (2, 3))


def _torch_uniform(fan_in: int):
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def Linear(din, dout, *, rngs, param_dtype=jnp.float32):
    init = _torch_uniform(din)
    return nnx.Linear(din, dout, kernel_init=init, bias_init=init, param_dtype=param_dtype, rngs=rngs)


# Which form the k4 s2 p1 layers compute with (the parameters are the same either way):
#   "lax":      nnx.Conv / nnx.ConvTranspose (XLA's strided / transposed convolution)
#   "subpixel": SubPixelConvTranspose (stride-1 3x3 conv to 4*cout channels + depth-to-space)
#   "s2d":      SpaceToDepthConv (space-to-depth + stride-1 2x2 conv)
#   "auto":     per layer, the form measured faster for a whole training step (batch 128, XLA:CPU,
#               profiled with jax.profiler; scripts/bench.py): sub-pixel for the transposed convs with
#               cout >= 32 (output_padding included), lax for the last (cout 1 or 3) layers; space-to-
#               depth for strided convs on an odd-sized input (ConvVAE's 7 -> 3 layer) or one of at
#               least 32 rows (CelebA's first two: their lax weight gradients dominated the
#               profile), lax for the others. XLA:CPU's own transposed conv (and a strided conv's
#               input gradient, which is one) is the slow part: a ConvVAE28 step takes 349 ms in
#               the lax forms and 153 ms in these, with CONV_S1_IMPL = "matmul" (scripts/bench.py).
# Every form is an exact rewrite of the same linear map (float summation order aside).
TCONV_IMPL = "auto"
CONV_IMPL = "auto"


def _tconv_form(impl, cout, output_padding):
    impl = impl or TCONV_IMPL
    if impl == "auto":
        return "subpixel" if cout >= 32 else "lax"
    return impl


# How the stride-1 convolutions of the sub-pixel and space-to-depth forms are computed:
#   "lax":    lax.conv_general_dilated (XLA's convolution)
#   "matmul": im2col -- the kh*kw shifted windows concatenated on the channel axis -- and one
#             matmul with the (kh*kw*cin, cout) kernel; the backward pass is a matmul and pads.
CONV_S1_IMPL = "matmul"


def conv_s1(x, kernel, padding, *, precision=None, preferred_element_type=None, impl=None):
    """Stride-1 NHWC convolution with an HWIO kernel and explicit ((lo, hi), (lo, hi)) padding."""
    if (impl or CONV_S1_IMPL) == "lax":
        return jax.lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                            precision=precision, preferred_element_type=preferred_element_type)
    kh, kw, cin, cout = kernel.shape
    xp = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
    ho, wo = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
    cols = jnp.concatenate([xp[:, i:i + ho, j:j + wo, :] for i in range(kh) for j in range(kw)], axis=-1)
    return jnp.dot(cols, kernel.reshape(kh * kw * cin, cout), precision=precision,
                   preferred_element_type=preferred_element_type)


def subpixel_kernel(kernel):
    """Flax ConvTranspose kernel (4, 4, cin, cout) (torch's, spatially flipped) -> the equivalent
    stride-1 kernel (3, 3, cin, 4 * cout), output channels ordered (row phase, col phase, cout).

    1-D, torch weight w, flipped kf[j] = w[3 - j]: y[2m] = x[m] w1 + x[m-1] w3 and
    y[2m+1] = x[m+1] w0 + x[m] w2, so over the window (x[m-1], x[m], x[m+1]) the taps are
    phase 0: (kf0, kf2, 0) and phase 1: (0, kf1, kf3).
    """
    cin, cout = kernel.shape[2], kernel.shape[3]
    z = jnp.zeros((cin, cout), kernel.dtype)
    taps = ((0, 2, None), (None, 1, 3))  # phase -> flipped-kernel index at window position 0, 1, 2
    phases = []
    for r in (0, 1):
        for c in (0, 1):
            phases.append(jnp.stack([jnp.stack([z if (taps[r][a] is None or taps[c][b] is None)
                                                else kernel[taps[r][a], taps[c][b]] for b in range(3)])
                                     for a in range(3)]))  # (3, 3, cin, cout)
    return jnp.stack(phases, axis=-2).reshape(3, 3, cin, 4 * cout)


def subpixel_conv_transpose(x, kernel, bias=None, *, output_padding=0, precision=None,
                            preferred_element_type=None):
    """torch ConvTranspose2d(k=4, s=2, p=1, output_padding) on NHWC `x` with a Flax (flipped)
    kernel, as a stride-1 3x3 convolution producing 4*cout channels followed by depth-to-space.
    output_padding=1: one more zero row/column of input at the high end, output cropped to 2H+1."""
    b, h, w, _ = x.shape
    cout = kernel.shape[-1]
    e = 1 if output_padding else 0
    y = conv_s1(x, subpixel_kernel(kernel), ((1, 1 + e), (1, 1 + e)), precision=precision,
                preferred_element_type=preferred_element_type)
    ho, wo = y.shape[1], y.shape[2]
    y = y.reshape(b, ho, wo, 2, 2, cout).transpose(0, 1, 3, 2, 4, 5).reshape(b, 2 * ho, 2 * wo, cout)
    if e:
        y = y[:, :2 * h + 1, :2 * w + 1]
    return y if bias is None else y + bias


def space_to_depth_conv(x, kernel, bias=None, *, precision=None, preferred_element_type=None):
    """torch Conv2d(k=4, s=2, p=1) on NHWC `x` with a Flax HWIO kernel, as space-to-depth of the
    padded input followed by a stride-1 2x2 VALID convolution (kernel (2, 2, 4*cin, cout)).

    1-D: y[i] = sum_k xp[2i + k] w[k] = (xp[2i], xp[2i+1]).(w0, w1) + (xp[2i+2], xp[2i+3]).(w2, w3),
    xp the input padded by 1 low and to length 2 * out + 2 high (out = (H - 2) // 2 + 1).
    """
    b, h, w, cin = x.shape
    cout = kernel.shape[-1]
    oh, ow = (h - 2) // 2 + 1, (w - 2) // 2 + 1
    xp = jnp.pad(x, ((0, 0), (1, 2 * oh + 1 - h), (1, 2 * ow + 1 - w), (0, 0)))
    s = xp.reshape(b, oh + 1, 2, ow + 1, 2, cin).transpose(0, 1, 3, 2, 4, 5).reshape(b, oh + 1, ow + 1, 4 * cin)
    k = kernel.reshape(2, 2, 2, 2, cin, cout).transpose(0, 2, 1, 3, 4, 5).reshape(2, 2, 4 * cin, cout)
    y = conv_s1(s, k, ((0, 0), (0, 0)), precision=precision, preferred_element_type=preferred_element_type)
    return y if bias is None else y + bias


class SubPixelConvTranspose(nnx.ConvTranspose):
    """nnx.ConvTranspose (k4 s2, padding _TCONV_PAD or _TCONV_PAD_OUT1) computed in sub-pixel form.

    Same parameters (kernel (4, 4, cin, cout), bias) and state layout as nnx.ConvTranspose, so
    vae_jax.convert and checkpoints treat it as one; only __call__ differs.
    """

    def __call__(self, inputs):
        pad = tuple(tuple(p) for p in self.padding)
        if pad not in (_TCONV_PAD, _TCONV_PAD_OUT1) or inputs.ndim != 4:
            return super().__call__(inputs)
        kernel = self.kernel[...]
        bias = self.bias[...] if self.bias is not None else None
        inputs, kernel, bias = self.promote_dtype((inputs, kernel, bias), dtype=self.dtype)
        return subpixel_conv_transpose(inputs, kernel, bias, output_padding=int(pad == _TCONV_PAD_OUT1),
                                       precision=self.precision,
                                       preferred_element_type=self.preferred_element_type)


S2D_MIN_SIZE = 32  # "auto": space-to-depth also for even inputs this large (CelebA's 64 and 32)


class SpaceToDepthConv(nnx.Conv):
    """nnx.Conv (k4 s2 p1) computed as space-to-depth + stride-1 2x2 conv; same parameters.

    odd_only=True ("auto"): only for inputs of odd height or width, or of at least S2D_MIN_SIZE
    rows (where it measured faster on XLA:CPU); nnx.Conv's form otherwise. Decided from the static
    input shape at trace time.
    """

    def __init__(self, *args, odd_only=False, **kwargs):
        super().__init__(*args, **kwargs)
        self.odd_only = odd_only

    def __call__(self, inputs, out_sharding=None):
        h, w = inputs.shape[1:3] if inputs.ndim == 4 else (0, 0)
        if inputs.ndim != 4 or (self.odd_only and h % 2 == 0 and w % 2 == 0 and h < S2D_MIN_SIZE):
            return super().__call__(inputs)
        kernel = self.kernel[...]
        bias = self.bias[...] if self.bias is not None else None
        inputs, kernel, bias = self.promote_dtype((inputs, kernel, bias), dtype=self.dtype)
        return space_to_depth_conv(inputs, kernel, bias, precision=self.precision,
                                   preferred_element_type=self.preferred_element_type)


def Conv2d(cin, cout, *, rngs, param_dtype=jnp.float32, impl=None):
    """torch Conv2d(cin, cout, kernel_size=4, stride=2, padding=1) in NHWC.

    impl: "lax" (nnx.Conv), "s2d" (SpaceToDepthConv) or "auto" (SpaceToDepthConv on odd-sized
    inputs only); None: CONV_IMPL. Same parameters whichever.
    """
    init = _torch_uniform(cin * 16)
    impl = impl or CONV_IMPL
    kw = dict(kernel_init=init, bias_init=init, param_dtype=param_dtype, rngs=rngs)
    if impl in ("s2d", "auto"):
        return SpaceToDepthConv(cin, cout, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)),
                                odd_only=impl == "auto", **kw)
    return nnx.Conv(cin, cout, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)), **kw)


def ConvTranspose2d(cin, cout, *, output_padding=0, rngs, param_dtype=jnp.float32, impl=None):
    """torch ConvTranspose2d(cin, cout, kernel_size=4, stride=2, padding=1) in NHWC.

    Kernel layout (kh, kw, cin, cout), spatially flipped relative to torch's (cin, cout, kh, kw).
    torch computes fan_in of a transposed conv from weight.size(1) = cout, so does this init.
    impl: "lax" (nnx.ConvTranspose), "subpixel" (SubPixelConvTranspose) or "auto" (see
    TCONV_IMPL); None: TCONV_IMPL. Same parameters whichever.
    """
    init = _torch_uniform(cout * 16)
    pad = _TCONV_PAD_OUT1 if output_padding else _TCONV_PAD
    cls = SubPixelConvTranspose if _tconv_form(impl, cout, output_padding) == "subpixel" else nnx.ConvTranspose
    return cls(cin, cout, (4, 4), strides=(2, 2), padding=pad,
               kernel_init=init, bias_init=init, param_dtype=param_dtype, rngs=rngs)


class BatchNorm2d(nnx.Module):
    """torch.nn.BatchNorm2d semantics on the last (channel) axis.

    Train mode normalises with the batch's biased variance and updates the running statistics
    with torch's rule: running = (1 - momentum) * running + momentum * batch, where the batch
    variance used for running_var is the UNBIASED one (n / (n - 1)); momentum 0.1 (= Flax 0.9),
    eps 1e-5. `count` is torch's num_batches_tracked. `model.eval()` / `model.train()` switch
    `use_running_average` as for nnx.BatchNorm.
    """

    def __init__(self, num_features, *, eps=1e-5, momentum=0.1, use_running_average=False,
                 param_dtype=jnp.float32, rngs=None):
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.use_running_average = use_running_average
        self.scale = nnx.Param(jnp.ones((num_features,), param_dtype))
        self.bias = nnx.Param(jnp.zeros((num_features,), param_dtype))
        self.mean = nnx.BatchStat(jnp.zeros((num_features,), param_dtype))
        self.var = nnx.BatchStat(jnp.ones((num_features,), param_dtype))
        self.count = nnx.BatchStat(jnp.zeros((), jnp.int32))

    def __call__(self, x):
        if self.use_running_average:
            mean, var = self.mean.value, self.var.value
        else:
            axes = tuple(range(x.ndim - 1))
            n = x.size // x.shape[-1]
            mean = jnp.mean(x, axes)
            var = jnp.mean(jnp.square(x - mean), axes)
            m = self.momentum
            self.mean.value = (1 - m) * self.mean.value + m * jax.lax.stop_gradient(mean)
            self.var.value = (1 - m) * self.var.value + m * jax.lax.stop_gradient(var) * (n / max(n - 1, 1))
            self.count.value = self.count.value + 1
        return (x - mean) * jax.lax.rsqrt(var + self.eps) * self.scale.value + self.bias.value


def draw_eps(key, shape, dtype, eps):
    if eps is not None:
        return eps
    if key is None:
        raise ValueError("a jax.random key is required to draw eps: pass key=jax.random.key(seed) (or eps=...)")
    return jax.random.normal(key, shape, dtype)


def _nchw_flatten(h):
    """(B, H, W, C) -> (B, C*H*W) in torch's NCHW flatten order."""
    return jnp.transpose(h, (0, 3, 1, 2)).reshape(h.shape[0], -1)


def _nchw_unflatten(h, c, hw):
    """(B, C*H*W) in torch's order -> (B, H, W, C)."""
    return jnp.transpose(h.reshape(h.shape[0], c, hw, hw), (0, 2, 3, 1))


class _Gaussian(nnx.Module):
    """What every VAE shares: the reparameterization, the forward pass and sampling."""

    conditional = False

    def reparameterize(self, mu, logvar, key=None, eps=None):
        std = jnp.exp(0.5 * logvar)
        return mu + std * draw_eps(key, std.shape, std.dtype, eps)

    def decode(self, z, *cond):
        return jax.nn.sigmoid(self.decode_logits(z, *cond))

    def forward_logits(self, x, key=None, *cond, eps=None):
        """(decoder logits, mu, logvar): the training path (logits-stable losses)."""
        mu, logvar = self.encode(x, *cond)
        z = self.reparameterize(mu, logvar, key, eps)
        return self.decode_logits(z, *cond), mu, logvar

    def __call__(self, x, key=None, *cond, eps=None):
        logits, mu, logvar = self.forward_logits(x, key, *cond, eps=eps)
        return jax.nn.sigmoid(logits), mu, logvar

    def sample(self, num_samples, key, *cond):
        dtype = self._param_dtype
        z = jax.random.normal(key, (num_samples, self.latent_dim), dtype)
        return self.decode(z, *cond)


class Autoencoder(nnx.Module):
    """Standard (deterministic) Autoencoder: 784-400-20-400-784."""

    conditional = False
    flat_input = True

    def __init__(self, input_dim=784, hidden_dim=400, latent_dim=20, *, rngs: nnx.Rngs,
                 param_dtype=jnp.float32):
        self.input_dim, self.latent_dim = input_dim, latent_dim
        kw = dict(rngs=rngs, param_dtype=param_dtype)
        self.fc1 = Linear(input_dim, hidden_dim, **kw)
        self.fc2 = Linear(hidden_dim, latent_dim, **kw)
        self.fc3 = Linear(latent_dim, hidden_dim, **kw)
        self.fc4 = Linear(hidden_dim, input_dim, **kw)

    def encode(self, x):
        return self.fc2(jax.nn.relu(self.fc1(x)))

    def decode_logits(self, z):
        return self.fc4(jax.nn.relu(self.fc3(z)))

    def decode(self, z):
        return jax.nn.sigmoid(self.decode_logits(z))

    def forward_logits(self, x, key=None, eps=None):
        z = self.encode(x)
        return self.decode_logits(z), z, None

    def __call__(self, x, key=None, eps=None):
        z = self.encode(x)
        return self.decode(z), z


class VAE(_Gaussian):
    """The chapter's MLP VAE: 784-400-(20, 20)-400-784."""

    flat_input = True

    def __init__(self, input_dim=784, hidden_dim=400, latent_dim=20, *, rngs: nnx.Rngs,
                 param_dtype=jnp.float32):
        self.input_dim, self.latent_dim, self._param_dtype = input_dim, latent_dim, param_dtype
        kw = dict(rngs=rngs, param_dtype=param_dtype)
        self.encoder_fc1 = Linear(input_dim, hidden_dim, **kw)
        self.encoder_fc_mu = Linear(hidden_dim, latent_dim, **kw)
        self.encoder_fc_logvar = Linear(hidden_dim, latent_dim, **kw)
        self.decoder_fc1 = Linear(latent_dim, hidden_dim, **kw)
        self.decoder_fc2 = Linear(hidden_dim, input_dim, **kw)

    def encode(self, x):
        h = jax.nn.relu(self.encoder_fc1(x))
        return self.encoder_fc_mu(h), self.encoder_fc_logvar(h)

    def decode_logits(self, z):
        return self.decoder_fc2(jax.nn.relu(self.decoder_fc1(z)))


class CVAE(_Gaussian):
    """Conditional VAE (exercise 3): VAE with the one-hot label concatenated to x and to z."""

    conditional = True
    flat_input = True

    def __init__(self, input_dim=784, hidden_dim=400, latent_dim=20, num_classes=10, *,
                 rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.input_dim, self.latent_dim, self.num_classes = input_dim, latent_dim, num_classes
        self._param_dtype = param_dtype
        kw = dict(rngs=rngs, param_dtype=param_dtype)
        self.encoder_fc1 = Linear(input_dim + num_classes, hidden_dim, **kw)
        self.encoder_fc_mu = Linear(hidden_dim, latent_dim, **kw)
        self.encoder_fc_logvar = Linear(hidden_dim, latent_dim, **kw)
        self.decoder_fc1 = Linear(latent_dim + num_classes, hidden_dim, **kw)
        self.decoder_fc2 = Linear(hidden_dim, input_dim, **kw)

    def encode(self, x, y_onehot):
        h = jax.nn.relu(self.encoder_fc1(jnp.concatenate([x, y_onehot], axis=-1)))
        return self.encoder_fc_mu(h), self.encoder_fc_logvar(h)

    def decode_logits(self, z, y_onehot):
        h = jax.nn.relu(self.decoder_fc1(jnp.concatenate([z, y_onehot], axis=-1)))
        return self.decoder_fc2(h)


class ConvVAE(_Gaussian):
    """The chapter's convolutional VAE, as it really behaves.

    Encoder 28 -> 14 -> 7 -> 3 (k4 s2 p1 convs); decoder 3 -> 6 -> 12 -> 24: for a 28x28 input it
    returns 24x24, not 28x28 as the chapter's comments say, so the chapter's BCE against the
    28x28 input fails. `ConvVAE28` is the corrected model with the same parameters.
    """

    output_padding = 0

    def __init__(self, input_channels=1, latent_dim=128, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.input_channels, self.latent_dim, self._param_dtype = input_channels, latent_dim, param_dtype
        kw = dict(rngs=rngs, param_dtype=param_dtype)
        self.encoder_conv = nnx.Sequential(
            Conv2d(input_channels, 32, **kw), jax.nn.relu,
            Conv2d(32, 64, **kw), jax.nn.relu,
            Conv2d(64, 128, **kw), jax.nn.relu,
        )
        self.fc_mu = Linear(128 * 3 * 3, latent_dim, **kw)
        self.fc_logvar = Linear(128 * 3 * 3, latent_dim, **kw)
        self.decoder_fc = Linear(latent_dim, 128 * 3 * 3, **kw)
        # torch's nn.Sigmoid at index 5 is applied by `decode`; indices match torch's keys.
        self.decoder_conv = nnx.Sequential(
            ConvTranspose2d(128, 64, output_padding=self.output_padding, **kw), jax.nn.relu,
            ConvTranspose2d(64, 32, **kw), jax.nn.relu,
            ConvTranspose2d(32, input_channels, **kw),
        )

    def encode(self, x):
        h = _nchw_flatten(self.encoder_conv(x))
        return self.fc_mu(h), self.fc_logvar(h)

    def decode_logits(self, z):
        return self.decoder_conv(_nchw_unflatten(self.decoder_fc(z), 128, 3))


class ConvVAE28(ConvVAE):
    """Corrected ConvVAE: output_padding=1 on the first transposed conv (3 -> 7 -> 14 -> 28).

    Same parameters and state_dict keys/shapes as ConvVAE; decode returns 28x28.
    """

    output_padding = 1


class CelebAVAE(_Gaussian):
    """The chapter's 64x64 RGB VAE with BatchNorm (torch BatchNorm2d semantics)."""

    def __init__(self, input_channels=3, latent_dim=256, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.input_channels, self.latent_dim, self._param_dtype = input_channels, latent_dim, param_dtype
        kw = dict(rngs=rngs, param_dtype=param_dtype)
        bn = dict(param_dtype=param_dtype)
        enc = []
        for cin, cout in [(input_channels, 32), (32, 64), (64, 128), (128, 256)]:
            enc += [Conv2d(cin, cout, **kw), BatchNorm2d(cout, **bn), jax.nn.relu]
        self.encoder = nnx.Sequential(*enc)
        self.fc_mu = Linear(256 * 4 * 4, latent_dim, **kw)
        self.fc_logvar = Linear(256 * 4 * 4, latent_dim, **kw)
        self.decoder_fc = Linear(latent_dim, 256 * 4 * 4, **kw)
        dec = []
        for cin, cout in [(256, 128), (128, 64), (64, 32)]:
            dec += [ConvTranspose2d(cin, cout, **kw), BatchNorm2d(cout, **bn), jax.nn.relu]
        dec.append(ConvTranspose2d(32, input_channels, **kw))  # torch's nn.Sigmoid (index 10) -> decode
        self.decoder = nnx.Sequential(*dec)

    def encode(self, x):
        h = _nchw_flatten(self.encoder(x))
        return self.fc_mu(h), self.fc_logvar(h)

    def decode_logits(self, z):
        return self.decoder(_nchw_unflatten(self.decoder_fc(z), 256, 4))


def one_hot(model, y, dtype=jnp.float32):
    """The conditioning vector of a conditional model for integer labels y."""
    return jax.nn.one_hot(y, model.num_classes, dtype=dtype)


def model_inputs(model, x, y):
    """(x as the model takes it, the arguments after x): MLP models flatten the image; conditional
    models also take the one-hot label."""
    x = x.reshape(x.shape[0], -1) if getattr(model, "flat_input", False) else x
    return x, ((one_hot(model, y, x.dtype),) if model.conditional else ())


MODELS = {
    "ae": Autoencoder,
    "vae": VAE,
    "cvae": CVAE,
    "conv_vae": ConvVAE,
    "conv_vae28": ConvVAE28,
    "celeba_vae": CelebAVAE,
}
