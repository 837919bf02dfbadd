"""Publishing a trained model on the Hugging Face Hub: :func:`push_to_hub`.

The repository holds the saved model folder (``config.json``, the card; ``model.safetensors``)
and a ``README.md`` model card for people: architecture, classes, preprocessing, metrics and
how to load it, with moderncnn (``load_model("hf_hub:user/repo")``) and, for the ResNet family,
in plain PyTorch without moderncnn or timm. Loading back is :func:`~moderncnn.load_model`.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from moderncnn.io.card import ModelCard
from moderncnn.io.hub import HUB_PREFIX, hub_module, parse_hub_id
from moderncnn.models import get_variant_config, is_model

from .loading import read_card, save_model

__all__ = ["model_card_markdown", "plain_pytorch_snippet", "push_to_hub"]

# The ResNet constructor arguments the plain-PyTorch snippet rebuilds (resnet.py's defaults);
# a card asking for any other one gets no snippet rather than a wrong network.
_RESNET_DEFAULTS = {
    "channels": (64, 128, 256, 512),
    "stem": "imagenet",
    "groups": 1,
    "width_per_group": 64,
    "drop_rate": 0.0,
    "zero_init_residual": False,
}

# A ResNet in plain PyTorch with our (torchvision's) state_dict keys; {args} is filled in.
_PLAIN_RESNET = '''\
import json

import torch
from huggingface_hub import snapshot_download
from safetensors.torch import load_file
from torch import nn
from torchvision.transforms import v2

folder = snapshot_download("{repo_id}")  # or the path of the saved model folder
card = json.load(open(f"{{folder}}/config.json"))


class Unit(nn.Module):
    """A residual unit: two 3x3 convs (basic) or 1x1-3x3-1x1 (bottleneck), relu(x + F(x))."""

    def __init__(self, cin, width, stride, bottleneck, groups, width_per_group):
        super().__init__()
        out = width * 4 if bottleneck else width
        inner = int(width * width_per_group / 64) * groups if bottleneck else width
        if bottleneck:
            self.conv1 = nn.Conv2d(cin, inner, 1, bias=False)
            self.conv2 = nn.Conv2d(inner, inner, 3, stride, 1, groups=groups, bias=False)
            self.conv3, self.bn3 = nn.Conv2d(inner, out, 1, bias=False), nn.BatchNorm2d(out)
        else:
            self.conv1 = nn.Conv2d(cin, inner, 3, stride, 1, bias=False)
            self.conv2 = nn.Conv2d(inner, out, 3, 1, 1, bias=False)
        self.bn1, self.bn2 = nn.BatchNorm2d(inner), nn.BatchNorm2d(inner if bottleneck else out)
        self.bottleneck = bottleneck
        self.downsample = None
        if stride != 1 or cin != out:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, out, 1, stride, bias=False), nn.BatchNorm2d(out)
            )

    def forward(self, x):
        skip = x if self.downsample is None else self.downsample(x)
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        if self.bottleneck:
            y = self.bn3(self.conv3(torch.relu(y)))
        return torch.relu(y + skip)


class ResNet(nn.Module):
    def __init__(self, layers, channels, bottleneck, stem, groups, width_per_group,
                 num_classes, in_chans):
        super().__init__()
        if stem == "cifar":  # small images: one 3x3 stride-1 conv, no max-pool
            self.conv1, self.maxpool = nn.Conv2d(in_chans, channels[0], 3, 1, 1, bias=False), None
        else:
            self.conv1 = nn.Conv2d(in_chans, channels[0], 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.bn1 = nn.BatchNorm2d(channels[0])
        cin, self.stages = channels[0], len(layers)
        for i, (depth, width) in enumerate(zip(layers, channels)):
            units = []
            for j in range(depth):
                stride = 2 if i > 0 and j == 0 else 1
                units.append(Unit(cin, width, stride, bottleneck, groups, width_per_group))
                cin = width * 4 if bottleneck else width
            setattr(self, f"layer{{i + 1}}", nn.Sequential(*units))
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = x if self.maxpool is None else self.maxpool(x)
        for i in range(self.stages):
            x = getattr(self, f"layer{{i + 1}}")(x)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


model = ResNet({args}, num_classes=card["num_classes"], in_chans=card["in_chans"])
model.load_state_dict(load_file(f"{{folder}}/model.safetensors"))
model.eval()

# The evaluation preprocessing of the card: PIL image -> normalised 1 x C x H x W tensor.
pre = card["preprocess"]
size = [pre["image_size"]] * 2
resize = [v2.Resize(size)] if pre["resize_size"] is None else [
    v2.Resize(pre["resize_size"]), v2.CenterCrop(size)]
preprocess = v2.Compose([v2.ToImage(), *resize, v2.ToDtype(torch.float32, scale=True),
                         v2.Normalize(pre["mean"], pre["std"])])
# image = PIL.Image.open("photo.jpg").convert("L" if card["in_chans"] == 1 else "RGB")
# with torch.no_grad():
#     probs = model(preprocess(image)[None]).softmax(1)
#     print(card["class_names"][probs.argmax().item()])
'''


def plain_pytorch_snippet(card: ModelCard, repo_id: str) -> str | None:
    """Python that rebuilds ``card``'s network in plain PyTorch (no moderncnn, no timm) and loads
    the folder's weights; None when the architecture is not one the snippet builds (the ResNet
    family at any depth, width, stem or group count)."""
    if card.kind != "classifier" or not is_model(card.architecture):
        return None
    config = get_variant_config(card.architecture)
    if config.family != "resnet":
        return None
    args = _RESNET_DEFAULTS | config.build_args(card.model_kwargs)
    block = args.pop("block")
    if set(args) - set(_RESNET_DEFAULTS) - {"layers"}:
        return None  # an argument the snippet does not know: better none than a wrong network
    text = (
        f"layers={list(args['layers'])}, channels={list(args['channels'])}, "
        f"bottleneck={block.__name__ == 'Bottleneck'}, stem={args['stem']!r}, "
        f"groups={args['groups']}, width_per_group={args['width_per_group']}"
    )
    return _PLAIN_RESNET.format(repo_id=repo_id, args=text)


def _table(rows: Mapping[str, Any]) -> str:
    lines = ["| | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in rows.items()]
    return "\n".join(lines)


def _code(text: Any) -> str:
    """``text`` as inline code in a Markdown table cell: no backtick or pipe can end it early."""
    flat = " ".join(str(text).split())  # a newline would end the table row
    return "`" + flat.replace("`", "'").replace("|", "\\|") + "`"


def model_card_markdown(card: ModelCard, repo_id: str) -> str:
    """The Hub's ``README.md`` for a saved model: what it is, what it predicts, how to load it."""
    names = card.names()
    pre = card.preprocess
    shown = ", ".join(_code(name) for name in names[:50])
    if len(names) > 50:
        shown += f", ... ({len(names)} in all)"
    facts = {
        "architecture": f"`{card.architecture}`",
        "keyword arguments": f"`{json.dumps(dict(card.model_kwargs))}`",
        "classes": f"{card.num_classes}: {shown}",
        "input channels": card.in_chans,
    }
    if pre is not None:
        facts["preprocessing"] = (
            f"{'resize to' if pre.resize_size is None else f'resize {pre.resize_size}, crop'} "
            f"{pre.image_size}x{pre.image_size}, scale to [0, 1], normalise with mean "
            f"{list(pre.mean)} and std {list(pre.std)}"
            + (" (images converted to 8-bit grey first)" if pre.in_chans == 1 else "")
        )
    metrics = {_code(key): value for key, value in card.metrics.items()}
    metric_text = _table(metrics) if metrics else "No metrics were recorded with this model."
    plain = plain_pytorch_snippet(card, repo_id)
    plain_text = (
        "Without moderncnn or timm (PyTorch, torchvision's transforms, safetensors and "
        f"huggingface_hub only):\n\n```python\n{plain}```"
        if plain
        else f"A plain-PyTorch definition is not generated for `{card.architecture}`; load it "
        "with moderncnn, or export it to ONNX (`moderncnn export FOLDER --format onnx`)."
    )
    return f"""---
library_name: moderncnn
tags:
- image-classification
- pytorch
- moderncnn
---

# {repo_id}

A `{card.architecture}` image classifier made with moderncnn. The files are moderncnn's saved model
folder: `config.json` (the model card: architecture, classes, preprocessing) and
`model.safetensors` (the weights; tensors only, no pickled code).

{_table(facts)}

## Metrics

{metric_text}

## How to load it

With moderncnn (`pip install 'moderncnn[hub]'`):

```python
import moderncnn

model = moderncnn.load_model("{HUB_PREFIX}{repo_id}")
model.predict(["photo.jpg"], topk=3)
```

or on the command line: `moderncnn predict --checkpoint {HUB_PREFIX}{repo_id} photo.jpg`.

{plain_text}
"""


