"""The small classifier that scores the conditional VAE's samples (exercise 3): an MLP 784-256-10
trained with Adam on the training images, and its accuracy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from vae_jax import input_pipeline


class Classifier(nnx.Module):
    """MLP 784-256-10."""

    def __init__(self, input_dim=784, hidden=256, num_classes=10, *, rngs):
        self.fc1 = nnx.Linear(input_dim, hidden, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, num_classes, rngs=rngs)

    def __call__(self, x):
        return self.fc2(jax.nn.relu(self.fc1(x.reshape(x.shape[0], -1))))


def train_classifier(train_x, train_y, *, epochs, seed, batch_size=128, lr=1e-3):
    model = Classifier(int(np.prod(train_x.shape[1:])), rngs=nnx.Rngs(seed))
    opt = nnx.Optimizer(model, optax.adam(lr), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt, xb, yb):
        def loss_fn(m):
            return optax.softmax_cross_entropy_with_integer_labels(m(xb), yb).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        opt.update(model, grads)
        return loss

    for epoch in range(epochs):
        order = input_pipeline.epoch_permutation(jax.random.key(seed * 1000 + epoch), train_x.shape[0])
        for a, b in input_pipeline.batch_slices(len(order), batch_size):
            step(model, opt, train_x[order[a:b]], train_y[order[a:b]])
    return model


def accuracy(classifier, x, y):
    return float(jnp.mean(jnp.argmax(classifier(x), -1) == y))
