import gzip
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from deeprebirth import data
from deeprebirth.errors import DataNotFoundError


def write_idx(path, array: np.ndarray, compress: bool):
    """Write an idx file (the MNIST format): magic, big-endian dims, unsigned bytes."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(f"{path}.gz", "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


@pytest.fixture
def fake_fashion_mnist(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    root = tmp_path / "fm"
    root.mkdir()
    labels = {"train": np.arange(12) % 10, "t10k": np.array([3, 1, 4, 1, 5])}
    for prefix, y in labels.items():
        images = rng.integers(0, 256, size=(len(y), 28, 28))
        write_idx(root / f"{prefix}-images-idx3-ubyte", images, compress=True)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", y, compress=prefix == "train")
    monkeypatch.setenv("DEEPREBIRTH_DATA", str(root))
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "absent")
    return labels


def test_fashion_mnist_from_idx_files(fake_fashion_mnist):
    test = data.get_dataset("fashion-mnist", "test", input_size=40, in_chans=3)
    assert len(test) == 5
    x, y = test[2]
    assert x.shape == (3, 40, 40) and y == 4
    torch.testing.assert_close(x[0], x[2])  # gray replicated to 3 channels
    train = data.get_dataset("fashion-mnist", "train", input_size=28, in_chans=1)
    assert len(train) == 12 and train[0][0].shape == (1, 28, 28)
    assert [train[i][1] for i in range(12)] == list(fake_fashion_mnist["train"])
    assert data.num_classes_of(train) == 10


def test_missing_fashion_mnist_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.delenv("DEEPREBIRTH_DATA", raising=False)
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "absent")
    with pytest.raises(DataNotFoundError, match="absent.*apt-get install dataset-fashion-mnist"):
        data.get_dataset("fashion-mnist")


def test_image_folder(tmp_path):
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (20, 30), (i * 100, 50, 0)).save(
                    tmp_path / split / cls / f"{i}.png"
                )
    test = data.get_dataset(str(tmp_path), "test", input_size=16, in_chans=3)
    assert len(test) == 4 and test.classes == ["cat", "dog"]
    assert test[0][0].shape == (3, 16, 16)
    gray = data.get_dataset(str(tmp_path), "train", input_size=16, in_chans=1)
    assert gray[0][0].shape == (1, 16, 16)


def test_missing_image_folder(tmp_path):
    with pytest.raises(DataNotFoundError, match="does not exist"):
        data.get_dataset(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataNotFoundError, match="no images found"):
        data.get_dataset(str(tmp_path / "empty"))


def test_synthetic():
    ds = data.get_dataset("synthetic", input_size=8, in_chans=3, synthetic_size=5, num_classes=3)
    assert len(ds) == 5 and ds[0][0].shape == (3, 8, 8) and 0 <= ds[0][1] < 3
    torch.testing.assert_close(ds[1][0], ds[1][0])  # deterministic


@pytest.mark.skipif(
    not data.DEBIAN_FASHION_MNIST.is_dir(), reason="dataset-fashion-mnist not installed"
)
def test_real_fashion_mnist(monkeypatch):
    monkeypatch.delenv("DEEPREBIRTH_DATA", raising=False)
    test = data.get_dataset("fashion-mnist", "test", input_size=28, in_chans=1)
    assert len(test) == 10_000
    assert test.classes[0] == "T-shirt/top"