def push_to_hub(
    model: Any,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload a moderncnn model",
    metrics: Mapping[str, float] | None = None,
) -> str:
    """Upload ``model`` to the Hugging Face Hub as a saved model folder with a model card.

    Args:
        model: what :func:`~moderncnn.save_model` takes: a loaded model, an ``ImageClassifier``
            or an ``nn.Module`` with its ``card``.
        repo_id: ``user/repo`` (``hf_hub:`` in front is accepted); created if missing.
        private: create the repository private.
        token: a Hub token; by default huggingface_hub's own (``HF_TOKEN``, ``hf auth login``).
        commit_message: the commit's message on the Hub.
        metrics: results to record in the card and show on the model card page (e.g.
            ``{"test_acc": 0.906}``), added to those the card already holds.

    Returns:
        The URL of the commit, as ``HfApi.upload_folder`` reports it.
    """
    repo_id, _ = parse_hub_id(repo_id)
    hub = hub_module(f"push_to_hub({repo_id!r})")
    card = getattr(model, "card", None)
    if metrics and isinstance(card, ModelCard):
        card = card.replace(metrics={**card.metrics, **metrics})
    with tempfile.TemporaryDirectory(prefix="moderncnn-hub-") as tmp:
        folder = save_model(model, Path(tmp) / "model", card=card)
        text = model_card_markdown(read_card(folder), repo_id)
        (folder / "README.md").write_text(text, encoding="utf-8")
        api = hub.HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id, folder_path=str(folder), commit_message=commit_message
        )
    return str(getattr(info, "commit_url", info))
