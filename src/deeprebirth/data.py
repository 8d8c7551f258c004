"""Data sets, adapted to the model: real Fashion-MNIST, an ImageFolder directory, or synthetic.

``--data fashion-mnist`` looks for the real files in ``$DEEPREBIRTH_DATA``, then where the
Debian package ``dataset-fashion-mnist`` puts them, then in the cache; images are resized
to the model's input size and replicated to 3 channels when the model wants 3.

Splits: ``train``, ``val`` and ``test``. Fashion-MNIST's validation split is
:data:`VAL_SIZE` images held out of the official training set (stratified: the same number
from every class, chosen with a fixed seed), so ``train`` has the other 55,000 and ``test``
is the official 10,000. An ImageFolder directory uses its ``val/`` when it also has a
``test/``; otherwise the same kind of hold-out is taken from ``train/``. Every choice a run
makes (recipes, probes, early stopping, selection costs, int8 calibration) reads train or
val; the test split is read only to report a finished model.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import datasets, transforms
from torchvision.datasets.utils import extract_archive

from .errors import DataError, DataNotFoundError

FASHION_MNIST = "fashion-mnist"
SYNTHETIC = "synthetic"
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
# Per-channel statistics of the Fashion-MNIST training set; ImageNet's for image folders.
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SPLITS = ("train", "val", "test")
#: Images held out of Fashion-MNIST's training set as the validation split (500 a class);
#: a smaller copy of the files gives the same share.
VAL_SIZE, FASHION_MNIST_TRAIN = 5000, 60000
#: Share of an ImageFolder's ``train/`` held out when it has no separate ``val/``.
VAL_SHARE = 0.1
VAL_SEED = 0


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "deeprebirth"


def _fashion_mnist_candidates() -> list[Path]:
    env = os.environ.get("DEEPREBIRTH_DATA")
    dirs = [Path(env)] if env else []
    return [*dirs, DEBIAN_FASHION_MNIST]


def _find_idx(directory: Path, stem: str) -> Path | None:
    for candidate in (
        directory / stem,
        directory / f"{stem}.gz",
        directory / "FashionMNIST" / "raw" / stem,
    ):
        if candidate.is_file():
            return candidate
    return None


def fashion_mnist_root(download: bool = False) -> Path:
    """A torchvision ``FashionMNIST`` root holding the real data, prepared in the cache.

    Raises:
        DataNotFoundError: saying where it looked and how to get the data.
    """
    root = cache_dir() / "fashion-mnist"
    raw = root / "FashionMNIST" / "raw"
    if all((raw / f).is_file() for f in FASHION_MNIST_FILES):
        return root
    for directory in _fashion_mnist_candidates():
        found = {f: _find_idx(directory, f) for f in FASHION_MNIST_FILES}
        if all(found.values()):
            raw.mkdir(parents=True, exist_ok=True)
            # Unpack next to the cache and rename, so an interrupted run leaves no
            # truncated file that would later look complete.
            with tempfile.TemporaryDirectory(dir=raw) as tmp:
                for stem, src in found.items():
                    if src.suffix == ".gz":
                        extract_archive(str(src), tmp)
                    else:
                        shutil.copyfile(src, Path(tmp) / stem)
                    os.replace(Path(tmp) / stem, raw / stem)
            return root
    if download:
        datasets.FashionMNIST(root, train=False, download=True)
        datasets.FashionMNIST(root, train=True, download=True)
        return root
    looked = ", ".join(str(d) for d in _fashion_mnist_candidates())
    raise DataNotFoundError(
        f"Fashion-MNIST not found (looked in {looked} and {raw}); install it with "
        "'apt-get install dataset-fashion-mnist', or set DEEPREBIRTH_DATA to a directory "
        "holding the four idx files"
    )


def image_transform(
    input_size: int, in_chans: int, gray_source: bool, augment: bool = False
) -> transforms.Compose:
    """Resize to the model's input and match its channels; normalise (and augment)."""
    steps: list = [transforms.Resize(input_size), transforms.CenterCrop(input_size)]
    if augment:  # light, label-preserving: a flip and a shift of up to 1/8 of the side
        steps += [
            transforms.RandomHorizontalFlip(),
            transforms.RandomCrop(input_size, padding=max(1, input_size // 8)),
        ]
    if gray_source:
        mean, std = (FASHION_MNIST_MEAN,) * in_chans, (FASHION_MNIST_STD,) * in_chans
        if in_chans == 3:
            steps.append(transforms.Grayscale(num_output_channels=3))
    else:
        mean, std = IMAGENET_MEAN[:in_chans], IMAGENET_STD[:in_chans]
        if in_chans == 1:
            steps.append(transforms.Grayscale(num_output_channels=1))
    return transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(mean, std)])


