import gzip
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from deeprebirth import cli, data
from deeprebirth.errors import DataError, DataNotFoundError


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
    val = data.get_dataset("fashion-mnist", "val", input_size=28, in_chans=1)
    # 1/12 of the training files is held out (5,000 of the real 60,000), none twice.
    assert len(train) == 11 and len(val) == 1 and train[0][0].shape == (1, 28, 28)
    assert sorted(train.indices + val.indices) == list(range(12))
    labels = [train[i][1] for i in range(11)] + [val[0][1]]
    assert sorted(labels) == sorted(fake_fashion_mnist["train"])
    assert data.num_classes_of(train) == data.num_classes_of(val) == 10


@pytest.mark.parametrize("n_val", [1, 7, 30])
def test_holdout_is_stratified_disjoint_and_fixed(n_val):
    targets = [0] * 40 + [1] * 20 + [2] * 10 + [3]
    train, val = data.holdout_indices(targets, n_val)
    assert len(val) == n_val and sorted(train + val) == list(range(len(targets)))
    counts = [sum(targets[i] == c for i in val) for c in range(4)]
    share = n_val / len(targets)
    assert all(abs(counts[c] - share * n) < 1 for c, n in enumerate((40, 20, 10)))
    assert counts[3] == 0  # a class with one image keeps it for training
    assert data.holdout_indices(targets, n_val) == (train, val)


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
    # val/ without test/ is the reported split: validation is held out of train/.
    val = data.get_dataset(str(tmp_path), "val", input_size=16, in_chans=3)
    assert len(val) == 1 and len(gray) == 3 and data.num_classes_of(val) == 2
    (tmp_path / "val").rename(tmp_path / "test")
    (tmp_path / "val" / "cat").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "val" / "cat" / "x.png")
    assert len(data.get_dataset(str(tmp_path), "val", input_size=16)) == 1  # its own val/
    assert len(data.get_dataset(str(tmp_path), "train", input_size=16)) == 4


def test_an_unreadable_image_is_named_in_one_line(tmp_path, capsys):
    (tmp_path / "cat").mkdir()
    Image.new("RGB", (20, 30)).save(tmp_path / "cat" / "good.png")
    Image.new("RGB", (64, 64)).save(tmp_path / "cat" / "truncated.jpg")
    bad = tmp_path / "cat" / "truncated.jpg"
    bad.write_bytes(bad.read_bytes()[:200])
    ds = data.get_dataset(str(tmp_path), "test", input_size=16)
    with pytest.raises(DataError, match=r"cannot read image .*truncated\.jpg"):
        [ds[i] for i in range(len(ds))]
    rc = cli.main(["evaluate", "bvlc_googlenet", "--data", str(tmp_path), "--input-size", "32"])
    said = "".join(capsys.readouterr())
    assert rc == 2 and "truncated.jpg" in said and "internal error" not in said


def test_unknown_split():
    with pytest.raises(ValueError, match="train, val, test"):
        data.get_dataset("synthetic", "dev")


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
