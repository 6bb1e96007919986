"""Data files a loader must read right or refuse in one line: arrays of the wrong kind or layout, files not what they are named, awkward images, rewritten files, pickles that call functions."""

from __future__ import annotations

import io
import os
import pickle
import re
import tarfile

import numpy as np
import pytest
from PIL import Image

from qkt.cli import main
from qkt.data import load_dataset

RNG = np.random.default_rng(0)
LABELS = np.arange(40) % 4


def _refused(capsys, name: str, path) -> str:
    """Run `qkt data info` on ``path``; assert exit 2 with one error line and no traceback; return the line."""
    code = main(["data", "info", name, "--data-path", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def _npz(path, x, **extra):
    np.savez(path, x_train=x, y_train=LABELS, x_test=x, y_test=LABELS, **extra)
    return path


# --- npz arrays of the wrong kind ----------------------------------------------------------------------------


def test_an_npz_array_whose_header_claims_terabytes_is_refused_before_it_is_allocated(capsys, tmp_path):
    import zipfile

    path = _npz(tmp_path / "bomb.npz", np.zeros((40, 3), np.float32))
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**13,)})
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    members["x_train.npy"] = header.getvalue() + bytes(48)
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    err = _refused(capsys, "npz", path)
    assert "array 'x_train' cannot be read: its header claims shape (10000000000000,) of float32 (40,000,000,000,000 bytes) in 48" in err


@pytest.mark.parametrize(("x", "extra", "says"), [
    (np.zeros((40, 3), np.float32), {"classes": np.array("abcd")}, "'classes' in .* has shape \\(\\); it lists one name per class"),
    (np.array([["1.5", "a"]] * 40), {}, "x_train in .* holds <U3 values; features must be real numbers"),
    (np.full((40, 3), 1 + 2j), {}, "holds complex128 values; features must be real numbers"),
    (np.zeros((40, 3), "datetime64[s]"), {}, "holds datetime64\\[s\\] values"),
    (np.zeros((40, 3), [("a", "f4"), ("b", "f4")]), {}, "holds \\[\\('a', '<f4'\\), \\('b', '<f4'\\)\\] values"),
], ids=["classes-one-string", "string-features", "complex-features", "datetime-features", "structured-features"])
def test_npz_arrays_that_are_not_real_numbers_are_refused_in_one_line(capsys, tmp_path, x, extra, says):
    err = _refused(capsys, "npz", _npz(tmp_path / "mine.npz", x, **extra))
    assert re.search(says, err), err


def test_boolean_features_still_load(tmp_path):
    d = load_dataset("npz", path=_npz(tmp_path / "mine.npz", RNG.random((40, 3)) > 0.5))
    assert d.x_train.dtype == np.float32 and set(np.unique(d.x_train)) <= {0.0, 1.0}


def test_class_names_far_beyond_the_labels_used_are_refused(capsys, tmp_path):
    x = np.zeros((40, 3), np.float32)
    err = _refused(capsys, "npz", _npz(tmp_path / "many.npz", x, classes=np.array([f"c{i}" for i in range(20_000)])))
    assert "names 20000 classes, but only 4 of them occur in its labels" in err and "number the classes 0..3" in err
    assert load_dataset("npz", path=_npz(tmp_path / "named.npz", x, classes=np.array(list("abcd")))).classes == tuple("abcd")


def test_a_huge_unsigned_label_is_not_called_negative(capsys, tmp_path):
    y = LABELS.astype(np.uint64)
    y[0] = 2**63 + 5
    x = np.zeros((40, 3), np.float32)
    np.savez(tmp_path / "mine.npz", x_train=x, y_train=y, x_test=x, y_test=LABELS)
    err = _refused(capsys, "npz", tmp_path / "mine.npz")
    assert "holds label 9223372036854775813, beyond any label space" in err and "negative labels" not in err


# --- image axes ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("shape", "says"), [
    ((40, 3, 32, 32), "looks channels-first or a 3-D volume; .*np.moveaxis\\(x, 1, -1\\)"),
    ((40, 1, 28, 28), "looks channels-first or a 3-D volume"),
    ((40, 28, 28, 28), "looks channels-first or a 3-D volume; .*x.reshape\\(len\\(x\\), -1\\)"),
    ((40, 8, 8, 0), "has shape \\(40, 8, 8, 0\\): its inputs hold no values"),
    ((40, 0), "has shape \\(40, 0\\): its inputs hold no values"),
], ids=["channels-first-rgb", "channels-first-grey", "volume", "no-channels", "no-features"])
def test_inputs_not_laid_out_as_images_or_features_are_refused(capsys, tmp_path, shape, says):
    x = np.zeros(shape, np.uint8 if len(shape) == 4 else np.float32)
    err = _refused(capsys, "npz", _npz(tmp_path / "mine.npz", x))
    assert re.search(says, err), err


