"""FreezeBackbone on a tiny ResNet and real Fashion-MNIST: what trains in each phase, BatchNorm,
the backbone's learning rate under every schedule, resuming, and the fine-tuning config."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch
import yaml
from torch import nn

from moderncnn.data import FashionMNISTDataModule
from moderncnn.models import create_model
from moderncnn.training.module import ImageClassifier
from moderncnn.transfer.finetune import FreezeBackbone, split_head

REPO = Path(__file__).resolve().parents[2]
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # as tests/conftest.py
TINY = {"channels": [8, 16], "layers": [1, 1]}  # 2 stages, 8 and 16 channels: 7k parameters
HEAD = {"model.fc.weight", "model.fc.bias"}
RATIO = 0.1


class Recorder(L.Callback):
    """Per training step: what is trainable and optimised, BatchNorm modes, learning rates."""

    def __init__(self) -> None:
        self.steps: list[dict] = []
        self.snapshots: dict[str, dict[str, torch.Tensor]] = {}

    def _snapshot(self, name: str, pl_module: L.LightningModule) -> None:
        self.snapshots[name] = {k: v.clone() for k, v in pl_module.state_dict().items()}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._snapshot("start", pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._snapshot(f"epoch{trainer.current_epoch}", pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # Runs after FreezeBackbone's hooks (callbacks run in list order).
        names = {id(p): n for n, p in pl_module.named_parameters()}
        groups = trainer.optimizers[0].param_groups
        self.steps.append(
            {
                "epoch": trainer.current_epoch,
                "trainable": {n for n, p in pl_module.named_parameters() if p.requires_grad},
                "trainable_count": sum(
                    p.numel() for p in pl_module.parameters() if p.requires_grad
                ),
                "optimised_count": sum(p.numel() for g in groups for p in g["params"]),
                "groups": [[names[id(p)] for p in g["params"]] for g in groups],
                "lrs": [g["lr"] for g in groups],
                "decay": [g["weight_decay"] for g in groups],
                "bn_training": {
                    m.training for m in pl_module.modules() if isinstance(m, nn.BatchNorm2d)
                },
                "module_training": pl_module.training,
            }
        )


def fit(
    data_dir: Path,
    callback: FreezeBackbone,
    scheduler: str = "cosine",
    max_epochs: int = 2,
    extra: list[L.Callback] | None = None,
    ckpt_path: str | None = None,
    shuffle: bool = True,
) -> tuple[ImageClassifier, Recorder]:
    """Fits the tiny ResNet for ``max_epochs`` on 288 training images (5 steps an epoch)."""
    L.seed_everything(3)
    module = ImageClassifier(
        "resnet18_cifar", num_classes=10, in_chans=1, model_kwargs=TINY, lr=0.05,
        scheduler=scheduler, step_size=1, gamma=0.5, warmup_epochs=0.4,
    )  # fmt: skip
    data = FashionMNISTDataModule(
        data_dir=str(data_dir), train_subset=320, val_size=0.1, batch_size=64, augmentations=[]
    )
    if not shuffle:
        data.train_dataloader = lambda: data._loader(data.train_set)  # the order of the file
    recorder = Recorder()
    trainer = L.Trainer(
        max_epochs=max_epochs,
        callbacks=[callback, recorder, *(extra or [])],
        logger=False,
        enable_checkpointing=bool(extra),
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return module, recorder


@pytest.fixture(scope="module")
def fmnist_dir() -> Path:
    """tests/conftest.py's fmnist_dir, at module scope for the shared run."""
    if not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Debian package dataset-fashion-mnist is not installed")
    return FASHION_MNIST_DIR


@pytest.fixture(scope="module")
def cosine_run(fmnist_dir: Path) -> tuple[ImageClassifier, Recorder]:
    return fit(fmnist_dir, FreezeBackbone(unfreeze_at_epoch=1, backbone_lr_ratio=RATIO))


def _backbone_names(module: ImageClassifier) -> set[str]:
    return {n for n, _ in module.named_parameters()} - HEAD


def test_split_head_finds_classifier_and_aux_heads() -> None:
    resnet = create_model("resnet18_cifar", num_classes=3, **TINY)
    backbone, heads = split_head(resnet)
    assert heads == [resnet.fc] and resnet.conv1 in backbone and resnet.fc not in backbone
    googlenet = create_model("googlenet_cifar", num_classes=3)
    backbone, heads = split_head(googlenet)
    assert heads == [googlenet.fc, googlenet.aux1, googlenet.aux2]
    in_heads = {id(p) for h in heads for p in h.parameters()}
    in_backbone = {id(p) for m in backbone for p in m.parameters(recurse=False)}
    assert in_heads.isdisjoint(in_backbone)  # every parameter is in exactly one of them
    assert len(in_heads | in_backbone) == len(list(googlenet.parameters()))
    with pytest.raises(ValueError, match="cannot find the classifier of Sequential"):
        split_head(nn.Sequential(nn.Conv2d(1, 2, 3)))


