"""DCGAN generator and discriminator (Radford et al. 2015) on pykernels ConvTranspose2d / Conv2d.

The paper's stacks of stride-2 4x4 (transposed) convolutions, doubling (halving) the image side
per layer, with BatchNorm2d (torch.nn's in both builds) after every layer but the generator's
last and the discriminator's first and last; no biases in the convolutions (batch norm follows).
S = image_size; a stack starts (ends) at a side of 7 for 28 (MNIST: 7 -> 14 -> 28) and 4 for
32 / 64 (4 -> 8 -> ... -> S); n = the number of doublings (2, 3, 4); widths are ngf * 2^i:

DCGANGenerator: z [B, nz] or [B, nz, 1, 1]
    main.0  ConvTranspose2d(nz, ngf*2^(n-1), k=base, s=1, p=0)   [B, ngf*2^(n-1), base, base]
            BatchNorm2d, ReLU
    ...     ConvTranspose2d(ngf*2^i, ngf*2^(i-1), 4, 2, 1)          side doubled, i = n-1 .. 1
            BatchNorm2d, ReLU
    last    ConvTranspose2d(ngf, nc, 4, 2, 1), Tanh                  [B, nc, S, S] in [-1, 1]
DCGANDiscriminator: image [B, nc, S, S]
    main.0  Conv2d(nc, ndf, 4, 2, 1), LeakyReLU(0.2)                 [B, ndf, S/2, S/2]
    ...     Conv2d(ndf*2^(i-1), ndf*2^i, 4, 2, 1), BatchNorm2d, LeakyReLU(0.2), i = 1 .. n-1
    last    Conv2d(ndf*2^(n-1), 1, k=base, s=1, p=0)                 [B, 1, 1, 1] -> [B] logits
            (no sigmoid: train with BCEWithLogitsLoss)
Weights as the paper: convolutions N(0, 0.02), batch-norm weight N(1, 0.02), bias 0.
`X.with_torch_layers(...)` builds the same network from torch.nn (same state_dict keys main.N.*).
"""

import torch

from ._base import TorchTwin, resolve_layers

__all__ = ["DCGANGenerator", "DCGANDiscriminator"]

_STACKS = {28: (7, 2), 32: (4, 3), 64: (4, 4)}   # image_size -> (side at the narrow end, doublings)


def _stack(image_size):
    if image_size not in _STACKS:
        raise ValueError(f"image_size={image_size!r}: expected one of {sorted(_STACKS)}")
    return _STACKS[image_size]


def _dcgan_init(module):
    """The DCGAN paper's initialisation: conv weights N(0, 0.02); batch norm weight N(1, 0.02), bias 0."""
    for m in module.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            torch.nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.normal_(m.weight, 1.0, 0.02)
            torch.nn.init.zeros_(m.bias)


class DCGANGenerator(TorchTwin, torch.nn.Module):
    """DCGAN generator: z [B, nz] (or [B, nz, 1, 1]) -> image [B, nc, S, S] in [-1, 1].

    Args:
        nz: latent size; ngf: generator width (channels before the last layer);
        nc: output channels; image_size: S in {28, 32, 64}.
        layers: the layer namespace (default pykernels.nn; torch.nn for the twin).
        device, dtype: passed to the layers.

    Raises:
        ValueError: an unsupported ``image_size``; from forward, z not [B, nz] or [B, nz, 1, 1].
    """

    def __init__(self, nz=100, ngf=64, nc=1, image_size=28, *, layers=None, device=None, dtype=None):
        super().__init__()
        base, n = _stack(image_size)
        nn = resolve_layers(layers)
        fk = dict(device=device, dtype=dtype)
        self.nz, self.image_size = nz, image_size
        width = ngf * 2 ** (n - 1)
        mods = [nn.ConvTranspose2d(nz, width, base, 1, 0, bias=False, **fk),       # [B, width, base, base]
                torch.nn.BatchNorm2d(width, **fk), torch.nn.ReLU(True)]
        for _ in range(n - 1):                                                    # side doubled, width halved
            mods += [nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False, **fk),
                     torch.nn.BatchNorm2d(width // 2, **fk), torch.nn.ReLU(True)]
            width //= 2
        mods += [nn.ConvTranspose2d(width, nc, 4, 2, 1, bias=False, **fk), torch.nn.Tanh()]   # [B, nc, S, S]
        self.main = torch.nn.Sequential(*mods)
        _dcgan_init(self)

    def forward(self, z):
        if z.dim() == 2:
            z = z[:, :, None, None]                    # [B, nz] -> [B, nz, 1, 1]
        if z.dim() != 4 or z.shape[1] != self.nz or z.shape[2:] != (1, 1):
            raise ValueError(f"z: expected [B, {self.nz}] or [B, {self.nz}, 1, 1], got shape {tuple(z.shape)}")
        return self.main(z)                            # [B, nc, S, S]


class DCGANDiscriminator(TorchTwin, torch.nn.Module):
    """DCGAN discriminator: image [B, nc, S, S] -> logits [B] (no sigmoid).

    Args:
        nc: input channels; ndf: discriminator width (channels after the first layer);
        image_size: S in {28, 32, 64}.
        layers: the layer namespace (default pykernels.nn; torch.nn for the twin).
        device, dtype: passed to the layers.

    Raises:
        ValueError: an unsupported ``image_size``; from forward, an image not [B, nc, S, S].
    """

    def __init__(self, nc=1, ndf=64, image_size=28, *, layers=None, device=None, dtype=None):
        super().__init__()
        base, n = _stack(image_size)
        nn = resolve_layers(layers)
        fk = dict(device=device, dtype=dtype)
        self.nc, self.image_size = nc, image_size
        mods = [nn.Conv2d(nc, ndf, 4, 2, 1, bias=False, **fk),                        # [B, ndf, S/2, S/2]
                torch.nn.LeakyReLU(0.2, True)]
        width = ndf
        for _ in range(n - 1):                                                      # side halved, width doubled
            mods += [nn.Conv2d(width, width * 2, 4, 2, 1, bias=False, **fk),
                     torch.nn.BatchNorm2d(width * 2, **fk), torch.nn.LeakyReLU(0.2, True)]
            width *= 2
        mods += [nn.Conv2d(width, 1, base, 1, 0, bias=False, **fk)]                 # [B, 1, 1, 1]
        self.main = torch.nn.Sequential(*mods)
        _dcgan_init(self)

    def forward(self, x):
        want = (self.nc, self.image_size, self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"x: expected [B, {want[0]}, {want[1]}, {want[2]}], got shape {tuple(x.shape)}")
        return self.main(x).reshape(x.shape[0])        # [B]