def test_a_medmnist_file_goes_through_the_same_axis_checks(capsys, tmp_path):
    arrays = {f"{split}_{part}": value for split in ("train", "val", "test")
              for part, value in (("images", np.zeros((8, 3, 28, 28), np.uint8)), ("labels", (np.arange(8) % 8)[:, None]))}
    np.savez(tmp_path / "bloodmnist.npz", **arrays)
    assert "np.moveaxis(x, 1, -1)" in _refused(capsys, "bloodmnist", tmp_path / "bloodmnist.npz")


@pytest.mark.parametrize("shape", [(40, 16, 16, 13), (40, 32, 32, 3), (40, 8, 8, 1), (40, 4, 4, 4)],
                         ids=["multispectral", "rgb", "grey", "tiny-rgba"])
def test_channels_last_images_load_whatever_their_channel_count(tmp_path, shape):
    d = load_dataset("npz", path=_npz(tmp_path / "mine.npz", RNG.integers(0, 256, shape, dtype=np.uint8)))
    assert d.input_shape == (shape[3], shape[1], shape[2])


# --- files that are not what they are named ----------------------------------------------------------------


def test_a_medmnist_file_without_its_labels_names_the_array(capsys, tmp_path):
    np.savez(tmp_path / "bloodmnist.npz", train_images=np.zeros((4, 28, 28), np.uint8),
             test_images=np.zeros((4, 28, 28), np.uint8), test_labels=np.zeros((4, 1), np.uint8))
    err = _refused(capsys, "bloodmnist", tmp_path / "bloodmnist.npz")
    assert "lacks train_labels; a MedMNIST file holds train_images, train_labels, test_images, test_labels" in err


def test_a_text_file_given_as_an_npz_is_called_what_it_is(capsys, tmp_path):
    (tmp_path / "mine.npz").write_text("x,y\n1,2\n")
    err = _refused(capsys, "npz", tmp_path / "mine.npz")
    assert "is not an .npz archive (the zip file np.savez writes)" in err and "pickle" not in err


# --- image folders -------------------------------------------------------------------------------------------


