"""Grad-CAM (Selvaraju et al. 2017, "Grad-CAM: Visual Explanations from Deep Networks"):
where in an image a network looked when it chose a class.

The map is the ReLU of a stage's feature maps weighted by the class score's mean gradient
over each map, upsampled to the image. Captum's ``LayerGradCam`` computes it (a well-kept
implementation, its hooks tested upstream); this module picks the stage from the model's
``feature_info`` (the last stage by default), reads images as the model's card says, and
draws the picture: the image, the overlay, the top classes.

``moderncnn explain --checkpoint CKPT IMAGES... [--out DIR] [--class NAME] [--stage N]``
writes one PNG per image.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from moderncnn.data.files import find_images
from moderncnn.data.images import BadImageError, load_image
from moderncnn.inference import LoadedModel, load_model
from moderncnn.io.card import ModelCard
from moderncnn.io.errors import ConfigError, DataError
from moderncnn.io.pixels import denormalize
from moderncnn.io.safe_text import plain_text_label

from ._figure import finish, in_ipython, new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "Explanation",
    "eval_mode",
    "explain",
    "grad_cam",
    "network_and_card",
    "overlay",
    "plot_explanation",
    "target_layer",
]

Images = str | Path | Tensor | Sequence[str | Path]


@dataclass
class Explanation:
    """One image's Grad-CAM: the picture, the map and the classes it is drawn for."""

    # Tensors left out of the repr: a notebook shows the pictures, not their numbers.
    image: Tensor = field(repr=False)  # C x H x W, [0, 1]: as the network saw it, unnormalised
    heatmap: Tensor = field(repr=False)  # H x W, [0, 1]: 1 where the class evidence is strongest
    target: str  # the class the map explains (the predicted one unless asked otherwise)
    classes: list[str]  # the top classes, most probable first
    probabilities: list[float]
    stage: str  # the module whose maps were used
    file: str | None = None

    def figure(self, save: str | Path | None = None) -> Figure:
        return plot_explanation(self, save)


# -- the map -----------------------------------------------------------------------------