def test_only_the_head_trains_until_the_unfreeze_epoch(cosine_run) -> None:
    module, recorder = cosine_run
    everything = {n for n, _ in module.named_parameters()}
    frozen = [s for s in recorder.steps if s["epoch"] == 0]
    unfrozen = [s for s in recorder.steps if s["epoch"] == 1]
    assert len(frozen) == len(unfrozen) == 5
    total = sum(p.numel() for p in module.parameters())
    head = module.model.fc.weight.numel() + module.model.fc.bias.numel()
    assert head == 16 * 10 + 10  # 16 features -> 10 classes
    assert {(s["trainable_count"], s["optimised_count"]) for s in frozen} == {(head, head)}
    assert {(s["trainable_count"], s["optimised_count"]) for s in unfrozen} == {(total, total)}
    for step in frozen:
        assert step["trainable"] == HEAD
        assert set(sum(step["groups"], [])) == HEAD  # the optimiser holds nothing else
    for step in unfrozen:
        assert step["trainable"] == everything
        optimised = sum(step["groups"], [])
        assert sorted(optimised) == sorted(everything)  # each parameter exactly once
    start, after_frozen, end = (recorder.snapshots[k] for k in ("start", "epoch0", "epoch1"))
    for name in _backbone_names(module):
        assert torch.equal(start[name], after_frozen[name]), name  # frozen: untouched
    changed = [n for n in _backbone_names(module) if not torch.equal(after_frozen[n], end[n])]
    assert len(changed) == len(_backbone_names(module))  # unfrozen: every tensor learns
    assert not torch.equal(start["model.fc.weight"], after_frozen["model.fc.weight"])


def test_frozen_batchnorm_is_in_eval_mode_and_keeps_its_statistics(cosine_run) -> None:
    module, recorder = cosine_run
    for step in recorder.steps:
        assert step["module_training"]
        assert step["bn_training"] == ({False} if step["epoch"] == 0 else {True})
    start, after_frozen, end = (recorder.snapshots[k] for k in ("start", "epoch0", "epoch1"))
    stats = [k for k in start if k.endswith(("running_mean", "running_var"))]
    assert len(stats) == 2 * 6  # stem, 2 blocks x 2, the projection shortcut
    for key in stats:
        assert torch.equal(start[key], after_frozen[key]), key
        assert not torch.equal(after_frozen[key], end[key]), key  # unfrozen: they update


def test_backbone_groups_split_decay_like_the_module(cosine_run) -> None:
    module, recorder = cosine_run
    step = recorder.steps[-1]
    assert len(step["groups"]) == 4  # head (decay, no decay) + backbone (decay, no decay)
    backbone_decay, backbone_no_decay = step["groups"][2:]
    params = dict(module.named_parameters())
    assert all(params[n].ndim > 1 for n in backbone_decay) and backbone_decay
    assert all(params[n].ndim == 1 for n in backbone_no_decay) and backbone_no_decay
    assert step["decay"] == [module.hparams.weight_decay, 0.0, module.hparams.weight_decay, 0.0]


@pytest.mark.parametrize("scheduler", ["cosine", "onecycle", "step", "none"])
def test_backbone_lr_is_head_lr_times_ratio_at_every_step(scheduler: str, fmnist_dir: Path) -> None:
    _, recorder = fit(fmnist_dir, FreezeBackbone(1, backbone_lr_ratio=RATIO), scheduler)
    unfrozen = [s for s in recorder.steps if s["epoch"] == 1]
    head_lrs = [s["lrs"][0] for s in unfrozen]
    for step in unfrozen:
        head_lr = step["lrs"][0]
        assert step["lrs"][1] == pytest.approx(head_lr)
        assert step["lrs"][2:] == pytest.approx([head_lr * RATIO] * 2)
    if scheduler in ("cosine", "onecycle"):  # the schedule goes on: lower at every step
        assert all(a > b for a, b in zip(head_lrs, head_lrs[1:], strict=False))