def _save(path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def _folder(root, classes=("a", "b"), n=3):
    for split in ("train", "test"):
        for cls in classes:
            for i in range(n):
                _save(root / split / cls / f"{i}.png", RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    return root


def test_an_image_too_large_to_decode_is_named(capsys, tmp_path, monkeypatch):
    root = _folder(tmp_path / "mine")
    _save(root / "train" / "a" / "scan.png", np.zeros((64, 64), np.uint8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow refuses images over twice this: 64×64 stands for 14000×14000
    err = _refused(capsys, "imagefolder", root)
    assert "cannot read the image train/a/scan.png (DecompressionBombError" in err


def test_an_unreadable_image_among_many_is_named(capsys, tmp_path):
    root = _folder(tmp_path / "mine")
    (root / "train" / "b" / "1.png").write_text("<html>404</html>")
    err = _refused(capsys, "imagefolder", root)
    assert "cannot read the image train/b/1.png (not an image Pillow reads)" in err and "BytesIO" not in err


def test_16_bit_greyscale_images_keep_their_range(tmp_path):
    root = _folder(tmp_path / "mine")
    scans = [RNG.integers(0, 4096, (8, 8)).astype(np.uint16) for _ in range(3)]
    scans[0][0, 0] = 4095  # a 12-bit detector's brightest value: it becomes 255
    for i, scan in enumerate(scans):
        _save(root / "train" / "a" / f"{i}.png", scan)
    d = load_dataset("imagefolder", path=root)
    loaded = d.x_train[d.y_train == 0]
    expected = np.rint(np.stack(scans).astype(np.float64) * 255 / 4095).astype(np.uint8)
    np.testing.assert_array_equal(loaded, np.repeat(expected[..., None], 3, axis=3))
    assert np.mean(loaded == 255) < 0.01


def test_a_class_named_twice_in_classes_txt_is_refused(capsys, tmp_path):
    root = _folder(tmp_path / "mine")
    (root / "classes.txt").write_text("a\nb\na\n")
    assert "its classes.txt names a more than once" in _refused(capsys, "imagefolder", root)


# --- the decoded-data cache ----------------------------------------------------------------------------------


def _rewrite_keeping_size_and_time(path, write) -> None:
    """Write new contents of the same size and give the file its old modification time, as rsync -t, cp -p or tar do."""
    before = os.stat(path)
    write()
    assert os.stat(path).st_size == before.st_size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


@pytest.mark.parametrize("replace", [False, True], ids=["in-place", "renamed-over"])
def test_an_npz_rewritten_with_its_old_size_and_time_is_read_afresh(tmp_path, replace):
    path = tmp_path / "mine.npz"
    x = np.zeros((20, 4), np.float32)
    np.savez(path, x_train=x, y_train=np.zeros(20, int), x_test=x, y_test=np.zeros(20, int))
    assert load_dataset("npz", path=path).num_classes == 1

    def write():
        target = tmp_path / "new.npz" if replace else path
        np.savez(target, x_train=x + 1, y_train=np.arange(20) % 2, x_test=x, y_test=np.arange(20) % 2)
        if replace:
            os.replace(target, path)

    _rewrite_keeping_size_and_time(path, write)
    d = load_dataset("npz", path=path)
    assert np.bincount(d.y_train).tolist() == [10, 10] and d.x_train.mean() == 1.0


def test_an_image_in_a_folder_rewritten_with_its_old_size_and_time_is_read_afresh(tmp_path):
    root = tmp_path / "mine"
    for split in ("train", "test"):
        for cls in ("a", "b"):
            _save(root / split / cls / "0.bmp", np.zeros((8, 8, 3), np.uint8))  # BMP: the same size whatever the pixels
    assert load_dataset("imagefolder", path=root).x_train.max() == 0
    image = root / "train" / "a" / "0.bmp"

    def write():
        _save(tmp_path / "new.bmp", np.full((8, 8, 3), 200, np.uint8))
        os.replace(tmp_path / "new.bmp", image)

    _rewrite_keeping_size_and_time(image, write)
    assert load_dataset("imagefolder", path=root).x_train.max() == 200


# --- CIFAR pickles -------------------------------------------------------------------------------------------


def _add(tar: tarfile.TarFile, name: str, blob: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(blob)
    tar.addfile(info, io.BytesIO(blob))


def test_a_cifar_archive_whose_pickle_calls_a_function_is_refused_without_running_it(capsys, tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return os.mkdir, (str(marker),)

    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        _add(tar, "cifar-10-batches-py/data_batch_1", pickle.dumps({"data": Payload()}))
    code = main(["data", "info", "cifar10", "--data-root", str(tmp_path)])
    err = capsys.readouterr().err
    assert not marker.exists()
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert f"'cifar-10-batches-py/data_batch_1' in '{tmp_path / 'cifar-10-python.tar.gz'}' is not a CIFAR batch: " \
           f"its pickle calls {os.mkdir.__module__}.mkdir" in err


@pytest.mark.parametrize("numpy_1", [False, True], ids=["this-numpy", "numpy-1-module-paths"])
def test_cifar_batches_pickled_with_protocol_2_still_load(tmp_path, numpy_1):
    """The official batches are protocol-2 pickles naming numpy.core.multiarray._reconstruct (NumPy 1)."""
    def dump(obj) -> bytes:
        blob = pickle.dumps(obj, protocol=2)
        return blob.replace(b"numpy._core.", b"numpy.core.") if numpy_1 else blob

    data = RNG.integers(0, 256, (3, 3072), dtype=np.uint8)
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            _add(tar, f"cifar-10-batches-py/{name}", dump({"batch_label": "x", "data": data, "labels": [0, 1, 2],
                                                           "filenames": ["a.png", "b.png", "c.png"]}))
        _add(tar, "cifar-10-batches-py/batches.meta", dump({"label_names": ["a", "b", "c"], "num_vis": 3072}))
    d = load_dataset("cifar10", tmp_path)
    assert d.classes == ("a", "b", "c") and d.y_train.tolist() == [0, 1, 2] * 5
    assert tuple(d.x_test[0, 0, 0]) == tuple(data[0, [0, 1024, 2048]])
