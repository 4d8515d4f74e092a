"""Models for the training CLI: an encoder f_enc, an optional FDS layer, and a regression head.

    pred = head(FDS(f_enc(x), y))           (FDS only in training, from its start_smooth epoch)

- ``mlp``: 2-layer MLP (tabular data, the motivation experiment).
- ``cnn``: a small conv net (4 conv-BN-ReLU layers), the fast default for the 32 px default data.
- ``resnet18`` / ``resnet50``: the built-in ResNet below, trained from scratch as in DIR. Its
  layout and state-dict keys are torchvision's (conv1, bn1, layer1.0.conv1, ...,
  layer2.0.downsample.0; no fc, the regression head replaces it), so weights move both ways
  between it and torchvision's resnet18/50, and runs do not depend on whether torchvision is
  installed. BasicBlock [2, 2, 2, 2] / Bottleneck [3, 4, 6, 3] (stride on the 3x3 conv, v1.5);
  the ImageNet 7x7 stride-2 stem + max-pool, or for inputs of 64 px or less a 3x3 stride-1
  ``conv1`` and no max-pool.
- ``depthnet``: the NYUD2 encoder-decoder: a ResNet encoder (4 stages) and a decoder that
  upsamples the deepest map and fuses the skip connections (sum after a 1x1 projection), ending in
  a 1-channel depth map at the input resolution.

The model protocol (`Regressor`): ``model(x)`` returns the prediction, as any nn.Module would
(evaluation, plots, SSIRLoss with its default call). The training step asks for more, explicitly:

    out = model(x, labels=y, epoch=e, features=True)   # RegressionOutput(pred, features)
    pred = model(x, labels=y, epoch=e)                 # the prediction only

- ``labels``: the batch's labels; FDS calibrates the features with its current statistics (in
  training, from its start_smooth epoch). Without labels FDS is off. The forward never collects
  FDS statistics: the step feeds ``fds.update`` with the features of the clean pass.
- ``features=True``: the encoder's features (before FDS) come back next to the prediction, for
  the FDS statistics and RankSim. Nothing is kept on the module between calls.
"""
from typing import NamedTuple, Optional

import torch
from torch import nn
import torch.nn.functional as F

__all__ = ["Regressor", "RegressionOutput", "build_model", "MODELS", "ResNet", "DepthNet"]

MODELS = ("mlp", "cnn", "resnet18", "resnet50", "depthnet")


class _BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, width, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample = _shortcut(cin, width, stride)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, width, stride):
        super().__init__()
        cout = width * 4
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.downsample = _shortcut(cin, cout, stride)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


