"""Loaders read each official format, written small by the tests; bad files get one clear message."""

from __future__ import annotations

import io
import pickle
import tarfile

import numpy as np
import pytest
from PIL import Image

from qkt.data import load_dataset
from qkt.data.base import DataSet
from qkt.errors import DataError

RNG = np.random.default_rng(0)


def _add_bytes(tar: tarfile.TarFile, name: str, blob: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(blob)
    tar.addfile(info, io.BytesIO(blob))


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _cifar_batch(n: int, num_classes: int, label_key: str) -> dict:
    return {"data": RNG.integers(0, 256, (n, 3072), dtype=np.uint8), label_key: list(RNG.integers(0, num_classes, n))}


def test_cifar10_official_tarball(tmp_path):
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        for i in range(1, 6):
            _add_bytes(tar, f"cifar-10-batches-py/data_batch_{i}", pickle.dumps(_cifar_batch(4, 10, "labels")))
        _add_bytes(tar, "cifar-10-batches-py/test_batch", pickle.dumps(_cifar_batch(3, 10, "labels")))
        names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
        _add_bytes(tar, "cifar-10-batches-py/batches.meta", pickle.dumps({"label_names": names}))
    d = load_dataset("cifar10", tmp_path)
    assert d.x_train.shape == (20, 32, 32, 3) and d.x_test.shape == (3, 32, 32, 3)
    assert d.classes[0] == "airplane" and d.input_shape == (3, 32, 32)


def test_cifar10_extracted_folder_matches_pixels(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = [_cifar_batch(2, 10, "labels") for _ in range(5)]
    for i, b in enumerate(batches, 1):
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(b))
    (folder / "test_batch").write_bytes(pickle.dumps(_cifar_batch(2, 10, "labels")))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(i) for i in range(10)]}))
    d = load_dataset("cifar10", tmp_path)
    # Pickled rows are channel-major (R plane, G plane, B plane): pixel (0,0) of image 0 is data[0], data[1024], data[2048].
    assert tuple(d.x_train[0, 0, 0]) == tuple(batches[0]["data"][0, [0, 1024, 2048]])
    assert list(d.y_train[:2]) == batches[0]["labels"]


@pytest.mark.parametrize("as_archive", [True, False])
def test_cifar10_image_folder(tmp_path, as_archive):
    images = {}
    for split, n in (("train", 3), ("test", 2)):
        for cls in ("cat", "airplane"):
            for i in range(n):
                images[f"{split}/{cls}/{i:04d}.png"] = RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    if as_archive:
        with tarfile.open(tmp_path / "cifar10-jpeg.tar.xz", "w:xz") as tar:
            for name, px in images.items():
                _add_bytes(tar, name, _png(px))
    else:
        for name, px in images.items():
            path = tmp_path / "cifar10" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(_png(px))
    d = load_dataset("cifar10", tmp_path)
    assert d.classes == ("airplane", "cat")  # sorted folder names, as the official label order
    assert len(d.y_train) == 6 and len(d.y_test) == 4
    first_airplane = d.x_train[np.flatnonzero(d.y_train == 0)[0]]
    assert np.array_equal(first_airplane, images["train/airplane/0000.png"])  # PNG is lossless


def test_an_image_edited_inside_a_folder_is_decoded_again(tmp_path, monkeypatch):
    # Editing a file leaves its folder's timestamp alone: the cache must look at the files themselves.
    monkeypatch.setenv("QKT_CACHE_DIR", str(tmp_path / "cache"))
    for split, n in (("train", 2), ("test", 1)):
        for cls in ("cat", "dog"):
            for i in range(n):
                path = tmp_path / "cifar10" / split / cls / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(_png(np.zeros((32, 32, 3), dtype=np.uint8)))
    before = load_dataset("cifar10", tmp_path)
    (tmp_path / "cifar10" / "train" / "cat" / "0.png").write_bytes(_png(np.full((32, 32, 3), 255, dtype=np.uint8)))
    after = load_dataset("cifar10", tmp_path)
    assert before.x_train.max() == 0 and after.x_train.max() == 255
    assert before.digest != after.digest
    assert len(list((tmp_path / "cache").iterdir())) == 1  # the new arrays replaced the old, not joined them