def test_train_bn_trains_batchnorm_while_frozen(fmnist_dir: Path) -> None:
    module, recorder = fit(fmnist_dir, FreezeBackbone(1, train_bn=True), max_epochs=1)
    bn = {n for n, m in module.named_modules() if isinstance(m, nn.BatchNorm2d)}
    bn_params = {f"{m}.{p}" for m in bn for p in ("weight", "bias")}
    assert recorder.steps[0]["trainable"] == HEAD | bn_params
    assert recorder.steps[0]["bn_training"] == {True}
    start, end = recorder.snapshots["start"], recorder.snapshots["epoch0"]
    assert not torch.equal(start["model.bn1.running_mean"], end["model.bn1.running_mean"])
    assert torch.equal(start["model.conv1.weight"], end["model.conv1.weight"])


def test_resumed_run_ends_like_an_uninterrupted_one(fmnist_dir: Path, tmp_path: Path) -> None:
    # A checkpoint per epoch; epoch 1's is taken after the unfreeze (groups and schedule). No
    # shuffling: Lightning draws the first epoch's order of a run before callbacks can re-seed.
    def run(ckpt_path: str | None = None) -> tuple[ImageClassifier, Recorder]:
        saver = L.callbacks.ModelCheckpoint(tmp_path, "{epoch}", save_top_k=-1)
        return fit(fmnist_dir, FreezeBackbone(1), "step", 3, [saver], ckpt_path, shuffle=False)

    whole, _ = run()
    resumed, recorder = run(ckpt_path=str(tmp_path / "epoch=1.ckpt"))
    assert {s["epoch"] for s in recorder.steps} == {2}
    assert recorder.steps[0]["trainable"] == {n for n, _ in resumed.named_parameters()}
    assert len(recorder.steps[0]["groups"]) == 4
    for key, value in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, msg=key)


def test_finetune_config_builds_with_a_folder_and_a_weights_file(
    cifar_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from moderncnn.training.cli import build_cli

    pretrained = create_model("resnet18")  # ImageNet's 1000 classes: the head will be fresh
    torch.save(pretrained.state_dict(), tmp_path / "resnet18.pth")
    monkeypatch.chdir(tmp_path)
    args = [
        "-c",
        str(REPO / "configs" / "finetune.yaml"),
        "--data.init_args.root",
        str(cifar_folder),
    ]
    args += ["--model.model_kwargs", json.dumps({"weights": str(tmp_path / "resnet18.pth")})]
    with pytest.warns(UserWarning, match="its classifier does not fit resnet18"):
        cli = build_cli(args, run=False)
    network = cli.model.model
    assert cli.model.num_classes == cli.datamodule.num_classes == len(list(cifar_folder.iterdir()))
    assert torch.equal(network.layer4[1].conv2.weight, pretrained.layer4[1].conv2.weight)
    (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, FreezeBackbone)]
    assert (callback.unfreeze_at_epoch, callback.backbone_lr_ratio, callback.train_bn) == (
        2,
        0.1,
        False,
    )
    assert any(type(c).__name__ == "SeedEachEpoch" for c in cli.trainer.callbacks)  # defaults kept