def _shortcut(cin, cout, stride):
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class ResNet(nn.Module):
    """Built-in ResNet feature extractor with torchvision's module names; ``forward`` returns the
    pooled features [N, C], and ``stages(x)`` the four stage outputs (for the depth decoder)."""

    def __init__(self, depth=18, width=64, small_input=True, in_channels=3):
        super().__init__()
        if depth not in (18, 50):
            raise ValueError(f"depth must be 18 or 50, got {depth}")
        block, layers = (_BasicBlock, (2, 2, 2, 2)) if depth == 18 else (_Bottleneck, (3, 4, 6, 3))
        if small_input:
            self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity() if small_input else nn.MaxPool2d(3, 2, 1)
        cin, self.channels = width, []
        stages = []
        for i, n in enumerate(layers):
            w = width * 2 ** i
            blocks = []
            for j in range(n):
                blocks.append(block(cin, w, 2 if (j == 0 and i > 0) else 1))
                cin = w * block.expansion
            stages.append(nn.Sequential(*blocks))
            self.channels.append(cin)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.out_features = cin
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def stages(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            out.append(x)
        return out

    def forward(self, x):
        return torch.flatten(F.adaptive_avg_pool2d(self.stages(x)[-1], 1), 1)


class SmallCNN(nn.Module):
    """conv(3->w)-conv(w->w)-pool-conv(w->2w)-pool-conv(2w->2w)-global pool: features [N, 2w]."""

    def __init__(self, width=32, in_channels=3):
        super().__init__()

        def block(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                    nn.ReLU(inplace=True)]
        self.net = nn.Sequential(*block(in_channels, width), *block(width, width), nn.MaxPool2d(2),
                                 *block(width, 2 * width), nn.MaxPool2d(2),
                                 *block(2 * width, 2 * width), nn.AdaptiveAvgPool2d(1),
                                 nn.Flatten())
        self.out_features = 2 * width

    def forward(self, x):
        return self.net(x)


class MLP(nn.Module):
    """in -> hidden -> ReLU -> hidden -> ReLU (features [N, hidden]); the head adds the output."""

    def __init__(self, in_features, hidden=128, layers=2):
        super().__init__()
        mods, cin = [], in_features
        for _ in range(layers):
            mods += [nn.Linear(cin, hidden), nn.ReLU()]
            cin = hidden
        self.net = nn.Sequential(*mods)
        self.out_features = hidden

    def forward(self, x):
        return self.net(x.reshape(x.shape[0], -1))


class DepthNet(nn.Module):
    """NYUD2 encoder-decoder: ResNet encoder stages s1..s4, decoder
    d4 = proj(s4); d_k = conv(up(d_{k+1}) + proj(s_k)) for k = 3, 2, 1; depth = conv(up(d1)) at the
    input size. ``encode`` returns the decoder's last feature map (FDS / RankSim are not used on
    dense outputs by the CLI)."""

    def __init__(self, depth=50, width=64, dec=128):
        super().__init__()
        self.encoder = ResNet(depth, width, small_input=False)
        self.proj = nn.ModuleList(nn.Conv2d(c, dec, 1) for c in self.encoder.channels)
        self.fuse = nn.ModuleList(nn.Sequential(nn.Conv2d(dec, dec, 3, padding=1, bias=False),
                                                nn.BatchNorm2d(dec), nn.ReLU(inplace=True))
                                  for _ in range(3))
        self.out = nn.Sequential(nn.Conv2d(dec, dec // 2, 3, padding=1), nn.ReLU(inplace=True),
                                 nn.Conv2d(dec // 2, 1, 3, padding=1))

    def forward(self, x):
        s = self.encoder.stages(x)
        d = self.proj[3](s[3])
        for k in (2, 1, 0):
            d = F.interpolate(d, size=s[k].shape[-2:], mode="bilinear", align_corners=False)
            d = self.fuse[k](d + self.proj[k](s[k]))
        d = F.interpolate(d, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.out(d)


class RegressionOutput(NamedTuple):
    """What ``Regressor(x, ..., features=True)`` returns: the prediction and the encoder's
    features (before FDS), both with their graph. A pair: ``pred, feats = model(...)``."""
    pred: torch.Tensor
    features: Optional[torch.Tensor]


class Regressor(nn.Module):
    """encoder -> [FDS] -> head. See the module docstring for the forward's protocol."""

    def __init__(self, encoder, head, fds=None, outputs=1):
        super().__init__()
        self.encoder, self.head, self.fds = encoder, head, fds
        # pred = head(f) * out_scale + out_shift: the label mean / std of the training set, so
        # the head starts in the label range (see `set_output_range`); one per output for a
        # vector target [N, D].
        shape = () if outputs == 1 else (int(outputs),)
        self.register_buffer("out_scale", torch.ones(shape))
        self.register_buffer("out_shift", torch.zeros(shape))

    def forward(self, x, labels=None, epoch=None, features=False):
        """The prediction, or with ``features=True`` a RegressionOutput(pred, features).
        ``labels`` (one per sample of x) let FDS calibrate the features of epoch ``epoch`` in
        training; without them FDS is off."""
        f = self.encoder(x)
        g = f
        if self.fds is not None and labels is not None and self.training:
            g = self.fds(f, labels, epoch)
        pred = self.head(g) * self.out_scale + self.out_shift
        return RegressionOutput(pred, f) if features else pred

    def set_output_range(self, shift, scale=1.0):
        """Numbers, or one per output (vector targets)."""
        if self.out_shift.dim():
            self.out_shift.copy_(torch.as_tensor(shift, dtype=self.out_shift.dtype))
            self.out_scale.copy_(torch.as_tensor(scale, dtype=self.out_scale.dtype))
            return
        self.out_shift.fill_(float(shift))
        self.out_scale.fill_(float(scale))


class DenseRegressor(Regressor):
    """The depth model: the whole encoder-decoder is the 'encoder', no head."""

    def __init__(self, net):
        super().__init__(net, nn.Identity())


def build_model(name, in_shape, width=None, fds=None, channels_last=False, outputs=1):
    """A `Regressor` for inputs of shape ``in_shape`` (C, H, W) or (F,). ``width``: base width
    (mlp hidden units; cnn / resnet channels; default 128 / 32 / 64). ``fds``: a callable
    feature_dim -> FDS module, or None. ``outputs``: D of a vector target (a head of D outputs)."""
    if name not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {name!r}")
    if name == "depthnet":
        if outputs != 1:
            raise ValueError(f"the depth model predicts one depth map, not {outputs} outputs")
        return DenseRegressor(DepthNet(50, width or 64))
    if name == "mlp":
        n_in = 1
        for s in in_shape:
            n_in *= int(s)
        enc = MLP(n_in, width or 128)
    elif name == "cnn":
        enc = SmallCNN(width or 32, in_shape[0])
    else:
        depth = int(name[len("resnet"):])
        small = max(in_shape[-2:]) <= 64
        enc = ResNet(depth, width or 64, small_input=small, in_channels=in_shape[0])
    feat = enc.out_features
    model = Regressor(enc, nn.Linear(feat, int(outputs)), fds(feat) if fds is not None else None,
                      outputs=outputs)
    return model
