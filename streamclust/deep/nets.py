"""The networks: a convolutional autoencoder and a variational autoencoder on the same trunk.

Encoder: per stage a 3x3 convolution + ReLU and a 2x2 max-pooling, halving the side
while it stays even and at least 8 (so 8 -> 4, 16 -> 4, 32 -> 4, 64 -> 4, 28 -> 7),
then a linear layer to the latent vector.  Decoder: a linear layer back to the last
feature map, per stage a 2x2 stride-2 transposed convolution + ReLU, and a 3x3
convolution to the image's channels.  The AE ends with a sigmoid (pixels in [0, 1], MSE
loss); the VAE's encoder has two heads (mean and log-variance), draws ``z`` by the
reparameterisation trick, and its decoder gives logits (Bernoulli likelihood: binary
cross-entropy) — summed over pixels, plus the KL divergence to N(0, I), per image.

This module imports torch at the top: import it only through :func:`build_net`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["ConvAE", "ConvVAE", "build_net", "n_stages", "MODELS"]

MODELS = ("ae", "vae")


def n_stages(size: int) -> int:
    """Down-sampling stages for a ``size x size`` image: halve while even and >= 8."""
    k = 0
    while size % 2 == 0 and size >= 8:
        size //= 2
        k += 1
    return k


def _widths(stages: int, width: int) -> list[int]:
    return [min(width * 2 ** i, 256) for i in range(max(stages, 1))]


class _Encoder(nn.Module):
    def __init__(self, size: int, channels: int, width: int):
        super().__init__()
        stages = n_stages(size)
        widths = _widths(stages, width)
        layers, c = [], channels
        for i, w in enumerate(widths):
            layers += [nn.Conv2d(c, w, 3, padding=1), nn.ReLU(inplace=True)]
            if i < stages:
                layers.append(nn.MaxPool2d(2))
            c = w
        self.body = nn.Sequential(*layers)
        self.side = size // 2 ** stages
        self.out_channels = c
        self.out_features = c * self.side * self.side

    def forward(self, x):
        return self.body(x).flatten(1)


class _Decoder(nn.Module):
    def __init__(self, size: int, channels: int, width: int, latent: int):
        super().__init__()
        stages = n_stages(size)
        widths = _widths(stages, width)[::-1]
        self.side = size // 2 ** stages
        self.c0 = widths[0]
        self.fc = nn.Linear(latent, self.c0 * self.side * self.side)
        layers, c = [], self.c0
        for i in range(stages):
            w = widths[min(i + 1, len(widths) - 1)]
            layers += [nn.ConvTranspose2d(c, w, 2, stride=2), nn.ReLU(inplace=True)]
            c = w
        layers.append(nn.Conv2d(c, channels, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, z):
        h = F.relu(self.fc(z)).view(z.shape[0], self.c0, self.side, self.side)
        return self.body(h)


class ConvAE(nn.Module):
    """Convolutional autoencoder; ``forward`` returns the reconstruction in [0, 1]."""

    kind = "ae"

    def __init__(self, size: int, latent: int = 128, channels: int = 3, width: int = 32):
        super().__init__()
        self.size, self.latent, self.channels, self.width = size, latent, channels, width
        self.encoder = _Encoder(size, channels, width)
        self.to_latent = nn.Linear(self.encoder.out_features, latent)
        self.decoder = _Decoder(size, channels, width, latent)

    def encode(self, x):
        return self.to_latent(self.encoder(x))

    def decode(self, z):
        return torch.sigmoid(self.decoder(z))

    def forward(self, x):
        return self.decode(self.encode(x))

    def loss(self, x, generator=None):
        """Mean squared error per pixel (the reconstruction loss)."""
        return F.mse_loss(self.forward(x), x)


class ConvVAE(nn.Module):
    """Variational autoencoder; ``encode`` returns the posterior mean."""

    kind = "vae"

    def __init__(self, size: int, latent: int = 128, channels: int = 3, width: int = 32):
        super().__init__()
        self.size, self.latent, self.channels, self.width = size, latent, channels, width
        self.encoder = _Encoder(size, channels, width)
        self.to_mu = nn.Linear(self.encoder.out_features, latent)
        self.to_logvar = nn.Linear(self.encoder.out_features, latent)
        self.decoder = _Decoder(size, channels, width, latent)

    def posterior(self, x):
        h = self.encoder(x)
        return self.to_mu(h), self.to_logvar(h)

    def encode(self, x):
        return self.to_mu(self.encoder(x))

    def decode(self, z):
        return torch.sigmoid(self.decoder(z))

    def forward(self, x):
        return self.decode(self.encode(x))

    def loss(self, x, generator=None):
        """Negative ELBO per image: BCE summed over pixels + KL(q(z|x) || N(0, I))."""
        mu, logvar = self.posterior(x)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + eps * torch.exp(0.5 * logvar)
        logits = self.decoder(z)
        n = x.shape[0]
        rec = F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / n
        kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / n
        return rec + kl

    def sample(self, n: int, generator=None, device=None):
        z = torch.randn((n, self.latent), generator=generator, device=device)
        return self.decode(z)


def build_net(model: str, size: int, latent: int, channels: int = 3, width: int = 32) -> nn.Module:
    if model == "ae":
        return ConvAE(size, latent, channels, width)
    if model == "vae":
        return ConvVAE(size, latent, channels, width)
    raise ValueError(f"unknown model {model!r}")