def test_the_digest_tells_apart_the_same_bytes_in_another_shape():
    x, y = np.arange(24, dtype=np.float32), np.zeros(2, dtype=np.int64)
    flat, shaped = (DataSet("npz", x.reshape(shape), y, x.reshape(shape), y, ("a",)) for shape in ((2, 12), (2, 3, 4)))
    assert flat.digest != shaped.digest
    assert flat.digest == DataSet("npz", x.reshape(2, 12).copy(), y.copy(), x[:0], y[:0], ("b",)).digest  # training arrays only


def test_cifar100_official_tarball(tmp_path):
    train = _cifar_batch(100, 100, "fine_labels")
    train["fine_labels"] = list(range(100))  # an official archive holds every class it names
    with tarfile.open(tmp_path / "cifar-100-python.tar.gz", "w:gz") as tar:
        _add_bytes(tar, "cifar-100-python/train", pickle.dumps(train))
        _add_bytes(tar, "cifar-100-python/test", pickle.dumps(_cifar_batch(2, 100, "fine_labels")))
        _add_bytes(tar, "cifar-100-python/meta", pickle.dumps({"fine_label_names": [f"c{i}" for i in range(100)]}))
    d = load_dataset("cifar100", tmp_path)
    assert d.num_classes == 100 and d.x_train.shape == (100, 32, 32, 3)


def test_cinic10_folder_uses_train_and_test(tmp_path):
    for split in ("train", "valid", "test"):
        for cls in ("bird", "ship"):
            path = tmp_path / "CINIC-10" / split / cls / "x.png"
            path.parent.mkdir(parents=True)
            path.write_bytes(_png(RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)))
    d = load_dataset("cinic10", tmp_path)
    assert len(d.y_train) == 2 and len(d.y_test) == 2 and d.classes == ("bird", "ship")


@pytest.mark.parametrize("channels", [None, 3])
def test_medmnist_npz(tmp_path, channels):
    shape = (28, 28) if channels is None else (28, 28, channels)
    arrays = {}
    for split, n in (("train", 6), ("val", 2), ("test", 3)):
        arrays[f"{split}_images"] = RNG.integers(0, 256, (n, *shape), dtype=np.uint8)
        arrays[f"{split}_labels"] = RNG.integers(0, 8, (n, 1)).astype(np.uint8)
    np.savez(tmp_path / "bloodmnist.npz", **arrays)
    d = load_dataset("bloodmnist", tmp_path)
    assert d.x_train.shape[-1] == (channels or 1) and d.y_train.ndim == 1
    assert d.classes[0] == "basophil" and d.num_classes == 8


def test_user_npz_features(tmp_path):
    path = tmp_path / "mine.npz"
    np.savez(path, x_train=RNG.normal(size=(10, 5)), y_train=np.arange(10) % 3, x_test=RNG.normal(size=(4, 5)), y_test=np.arange(4) % 3)
    d = load_dataset("npz", path=path)
    assert d.input_shape == (5,) and d.num_classes == 3 and not d.is_image


def test_missing_file_names_expected_file_and_source(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", tmp_path)
    message = str(err.value)
    assert "cifar-10-python.tar.gz" in message and "https://www.cs.toronto.edu" in message and "--data-root" in message


def test_corrupt_file_is_reported_not_raised_raw(tmp_path):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"not a tarball")
    with pytest.raises(DataError, match="corrupt"):
        load_dataset("cifar10", tmp_path)


def test_npz_missing_keys(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, x_train=np.zeros((2, 3)))
    with pytest.raises(DataError, match="lacks y_train"):
        load_dataset("npz", path=path)


def test_unknown_dataset_lists_choices():
    with pytest.raises(DataError, match="choose one of: digits"):
        load_dataset("mnist-fashion-xl")


def test_digits_is_bundled_and_stratified():
    d = load_dataset("digits")
    assert d.input_shape == (1, 8, 8) and d.num_classes == 10
    assert np.bincount(d.y_test).min() >= 40


def test_normalized_tensors_are_standardised():
    x_train, y_train, x_test, _ = load_dataset("digits").normalized()
    assert x_train.shape[1:] == (1, 8, 8)
    assert abs(float(x_train.mean())) < 1e-4 and abs(float(x_train.std()) - 1) < 1e-2


def test_real_cifar10_and_blood_cells(data_root):
    cifar = load_dataset("cifar10", data_root)
    assert cifar.x_train.shape == (50000, 32, 32, 3) and cifar.x_test.shape == (10000, 32, 32, 3)
    assert np.bincount(cifar.y_test).tolist() == [1000] * 10
    blood = load_dataset("bloodmnist", data_root)
    assert blood.x_train.shape == (11952, 28, 28, 3) and len(blood.y_test) == 3415