@pytest.mark.slow
def test_finetune_config_fits_and_its_checkpoint_predicts_without_the_weights_file(
    cifar_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from moderncnn.inference import predict
    from moderncnn.training.cli import build_cli

    torch.save(create_model("resnet18").state_dict(), weights := tmp_path / "resnet18.pth")
    config = yaml.safe_load((REPO / "configs" / "finetune.yaml").read_text())
    config["model"]["model_kwargs"]["weights"] = str(weights)
    config["data"]["init_args"] |= {
        "root": str(cifar_folder), "test_root": str(cifar_folder), "test_fraction": 0.0,
        "val_fraction": 0.5, "image_size": 64, "batch_size": 8, "num_workers": 0,
    }  # fmt: skip
    config["trainer"] |= {"max_epochs": 2, "enable_progress_bar": False}
    config["trainer"]["callbacks"][0]["init_args"]["unfreeze_at_epoch"] = 1
    (tmp_path / "finetune.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)
    cli = build_cli(["fit", "-c", str(tmp_path / "finetune.yaml")])
    groups = cli.trainer.optimizers[0].param_groups
    assert len(groups) == 4  # the head's two groups, then the backbone's
    assert sum(len(g["params"]) for g in groups) == len(list(cli.model.parameters()))
    # test_after_fit ran the same trainer's test: it did not freeze the backbone again
    assert all(p.requires_grad for p in cli.model.parameters())
    (ckpt,) = tmp_path.glob("lightning_logs/version_0/checkpoints/last.ckpt")
    weights.unlink()  # the fine-tuned checkpoint holds every tensor it needs
    (first, *_) = predict(cifar_folder, ckpt, topk=2)
    assert len(first.classes) == 2 and 0 < sum(first.probabilities) <= 1


def test_any_network_with_its_head_named(fmnist_dir: Path) -> None:
    # A plain nn.Sequential: no get_classifier(), no fc attribute; its last layer is the head.
    L.seed_everything(5)
    network = nn.Sequential(
        nn.Conv2d(1, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    )  # fmt: skip
    module = ImageClassifier(network, num_classes=5, in_chans=1, lr=0.05, scheduler="none")
    data = FashionMNISTDataModule(
        data_dir=str(fmnist_dir), classes=[5, 6, 7, 8, 9], train_subset=256, val_size=0,
        batch_size=64, augmentations=[],
    )  # fmt: skip
    recorder = Recorder()
    trainer = L.Trainer(
        max_epochs=2, callbacks=[FreezeBackbone(1, head=["5"]), recorder], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    counts = {s["epoch"]: (s["trainable_count"], s["optimised_count"]) for s in recorder.steps}
    total = sum(p.numel() for p in network.parameters())
    assert counts == {0: (8 * 5 + 5, 8 * 5 + 5), 1: (total, total)}
    assert [s["bn_training"] for s in recorder.steps] == [{False}] * 4 + [{True}] * 4
    with pytest.raises(ValueError, match=r"head names a module '9' that Sequential does not have"):
        split_head(network, ["9"])


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="unfreeze_at_epoch must be >= 0, got -1"):
        FreezeBackbone(-1)
    with pytest.raises(ValueError, match=r"backbone_lr_ratio must be in \(0, 1\], got 2"):
        FreezeBackbone(backbone_lr_ratio=2)
    with pytest.raises(ValueError, match="`model` attribute .* got LightningModule"):
        FreezeBackbone().freeze_before_training(L.LightningModule())
    with pytest.raises(ValueError, match="head must be a non-empty list of module names, got 'fc'"):
        FreezeBackbone(head="fc")


@pytest.fixture
def grey_checkpoint(tmp_path: Path) -> Path:
    """A 1-channel, 10-class ImageClassifier checkpoint of non-default widths."""
    grey28 = {"image_size": 28, "resize_size": None, "mean": [0.286], "std": [0.353]}
    module = ImageClassifier(
        "resnet18_cifar", num_classes=10, in_chans=1, model_kwargs=TINY, preprocess=grey28
    )
    saved = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(saved)  # what Lightning calls while saving: adds model_card
    torch.save(saved, tmp_path / "grey.ckpt")
    return tmp_path / "grey.ckpt"


def test_finetuning_a_grey_checkpoint_on_photos_reads_its_card(
    grey_checkpoint: Path, cifar_folder: Path
) -> None:
    # Issue 24: the card's widths and in_chans were ignored, and a photo folder always gave 3
    # channels, so a model trained on grey images could not be fine-tuned on photos.
    from moderncnn.data import ImageFolderDataModule
    from moderncnn.data.images import load_image
    from moderncnn.io.card import Preprocess
    from moderncnn.io.errors import ConfigError

    photos = ImageFolderDataModule(str(cifar_folder), image_size=32, in_chans=1)
    image = load_image(next(cifar_folder.rglob("*.png")))  # an RGB photo
    grey = photos.eval_transform(image)
    assert grey.shape == (1, 32, 32)  # converted as features and predict convert it:
    torch.testing.assert_close(grey, Preprocess.of_datamodule(photos).transform()(image))

    weights = {"weights": str(grey_checkpoint)}
    with pytest.warns(UserWarning, match="classifier"):  # 10 classes there, 8 here: a new head
        module = ImageClassifier(
            "resnet18_cifar", num_classes=photos.num_classes, in_chans=1, model_kwargs=weights
        )
    saved = torch.load(grey_checkpoint, weights_only=True)["state_dict"]
    stem = module.model.conv1.weight
    assert stem.shape[1] == 1 and torch.equal(stem, saved["model.conv1.weight"])  # card's widths
    assert module.hparams.model_kwargs == {**TINY, **weights}  # the checkpoint rebuilds it

    with pytest.raises(ConfigError, match=r"grey images .*set data.init_args.in_chans: 1"):
        ImageClassifier("resnet18_cifar", num_classes=2, in_chans=3, model_kwargs=weights)
    with pytest.raises(ConfigError, match="holds a resnet18_cifar .* set model.model"):
        ImageClassifier("resnet34_cifar", num_classes=2, in_chans=1, model_kwargs=weights)
