"""CIFAR-100 and PathMNIST in each format a user may have, MedMNIST sizes, a user's image folder, and checked downloads."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import sys
import tarfile
import types
import urllib.request

import numpy as np
import pytest
from PIL import Image

from qkt.cli import main
from qkt.data import DATASETS, download, load_dataset, medmnist
from qkt.errors import DataError

RNG = np.random.default_rng(0)


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, blob: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(blob)
    tar.addfile(info, io.BytesIO(blob))


def _folder_files(classes: list[str], side: int = 32, sizes: dict[str, int] | None = None) -> dict[str, bytes]:
    """train/<class>/NNNN.png and test/<class>/NNNN.png files; ``sizes`` gives some classes another image side."""
    files = {}
    for split, n in (("train", 3), ("test", 2)):
        for cls in classes:
            s = (sizes or {}).get(cls, side)
            for i in range(n):
                files[f"{split}/{cls}/{i:04d}.png"] = _png(RNG.integers(0, 256, (s, s, 3), dtype=np.uint8))
    return files


@pytest.mark.parametrize("as_archive", [True, False])
def test_cifar100_in_the_shared_archives_layout_takes_its_label_order_from_classes_txt(tmp_path, as_archive):
    # classes.txt, manifest.csv and README.txt at the top, as in cifar100-jpeg.tar.xz; the order here is not the sorted one.
    order = ["zebra", "apple", "maple_tree"]
    files = {"README.txt": b"CIFAR-100\n", "classes.txt": ("\n".join(order) + "\n").encode(),
             "manifest.csv": b"split,fine_label,fine_label_name,path\n", **_folder_files(order)}
    if as_archive:
        with tarfile.open(tmp_path / "cifar100-jpeg.tar.xz", "w:xz") as tar:
            for name, blob in files.items():
                _add(tar, name, blob)
    else:
        for name, blob in files.items():
            (tmp_path / "cifar100" / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / "cifar100" / name).write_bytes(blob)
    d = load_dataset("cifar100", tmp_path)
    assert d.classes == tuple(order)
    assert d.x_train.shape == (9, 32, 32, 3) and d.x_test.shape == (6, 32, 32, 3)
    zebra = np.asarray(Image.open(io.BytesIO(files["train/zebra/0000.png"])))
    assert np.array_equal(d.x_train[np.flatnonzero(d.y_train == 0)[0]], zebra)


def test_a_class_folder_missing_from_classes_txt_is_named(tmp_path):
    root = tmp_path / "cifar100"
    for name, blob in {"classes.txt": b"apple\n", **_folder_files(["apple", "bee"])}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(blob)
    with pytest.raises(DataError, match="class folder\\(s\\) bee are not in its classes.txt"):
        load_dataset("cifar100", tmp_path)


def _medmnist_file(path, n_classes: int = 9, side: int = 28) -> dict[str, np.ndarray]:
    """A file in the official MedMNIST schema: train, val and test images (N, side, side, 3) and labels (N, 1)."""
    arrays = {}
    for split, n in (("train", 12), ("val", 3), ("test", 6)):
        arrays[f"{split}_images"] = RNG.integers(0, 256, (n, side, side, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = RNG.integers(0, n_classes, (n, 1)).astype(np.uint8)
    np.savez(path, **arrays)
    return arrays


def test_pathmnist_official_schema_and_its_sizes(tmp_path):
    arrays = _medmnist_file(tmp_path / "pathmnist.npz")
    _medmnist_file(tmp_path / "pathmnist_64.npz", side=64)
    d = load_dataset("pathmnist", tmp_path)
    assert d.num_classes == 9 and d.classes[0] == "adipose" and d.input_shape == (3, 28, 28)
    assert np.array_equal(d.y_test, arrays["test_labels"].ravel())  # the official test split; val is not used
    assert load_dataset("pathmnist", tmp_path, size=64).input_shape == (3, 64, 64)
    with pytest.raises(DataError, match="looked for pathmnist_128.npz"):
        load_dataset("pathmnist", tmp_path, size=128)
    with pytest.raises(DataError, match="MedMNIST ships 28, 64, 128, 224-pixel images, not 32"):
        load_dataset("pathmnist", tmp_path, size=32)
    with pytest.raises(DataError, match="cifar10 comes in one size"):
        load_dataset("cifar10", tmp_path, size=64)


def test_medmnist_files_the_package_downloaded_are_found(tmp_path, monkeypatch):
    package_root = tmp_path / "dot-medmnist"
    package_root.mkdir()
    _medmnist_file(package_root / "pathmnist.npz")
    monkeypatch.setattr(medmnist, "PACKAGE_ROOT", package_root)
    assert len(load_dataset("pathmnist", tmp_path / "empty").y_train) == 12


def test_imagefolder_resizes_a_users_images_to_one_size(tmp_path):
    for name, blob in _folder_files(["cat", "dog"], sizes={"dog": 20}).items():
        (tmp_path / "mine" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "mine" / name).write_bytes(blob)
    with pytest.raises(DataError, match=r"images of several sizes .*data.size: N resizes"):
        load_dataset("imagefolder", path=tmp_path / "mine")
    d = load_dataset("imagefolder", path=tmp_path / "mine", size=16)
    assert d.x_train.shape == (6, 16, 16, 3) and d.classes == ("cat", "dog")
    with pytest.raises(DataError, match="give the file or folder with data.path"):
        load_dataset("imagefolder", tmp_path)


def test_qkt_data_info_on_a_users_image_folder(tmp_path, capsys):
    for name, blob in _folder_files(["cat", "dog"], side=40).items():
        (tmp_path / "mine" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "mine" / name).write_bytes(blob)
    assert main(["data", "info", "imagefolder", "--data-path", str(tmp_path / "mine"), "--size", "12"]) == 0
    assert "imagefolder: 6 train / 4 test, input (3, 12, 12), 2 classes: cat, dog" in capsys.readouterr().out


@pytest.fixture
def served(monkeypatch):
    """urlretrieve serving ``served.blob`` from any address, offline; ``served.urls`` records the addresses asked for."""
    state = types.SimpleNamespace(blob=b"", urls=[])

    def urlretrieve(url, filename):
        state.urls.append(url)
        with open(filename, "wb") as f:
            f.write(state.blob)

    monkeypatch.setattr(urllib.request, "urlretrieve", urlretrieve)
    return state


def test_a_download_with_the_wrong_checksum_is_deleted(tmp_path, served):
    served.blob = b"a page of html instead of the archive"
    with pytest.raises(DataError, match="not the official c58f30108f718f92721af3b95e74349a"):
        download("cifar10", tmp_path)
    assert list(tmp_path.iterdir()) == []
    assert served.urls == ["https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"]


def test_a_download_with_the_official_checksum_is_kept(tmp_path, served, monkeypatch):
    served.blob = b"the archive"
    monkeypatch.setitem(DATASETS, "cifar100", dataclasses.replace(DATASETS["cifar100"], md5=hashlib.md5(served.blob).hexdigest()))
    assert download("cifar100", tmp_path) == tmp_path / "cifar-100-python.tar.gz"
    assert (tmp_path / "cifar-100-python.tar.gz").read_bytes() == served.blob


def test_medmnist_downloads_take_address_and_checksum_from_the_medmnist_package(tmp_path, served, monkeypatch):
    with pytest.raises(DataError, match=r"needs the medmnist package.*pip install 'qkt\[medmnist\]'"):
        monkeypatch.setitem(sys.modules, "medmnist", None)
        download("pathmnist", tmp_path, size=64)
    served.blob = b"pathmnist at 64 pixels"
    info = types.ModuleType("medmnist.info")
    info.INFO = {"pathmnist": {"url": "https://example.org/pathmnist.npz", "MD5": "0" * 32,
                               "url_64": "https://example.org/pathmnist_64.npz", "MD5_64": hashlib.md5(served.blob).hexdigest()}}
    monkeypatch.setitem(sys.modules, "medmnist", types.ModuleType("medmnist"))
    monkeypatch.setitem(sys.modules, "medmnist.info", info)
    assert download("pathmnist", tmp_path, size=64) == tmp_path / "pathmnist_64.npz"
    assert served.urls == ["https://example.org/pathmnist_64.npz"]
    with pytest.raises(DataError, match="MD5"):
        download("pathmnist", tmp_path)  # the 28-pixel file's listed checksum does not match what was served


def _real(data_root, file: str):
    if not (data_root / file).exists():
        pytest.skip(f"{file} not found under {data_root}: set QKT_DATA_ROOT to the folder holding it")
    return data_root


def test_real_cifar100_archive(data_root):
    d = load_dataset("cifar100", _real(data_root, "cifar100-jpeg.tar.xz"))
    assert d.x_train.shape == (50000, 32, 32, 3) and d.x_test.shape == (10000, 32, 32, 3)
    assert np.bincount(d.y_train).tolist() == [500] * 100 and np.bincount(d.y_test).tolist() == [100] * 100
    assert d.classes[:3] == ("apple", "aquarium_fish", "baby") and d.classes[-1] == "worm"


def test_real_pathmnist(data_root):
    d = load_dataset("pathmnist", _real(data_root, "pathmnist.npz"))
    assert d.x_train.shape == (27000, 28, 28, 3) and len(d.y_test) == 7180 and d.num_classes == 9
    assert np.bincount(d.y_test, minlength=9).min() > 0