def target_layer(network: nn.Module, stage: int | str | None = None) -> tuple[str, nn.Module]:
    """The module whose output Grad-CAM weighs: ``feature_info[stage]`` (default: the last
    stage), a module name, or, for a network without ``feature_info``, its last conv."""
    prefix, features = "", network
    if not hasattr(network, "feature_info") and hasattr(network, "backbone"):  # a probe model
        prefix, features = "backbone.", network.backbone
    if isinstance(stage, str):
        try:
            return stage, network.get_submodule(stage)
        except AttributeError:
            message = f"stage {stage!r} is not a module of {type(network).__name__}"
            raise ConfigError(message) from None
    infos = getattr(features, "feature_info", None)
    if infos:
        index = -1 if stage is None else stage
        if not -len(infos) <= index < len(infos):
            names = ", ".join(f"{i}: {info.module}" for i, info in enumerate(infos))
            raise ConfigError(f"stage {stage} does not exist; the stages are {names}")
        name = prefix + infos[index].module
        return name, network.get_submodule(name)
    convs = [(n, m) for n, m in network.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs or stage is not None:
        raise ConfigError(
            f"{type(network).__name__} has no feature_info; give stage as a module name"
        )
    return convs[-1]


# Images per backward pass. Grad-CAM keeps a batch's activations for the backward pass, so
# memory grows with the batch, not with the number of images (issue 23, M5: ResNet-50 at 224 px
# peaks at 5.2 GB for 48 images at once, 1.7 GB in batches of 8, and runs no slower). Each map
# depends on its own image only (eval mode): batching changes nothing.
GRAD_CAM_BATCH = 8


def grad_cam(
    network: nn.Module,
    inputs: Tensor,
    targets: Tensor | None = None,
    stage: int | str | None = None,
    batch_size: int = GRAD_CAM_BATCH,
) -> tuple[Tensor, Tensor]:
    """Grad-CAM maps (N x H x W, each scaled to [0, 1]) of normalised ``inputs`` for
    ``targets`` (default: each image's predicted class), and the logits (N x classes).

    The images go through ``batch_size`` at a time, each batch moved to the network's device.
    The network runs in eval mode with gradients on (auxiliary heads are off in eval mode);
    every module's mode is restored afterwards.
    """
    _check_positive("batch_size", batch_size)
    if len(inputs) == 0:
        raise ConfigError("no images given to Grad-CAM")
    _, layer = target_layer(network, stage)
    device = next(iter(network.parameters()), inputs).device
    maps, logits = [], []
    with eval_mode(network):
        for start in range(0, len(inputs), batch_size):
            batch = slice(start, start + batch_size)
            chosen = None if targets is None else targets[batch]
            batch_maps, batch_logits = _grad_cam_batch(
                network, layer, inputs[batch].to(device), chosen
            )
            maps.append(batch_maps)
            logits.append(batch_logits)
    return torch.cat(maps), torch.cat(logits)


def _check_positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive int, got {value!r}")


def _grad_cam_batch(
    network: nn.Module, layer: nn.Module, inputs: Tensor, targets: Tensor | None
) -> tuple[Tensor, Tensor]:
    """One batch's maps and logits, on the CPU (the network already in eval mode)."""
    from captum.attr import LayerAttribution, LayerGradCam

    def logits_of(x: Tensor) -> Tensor:
        out = network(x)
        return (out[0] if isinstance(out, tuple) else out).float()

    # Clones: tensors made under inference mode (Lightning's test loop) cannot enter autograd.
    with torch.inference_mode(False), torch.enable_grad():
        x = inputs.detach().clone()
        with torch.no_grad():
            logits = logits_of(x)
        chosen = logits.argmax(1) if targets is None else targets.to(logits.device).clone()
        cams = LayerGradCam(logits_of, layer).attribute(x, target=chosen, relu_attributions=True)
        cams = LayerAttribution.interpolate(cams, tuple(x.shape[-2:]), "bilinear")
    cams = cams.detach()[:, 0].float()
    peak = cams.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
    return (cams / peak).clamp(0, 1).cpu(), logits.detach().cpu()


# -- images, models and the picture --------------------------------------------------------


@contextmanager
def eval_mode(network: nn.Module) -> Iterator[None]:
    """Eval mode (auxiliary heads off, batch-norm statistics fixed); every module's own
    train/eval mode is put back afterwards."""
    modes = {m: m.training for m in network.modules()}
    network.eval()
    try:
        yield
    finally:
        for module, training in modes.items():
            module.train(training)


def network_and_card(model: Any) -> tuple[nn.Module, ModelCard | None]:
    """The torch network Grad-CAM runs, and its card where known, of a model file's path, a
    :class:`LoadedModel`, an ``ImageClassifier`` (its ``.model``) or any ``nn.Module``."""
    if isinstance(model, str | Path):
        model = load_model(model)
    if isinstance(model, LoadedModel):
        if model.network is None:
            raise DataError(
                f"{model.path} is an exported model with no torch network; Grad-CAM needs "
                "gradients: give the checkpoint (.ckpt) or saved model folder instead"
            )
        return model.network, model.card
    if isinstance(model, nn.Module):
        card = getattr(model, "card", None)
        inner = getattr(model, "model", None)  # ImageClassifier: the network it trains
        network = inner if isinstance(inner, nn.Module) and card is not None else model
        return network, card if isinstance(card, ModelCard) else None
    raise ConfigError(
        f"model must be a model file's path, a LoadedModel or an nn.Module, "
        f"got {type(model).__name__}"
    )


def _read_images(
    images: Images, card: ModelCard | None
) -> tuple[Tensor, Tensor, list[str | None], list[tuple[str, str]]]:
    """(model inputs, display images, file names, unreadable files with why)."""
    if isinstance(images, Tensor):
        batch = images if images.ndim == 4 else images[None]
        display = batch
        if card is not None and card.preprocess is not None:
            display = denormalize(batch, card.preprocess.mean, card.preprocess.std)
        return batch, display.clamp(0, 1), [None] * len(batch), []
    files = [Path(images)] if isinstance(images, str | Path) else [Path(f) for f in images]
    if not files:
        raise ConfigError("no images given to explain")
    if card is None or card.preprocess is None:
        raise ConfigError(
            "this model records no preprocessing (image size, mean, std): pass the images "
            "as a normalised N x C x H x W tensor"
        )
    transform, kept, names, skipped = card.preprocess.transform(), [], [], []
    for file in files:
        try:
            kept.append(transform(load_image(file)))
            names.append(str(file))
        except (BadImageError, OSError) as err:
            skipped.append((str(file), str(err)))
    if not kept:
        raise DataError(f"none of the images could be read: {skipped[0][1]}")
    batch = torch.stack(kept)
    display = denormalize(batch, card.preprocess.mean, card.preprocess.std)
    return batch, display, names, skipped


def _class_index(target: str | int | None, names: list[str]) -> int | None:
    if target is None:
        return None
    if isinstance(target, int) and not isinstance(target, bool) and 0 <= target < len(names):
        return target
    if isinstance(target, str) and target in names:
        return names.index(target)
    shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
    raise ConfigError(f"class {target!r} is not one of the model's classes ({shown})")


def explain(
    model: Any,
    images: Images,
    *,
    target: str | int | None = None,
    stage: int | str | None = None,
    topk: int = 3,
    out: str | Path | None = None,
    batch_size: int = GRAD_CAM_BATCH,
) -> list[Explanation]:
    """Grad-CAM explanations of ``images`` (files, or a normalised N x C x H x W tensor).

    Args:
        model: the trained artifact (a .ckpt, probe or saved-model folder), a LoadedModel, an
            ImageClassifier or any classifier nn.Module.
        images: image files or folders of images, or a normalised N x C x H x W tensor.
        target: the class to explain, by name or index (default: each image's prediction).
        stage: feature_info index or module name (default: the last stage).
        topk: classes listed beside each map.
        out: a folder: one ``IMAGE.gradcam.png`` per image is written there.
        batch_size: images per Grad-CAM pass; memory grows with it, not with the image count.
    """
    _check_positive("topk", topk)
    _check_positive("batch_size", batch_size)
    if not isinstance(images, Tensor):  # folders: their images
        items = [images] if isinstance(images, str | Path) else images
        images = [
            f for item in map(Path, items) for f in (find_images(item) if item.is_dir() else [item])
        ]
    network, card = network_and_card(model)
    inputs, display, files, skipped = _read_images(images, card)
    device = next(iter(network.parameters()), torch.empty(0)).device
    if card is not None:
        names = card.names()
    else:
        names = [str(i) for i in range(_class_count(network, inputs[:1].to(device)))]
    index = _class_index(target, names)
    targets = None if index is None else torch.full((len(inputs),), index)
    maps, logits = grad_cam(network, inputs, targets, stage, batch_size)
    stage_name, _ = target_layer(network, stage)
    probs = logits.softmax(1)
    top = probs.topk(min(topk, probs.shape[1]), dim=1)
    chosen = probs.argmax(1) if targets is None else targets
    results = [
        Explanation(
            image=display[i].cpu(),
            heatmap=maps[i],
            target=names[int(chosen[i])],
            classes=[names[j] for j in top.indices[i].tolist()],
            probabilities=top.values[i].tolist(),
            stage=stage_name,
            file=files[i],
        )
        for i in range(len(inputs))
    ]
    if out is not None:
        _write_pictures(results, Path(out))  # each also shown in a notebook
    elif in_ipython():
        for result in results:
            plot_explanation(result)  # shown in the notebook's cell
    for file, why in skipped:
        print(f"skipped {file}: {why}")
    return results


def _class_count(network: nn.Module, x: Tensor) -> int:
    """Classes of a network that has no card: the width of its logits on one image."""
    with eval_mode(network), torch.no_grad():
        out = network(x)
    return (out[0] if isinstance(out, tuple) else out).shape[1]


def _write_pictures(results: list[Explanation], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written, taken = [], set()
    for i, result in enumerate(results):
        stem = Path(result.file).stem if result.file else f"image_{i}"
        name = f"{stem}.gradcam.png"
        if name in taken:  # two files of one name from different folders
            name = f"{stem}_{i}.gradcam.png"
        taken.add(name)
        plot_explanation(result, save=folder / name)
        written.append(folder / name)
    return written


def overlay(image: Tensor, heatmap: Tensor, alpha: float = 0.5) -> np.ndarray:
    """H x W x 3 floats: the image in grey-or-colour with the map in the ``jet`` colours on
    top, opaque where the map is high (Grad-CAM's usual picture)."""
    from matplotlib import colormaps

    picture = image.detach().cpu().clamp(0, 1)
    picture = picture.expand(3, -1, -1) if picture.shape[0] == 1 else picture
    rgb = picture.permute(1, 2, 0).numpy()
    heat = heatmap.detach().cpu().clamp(0, 1).numpy()
    colours = colormaps["jet"](heat)[..., :3]
    weight = alpha * heat[..., None]
    return ((1 - weight) * rgb + weight * colours).clip(0, 1)


def plot_explanation(result: Explanation, save: str | Path | None = None) -> Figure:
    """The image, the Grad-CAM overlay and the top classes with their probabilities."""
    figure = new_figure(figsize=(9, 3.2))
    left, middle, right = figure.subplots(1, 3, gridspec_kw={"width_ratios": [1, 1, 1.2]})
    image = result.image.clamp(0, 1)
    if image.shape[0] == 1:
        left.imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=1)
    else:
        left.imshow(image.permute(1, 2, 0).numpy())
    left.set_title(Path(result.file).name if result.file else "image", fontsize=9)
    middle.imshow(overlay(result.image, result.heatmap))
    middle.set_title(f"Grad-CAM: {result.target}\n({result.stage})", fontsize=9)
    for ax in (left, middle):
        ax.axis("off")
    ranks = list(range(len(result.classes)))[::-1]
    right.barh(ranks, result.probabilities, color="#4c72b0")
    right.set_yticks(ranks, [plain_text_label(c) for c in result.classes], fontsize=8)
    right.set_xlim(0, 1)
    right.set_xlabel("probability")
    for rank, p in zip(ranks, result.probabilities, strict=True):
        right.text(min(p + 0.02, 0.8), rank, f"{p:.1%}", va="center", fontsize=8)
    right.set_title(f"top {len(result.classes)}", fontsize=9)
    figure.tight_layout()
    return finish(figure, save)


# -- command line ------------------------------------------------------------------------


def show_explanations(results: list[Explanation], arguments: dict[str, Any]) -> int:
    """What ``moderncnn explain`` prints: each image's classes, and where the pictures are."""
    for result in results:
        shown = ", ".join(
            f"{c} {p:.1%}" for c, p in zip(result.classes, result.probabilities, strict=True)
        )
        print(f"{result.file}: {shown}")
    where = arguments.get("out")
    print(f"Grad-CAM pictures ({results[0].stage}): {Path(where) if where else 'not saved'}")
    return 0