def holdout_indices(targets, n_val: int, seed: int = VAL_SEED) -> tuple[list[int], list[int]]:
    """Stratified hold-out: ``(train, val)`` index lists, ``val`` ``n_val`` long.

    Every class gives its share of ``n_val`` (largest remainders; a class keeps at least one
    image for training), chosen by a seeded permutation: the same split on every machine.
    """
    targets = torch.as_tensor(list(targets))
    labels, counts = torch.unique(targets, return_counts=True)
    quota = counts.double() * n_val / max(1, len(targets))
    take = quota.floor().long()
    for i in torch.argsort(quota - take, descending=True, stable=True)[: n_val - int(take.sum())]:
        take[i] += 1
    take = torch.minimum(take, (counts - 1).clamp(min=0))
    gen = torch.Generator().manual_seed(seed)
    val: list[int] = []
    for label, n in zip(labels.tolist(), take.tolist(), strict=True):
        members = torch.nonzero(targets == label).flatten()
        val += members[torch.randperm(len(members), generator=gen)[:n]].tolist()
    held = set(val)
    return [i for i in range(len(targets)) if i not in held], sorted(val)


def _split_of(dataset, split: str, n_val: int) -> Dataset:
    """``dataset`` (a training set) less its hold-out (``train``), or the hold-out (``val``)."""
    train_idx, val_idx = holdout_indices(dataset.targets, n_val)
    subset = Subset(dataset, train_idx if split == "train" else val_idx)
    subset.classes = dataset.classes  # what num_classes_of reads
    return subset


def read_image(path: str) -> Image.Image:
    """An ImageFolder image as RGB, or a one-line error naming the file that cannot be read."""
    try:
        return datasets.folder.default_loader(path)
    except (OSError, ValueError, SyntaxError) as e:  # PIL: truncated, corrupt, not an image
        raise DataError(f"cannot read image {path}: {e}; remove or replace the file") from e


def _image_folder(path: Path, split: str, transform) -> Dataset:
    if not path.is_dir():
        raise DataNotFoundError(
            f"data directory {path} does not exist; pass an ImageFolder directory "
            f"(one sub-directory per class), '{FASHION_MNIST}' or '{SYNTHETIC}'"
        )
    has = {sub: (path / sub).is_dir() for sub in ("train", "val", "test")}
    # val/ is the validation split when test/ is there too; otherwise val/ (ImageNet's
    # layout) is the reported split and validation is held out of train/.
    own_val = has["val"] and has["test"]
    if split == "test":
        sub = "test" if has["test"] else "val" if has["val"] else None
    elif split == "val":
        sub = "val" if own_val else "train" if has["train"] else None
    else:
        sub = "train" if has["train"] else None
    root = path / sub if sub else path
    try:
        ds = datasets.ImageFolder(root, transform=transform, loader=read_image)
    except (FileNotFoundError, RuntimeError) as e:
        raise DataNotFoundError(f"no images found in {root}: {e}") from e
    if split == "test" or own_val or len(ds) < 2:
        return ds
    return _split_of(ds, split, max(1, round(VAL_SHARE * len(ds))))


def get_dataset(
    spec: str,
    split: str = "test",
    *,
    input_size: int = 224,
    in_chans: int = 3,
    num_classes: int = 10,
    synthetic_size: int = 64,
    download: bool = False,
    augment: bool = False,
) -> Dataset:
    """The data named by ``spec``, adapted to a model with the given input.

    Args:
        spec: ``"fashion-mnist"``, ``"synthetic"`` or a path to an ImageFolder directory
            (with ``train/`` and ``test/`` or ``val/`` sub-directories, or one class
            directory per class).
        split: ``"train"``, ``"val"`` (held out of the training set, see the module
            docstring) or ``"test"``.
        augment: random flips and shifts (for training).

    Example:
        >>> ds = get_dataset("synthetic", input_size=32, in_chans=3)
        >>> ds[0][0].shape
        torch.Size([3, 32, 32])
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    if spec == FASHION_MNIST:
        tf = image_transform(input_size, in_chans, gray_source=True, augment=augment)
        ds = datasets.FashionMNIST(
            fashion_mnist_root(download), train=split != "test", transform=tf
        )
        n_val = max(1, round(len(ds) * VAL_SIZE / FASHION_MNIST_TRAIN))
        return ds if split == "test" else _split_of(ds, split, n_val)
    if spec == SYNTHETIC:
        return datasets.FakeData(
            size=synthetic_size,
            image_size=(in_chans, input_size, input_size),
            num_classes=num_classes,
            transform=transforms.ToTensor(),
            random_offset={"train": 0, "val": 10**5, "test": 10**6}[split],
        )
    tf = image_transform(input_size, in_chans, gray_source=False, augment=augment)
    return _image_folder(Path(spec), split, tf)


def get_loader(
    dataset: Dataset, batch_size: int = 64, shuffle: bool = False, workers: int = 0
) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers)


def num_classes_of(dataset: Dataset) -> int | None:
    classes = getattr(dataset, "classes", None)
    if classes is not None:
        return len(classes)
    return getattr(dataset, "num_classes", None)


__all__ = [
    "FASHION_MNIST",
    "SPLITS",
    "SYNTHETIC",
    "VAL_SIZE",
    "get_dataset",
    "holdout_indices",
    "get_loader",
    "num_classes_of",
]
