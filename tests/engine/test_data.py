"""Tests for facto.engine.data: the offline digits set and torchvision datasets from tiny local files.

No network is used. The torchvision datasets are read from small files written in
their real on-disk formats. CIFAR and SVHN files are md5-checked by torchvision
against the checksums of the real files, so the tests patch those class-level
checksum tables (with monkeypatch) to the md5 of the files written here: the
integrity check itself still runs. MNIST only checks that the files exist.
"""

import hashlib
import pickle
import struct
from collections import defaultdict
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.datasets as tvd
from torchvision import transforms as T

from facto.engine import distributed
from facto.engine.data import (
    DataBundle,
    DataNotFoundError,
    DatasetInfo,
    SeededSampler,
    dataset_info,
    list_datasets,
    load_data,
)

RNG = np.random.default_rng(0)


# --------------------------------------------------------------------------- registry


def test_list_datasets():
    assert list_datasets() == ["digits", "digits_0_4", "digits_5_9", "mnist", "fashion_mnist", "cifar10", "cifar100", "svhn"]


@pytest.mark.parametrize("name", list_datasets())
def test_dataset_info(name):
    info = dataset_info(name)
    assert isinstance(info, DatasetInfo) and info.name == name
    assert info.image_size == 32 and info.description
    assert info.in_channels == (3 if name.startswith(("cifar", "svhn")) else 1)
    assert info.num_classes == (100 if name == "cifar100" else 5 if name.startswith("digits_") else 10)
    assert info.needs_download == (not name.startswith("digits"))


def test_unknown_dataset_raises_value_error():
    with pytest.raises(ValueError, match="imagenet") as err:
        load_data("imagenet")
    assert "digits" in str(err.value)
    with pytest.raises(ValueError, match="imagenet"):
        dataset_info("imagenet")


@pytest.mark.parametrize(
    "kwargs, arg",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"max_train": 0}, "max_train"),
        ({"num_workers": -1}, "num_workers"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        load_data("digits", **kwargs)


# --------------------------------------------------------------------------- digits


def test_digits_sizes_shapes_labels():
    data = load_data("digits", batch_size=32)
    assert isinstance(data, DataBundle)
    assert (data.train_size, data.test_size) == (1400, 397)
    assert data.info == dataset_info("digits") and data.augment is False
    images, labels = next(iter(data.train_loader))
    assert images.shape == (32, 1, 32, 32) and images.dtype == torch.float32
    assert images.device.type == "cpu" and labels.dtype == torch.long
    all_labels = torch.cat([y for _, y in data.test_loader])
    assert len(all_labels) == 397 and set(all_labels.tolist()) == set(range(10))


def test_digits_are_scikit_learns_images_and_split_without_importing_it(monkeypatch):
    """The digits a run trains on: scikit-learn's load_digits, split by its stratified train_test_split
    (the order facto ships in digits_split.npy), upsampled; read without importing scikit-learn. The
    file is made by `np.save(DIGITS_SPLIT, np.concatenate(train_test_split(...)).astype(np.int16))`."""
    import sys

    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from facto.engine import data as D

    digits = load_digits()
    train_idx, test_idx = train_test_split(np.arange(len(digits.target)), test_size=D.DIGITS_TEST_SIZE,
                                           random_state=D.DIGITS_SPLIT_SEED, stratify=digits.target)
    images = F.interpolate(torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0,
                           size=(32, 32), mode="bilinear", align_corners=False)
    images = (images - images[train_idx].mean()) / images[train_idx].std()
    labels = torch.as_tensor(digits.target)
    for name in [m for m in sys.modules if m == "sklearn" or m.startswith("sklearn.")]:
        monkeypatch.delitem(sys.modules, name)  # restored after the test
    D._digits_tensors.cache_clear()
    try:
        got = D._digits_tensors()
        assert "sklearn" not in sys.modules
    finally:
        D._digits_tensors.cache_clear()
    want = images[train_idx], labels[train_idx], images[test_idx], labels[test_idx]
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def test_digits_normalised_with_train_statistics():
    data = load_data("digits")
    train = torch.cat([x for x, _ in data.train_loader])
    test = torch.cat([x for x, _ in data.test_loader])
    assert abs(train.mean().item()) < 1e-3 and abs(train.std().item() - 1) < 1e-3
    assert abs(test.mean().item()) < 0.1 and abs(test.std().item() - 1) < 0.1


def test_digits_seeded_order():
    first = next(iter(load_data("digits", seed=1).train_loader))
    again = next(iter(load_data("digits", seed=1).train_loader))
    other = next(iter(load_data("digits", seed=2).train_loader))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])
    test_a = next(iter(load_data("digits", seed=1).test_loader))[0]
    test_b = next(iter(load_data("digits", seed=2).test_loader))[0]
    assert torch.equal(test_a, test_b)  # the test split and order do not depend on seed


def test_digits_subsets_are_fixed_by_seed():
    a = load_data("digits", max_train=100, max_test=50, seed=3)
    b = load_data("digits", max_train=100, max_test=50, seed=3)
    assert (a.train_size, a.test_size) == (100, 50)
    assert torch.equal(a.train_loader.dataset.tensors[0], b.train_loader.dataset.tensors[0])
    assert len(torch.cat([y for _, y in a.train_loader])) == 100


def test_digits_augment_shifts_images():
    data = load_data("digits", augment=True, max_train=64, batch_size=64)
    assert data.augment is True
    images, _ = next(iter(data.train_loader))
    assert images.shape == (64, 1, 32, 32)
    assert isinstance(data.train_loader.sampler, SeededSampler)
    dataset = data.train_loader.dataset
    draws = [dataset[(0, item_seed)][0] for item_seed in range(8)]
    assert all(d.shape == (1, 32, 32) for d in draws)
    assert any(not torch.equal(draws[0], d) for d in draws[1:])
    assert torch.equal(dataset[(0, 5)][0], dataset[(0, 5)][0])  # a pure function of the seed
    assert load_data("digits").augment is False  # off by default for digits


def _train_batches(data: DataBundle, epochs: int = 2, poke_global_rng: int | None = None) -> list:
    """All train batches of ``epochs`` epochs; with ``poke_global_rng``, reseed and draw from
    the global torch RNG before each epoch and between batches (as other code might)."""
    batches = []
    for epoch in range(epochs):
        if poke_global_rng is not None:
            torch.manual_seed(poke_global_rng + epoch)
            torch.rand(3)
        for images, labels in data.train_loader:
            batches.append((images, labels))
            if poke_global_rng is not None:
                torch.manual_seed(poke_global_rng + 100 * len(batches))
                torch.rand(len(batches))
    return batches


def _same_batches(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b)
    )


def _digits_augmented(seed: int = 0, num_workers: int = 0) -> DataBundle:
    return load_data(
        "digits", augment=True, max_train=64, batch_size=16, seed=seed, num_workers=num_workers
    )


def test_digits_augmentation_ignores_the_global_rng():
    first = _train_batches(_digits_augmented(seed=4), poke_global_rng=1)
    again = _train_batches(_digits_augmented(seed=4), poke_global_rng=777)
    assert _same_batches(first, again)
    assert not torch.equal(first[0][0], first[4][0])  # epoch 2 is not a repeat of epoch 1
    other = _train_batches(_digits_augmented(seed=5), poke_global_rng=1)
    assert not _same_batches(first, other)


def test_digits_augmentation_same_with_worker_processes():
    in_process = _train_batches(_digits_augmented(seed=2))
    with_workers = _train_batches(_digits_augmented(seed=2, num_workers=2))
    assert _same_batches(in_process, with_workers)


def _match_shifts(
    augmented: torch.Tensor, originals: torch.Tensor, fill: float
) -> list[tuple[int, int, int]]:
    """(original index, dy, dx) of each augmented image: the one shift of at most 2 px
    (blank pixels filled with ``fill``) of one original that it equals exactly."""
    matches = defaultdict(list)
    padded = F.pad(originals, [2] * 4, value=fill)
    for dy in range(-2, 3):
        for dx in range(-2, 3):
            shifted = padded[..., 2 - dy : 34 - dy, 2 - dx : 34 - dx]
            equal = (augmented[:, None] == shifted[None]).flatten(2).all(-1)
            for a, o in equal.nonzero().tolist():
                matches[a].append((o, dy, dx))
    assert all(len(matches[a]) == 1 for a in range(len(augmented))), "not a shifted original"
    return [matches[a][0] for a in range(len(augmented))]


def test_digits_augmentation_shifts_within_two_pixels_and_varies_by_epoch():
    originals = load_data("digits", max_train=64, seed=3).train_loader.dataset.tensors[0]
    fill = float(load_data("digits").train_loader.dataset.tensors[0].min())  # a blank pixel
    loader = load_data("digits", augment=True, max_train=64, batch_size=64, seed=3).train_loader
    shifts = defaultdict(list)
    for _ in range(3):  # one batch is one epoch
        images, _ = next(iter(loader))
        for index, dy, dx in _match_shifts(images, originals, fill):
            shifts[index].append((dy, dx))
    assert sorted(shifts) == list(range(64))  # every image once per epoch
    assert sum(len(set(s)) > 1 for s in shifts.values()) >= 60  # new shifts each epoch
    drawn = [shift for s in shifts.values() for shift in s]
    assert {dy for dy, _ in drawn} == {dx for _, dx in drawn} == set(range(-2, 3))


def test_sharded_augmented_loader_keeps_item_seeds(tmp_path):
    """Under torchrun the train loader gets a DistributedSampler: still seeded, per epoch."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    try:
        def epochs(poke: int) -> list:
            loader = distributed.shard_loader(_digits_augmented(seed=1).train_loader, seed=1)
            assert isinstance(loader.sampler, SeededSampler)
            batches = []
            for epoch in range(2):
                distributed.set_epoch(loader, epoch)
                torch.manual_seed(poke + epoch)
                batches.append(torch.cat([x for x, _ in loader]))
            return batches

        first, again = epochs(poke=0), epochs(poke=99)
        assert all(torch.equal(a, b) for a, b in zip(first, again))
        assert first[0].shape == (64, 1, 32, 32) and not torch.equal(first[0], first[1])
    finally:
        dist.destroy_process_group()


# --------------------------------------------------------------------------- file writers


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _write_idx(path: Path, array: np.ndarray) -> None:
    """IDX file: magic 0x0000 08 <ndim> (2049 labels, 2051 images), big-endian sizes, uint8 data."""
    header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _write_mnist(root: Path, folder: str, n_train: int = 20, n_test: int = 10) -> None:
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", RNG.integers(0, 256, (n, 28, 28)))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)


def _pickle(path: Path, obj: dict) -> list[str]:
    # The real files are Python 2 pickles with str keys; torchvision loads them with
    # encoding="latin1", which gives str keys, so str keys are the faithful format.
    path.write_bytes(pickle.dumps(obj, protocol=2))
    return [path.name, _md5(path)]


def _cifar_batch(n: int, label_key: str, num_classes: int) -> dict:
    return {
        "data": RNG.integers(0, 256, (n, 3072), dtype=np.uint8),
        label_key: [i % num_classes for i in range(n)],
    }


def _write_cifar10(root: Path, monkeypatch) -> None:
    folder = root / tvd.CIFAR10.base_folder
    folder.mkdir(parents=True)
    train = [
        _pickle(folder / f"data_batch_{i}", _cifar_batch(4, "labels", 10)) for i in range(1, 6)
    ]
    test = [_pickle(folder / "test_batch", _cifar_batch(10, "labels", 10))]
    _, meta_md5 = _pickle(folder / "batches.meta", {"label_names": [f"c{i}" for i in range(10)]})
    monkeypatch.setattr(tvd.CIFAR10, "train_list", train)
    monkeypatch.setattr(tvd.CIFAR10, "test_list", test)
    monkeypatch.setattr(tvd.CIFAR10, "meta", {**tvd.CIFAR10.meta, "md5": meta_md5})


def _write_cifar100(root: Path, monkeypatch) -> None:
    folder = root / tvd.CIFAR100.base_folder
    folder.mkdir(parents=True)
    train = [_pickle(folder / "train", _cifar_batch(200, "fine_labels", 100))]
    test = [_pickle(folder / "test", _cifar_batch(10, "fine_labels", 100))]
    names = {"fine_label_names": [f"c{i}" for i in range(100)]}
    _, meta_md5 = _pickle(folder / "meta", names)
    monkeypatch.setattr(tvd.CIFAR100, "train_list", train)
    monkeypatch.setattr(tvd.CIFAR100, "test_list", test)
    monkeypatch.setattr(tvd.CIFAR100, "meta", {**tvd.CIFAR100.meta, "md5": meta_md5})


def _write_svhn(folder: Path, monkeypatch) -> None:
    from scipy.io import savemat

    folder.mkdir(parents=True)
    split_list = {key: list(value) for key, value in tvd.SVHN.split_list.items()}
    for split, n in (("train", 20), ("test", 10)):
        path = folder / f"{split}_32x32.mat"
        labels = (np.arange(n) % 10 + 1).astype(np.uint8).reshape(n, 1)  # 1..10, 10 is digit 0
        savemat(path, {"X": RNG.integers(0, 256, (32, 32, 3, n), dtype=np.uint8), "y": labels})
        split_list[split][2] = _md5(path)
    monkeypatch.setattr(tvd.SVHN, "split_list", split_list)


# --------------------------------------------------------------------------- torchvision datasets


def _transform_types(loader) -> list[type]:
    dataset = loader.dataset
    while hasattr(dataset, "dataset"):  # torch Subset, augmentation wrapper
        dataset = dataset.dataset
    return [type(t) for t in dataset.transform.transforms]


def _augmentation(loader):
    """The train set's seeded augmentation, None if it is not augmented."""
    return getattr(loader.dataset, "augment", None)


def _check_batches(data: DataBundle, channels: int, num_classes: int) -> None:
    for loader in (data.train_loader, data.test_loader):
        labels = []
        for images, y in loader:
            assert images.shape[1:] == (channels, 32, 32) and images.dtype == torch.float32
            labels.append(y)
        labels = torch.cat(labels)
        assert labels.dtype == torch.long
        assert 0 <= labels.min() and labels.max() < num_classes


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_like_from_idx_files(tmp_path, name, folder):
    _write_mnist(tmp_path, folder)
    data = load_data(name, data_dir=tmp_path, batch_size=8)
    assert (data.train_size, data.test_size) == (20, 10)
    assert data.augment is False
    _check_batches(data, channels=1, num_classes=10)
    labels = torch.cat([y for _, y in data.test_loader])
    assert labels.tolist() == list(range(10))
    assert _augmentation(data.train_loader) is None
    assert _transform_types(data.train_loader) == [T.Pad, T.ToTensor, T.Normalize]
    shifted = load_data(name, data_dir=tmp_path, batch_size=8, augment=True)
    augmentation = _augmentation(shifted.train_loader)
    assert (augmentation.padding, augmentation.fill, augmentation.flip) == (2, 0.0, False)
    assert _transform_types(shifted.train_loader) == [T.Pad, T.ToTensor]  # normalised after
    _check_batches(shifted, channels=1, num_classes=10)


def test_cifar10_from_pickles_with_augmentation(tmp_path, monkeypatch):
    _write_cifar10(tmp_path, monkeypatch)
    data = load_data("cifar10", data_dir=str(tmp_path), batch_size=8)
    assert (data.train_size, data.test_size) == (20, 10)
    assert data.augment is True
    _check_batches(data, channels=3, num_classes=10)
    augmentation = _augmentation(data.train_loader)
    assert (augmentation.padding, augmentation.fill, augmentation.flip) == (4, 0.0, True)
    assert _transform_types(data.train_loader) == [T.ToTensor]  # crop, flip, normalise after
    assert _transform_types(data.test_loader) == [T.ToTensor, T.Normalize]
    plain = load_data("cifar10", data_dir=tmp_path, augment=False)
    assert plain.augment is False and _augmentation(plain.train_loader) is None
    assert _transform_types(plain.train_loader) == [T.ToTensor, T.Normalize]


CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def test_cifar10_unaugmented_loaders_unchanged(tmp_path, monkeypatch):
    """augment=False gives exactly the loader facto built before seeded augmentation."""
    _write_cifar10(tmp_path, monkeypatch)
    transform = T.Compose([T.ToTensor(), T.Normalize(CIFAR10_MEAN, CIFAR10_STD)])
    reference = torch.utils.data.DataLoader(
        tvd.CIFAR10(str(tmp_path), train=True, transform=transform),
        batch_size=8,
        shuffle=True,
        generator=torch.Generator().manual_seed(3),
    )
    expected = [batch for _ in range(2) for batch in reference]
    plain = load_data("cifar10", data_dir=tmp_path, batch_size=8, seed=3, augment=False)
    assert _same_batches(_train_batches(plain, poke_global_rng=5), expected)
    test_reference = tvd.CIFAR10(str(tmp_path), train=False, transform=transform)
    test_images = torch.cat([x for x, _ in plain.test_loader])
    assert torch.equal(test_images, torch.stack([x for x, _ in test_reference]))


def _crops_and_flips(image: torch.Tensor) -> dict[tuple[int, int, bool], torch.Tensor]:
    """Every RandomCrop(32, padding=4) + flip of a [0, 1] image, normalised by torchvision."""
    normalise = T.Normalize(CIFAR10_MEAN, CIFAR10_STD)
    padded = F.pad(image, [4] * 4)  # zero padding in pixel space
    return {
        (top, left, flip): normalise(crop.flip(-1) if flip else crop)
        for top in range(9)
        for left in range(9)
        for flip in (False, True)
        for crop in [padded[:, top : top + 32, left : left + 32]]
    }


def test_cifar10_augmentation_is_seeded_crop_flip_then_normalise(tmp_path, monkeypatch):
    _write_cifar10(tmp_path, monkeypatch)

    def augmented(seed: int, num_workers: int = 0) -> DataBundle:
        return load_data("cifar10", data_dir=tmp_path, batch_size=8, seed=seed,
                         num_workers=num_workers)

    first = _train_batches(augmented(3), poke_global_rng=1)
    assert _same_batches(first, _train_batches(augmented(3), poke_global_rng=50))
    assert not _same_batches(first, _train_batches(augmented(4)))
    dataset = augmented(3).train_loader.dataset
    image = T.ToTensor()(tvd.CIFAR10(str(tmp_path), train=True)[0][0])
    candidates = _crops_and_flips(image)
    drawn = set()
    for item_seed in range(40):
        sample = dataset[(0, item_seed)][0]
        drawn |= {key for key, candidate in candidates.items() if torch.equal(sample, candidate)}
    assert {flip for _, _, flip in drawn} == {False, True}
    assert len({(top, left) for top, left, _ in drawn}) > 20
    assert any(top in (0, 8) or left in (0, 8) for top, left, _ in drawn)  # 4 px of padding


def test_cifar100_subset(tmp_path, monkeypatch):
    _write_cifar100(tmp_path, monkeypatch)
    data = load_data("cifar100", data_dir=tmp_path, batch_size=16, max_train=50, max_test=5)
    assert (data.train_size, data.test_size) == (50, 5)
    assert data.info.num_classes == 100
    _check_batches(data, channels=3, num_classes=100)


def test_svhn_from_mat_files_crop_without_flip(tmp_path, monkeypatch):
    _write_svhn(tmp_path / "svhn", monkeypatch)
    data = load_data("svhn", data_dir=tmp_path, batch_size=8)
    assert (data.train_size, data.test_size) == (20, 10)
    _check_batches(data, channels=3, num_classes=10)
    assert sorted(torch.cat([y for _, y in data.test_loader]).tolist()) == list(range(10))
    augmentation = _augmentation(data.train_loader)
    assert (augmentation.padding, augmentation.flip) == (4, False)


def test_torchvision_train_order_is_seeded(tmp_path, monkeypatch):
    _write_cifar10(tmp_path, monkeypatch)

    def train_labels(seed: int) -> torch.Tensor:
        loader = load_data("cifar10", data_dir=tmp_path, seed=seed, batch_size=4).train_loader
        return torch.cat([y for _, y in loader])

    orders = [train_labels(5), train_labels(5), train_labels(6)]
    assert torch.equal(orders[0], orders[1]) and not torch.equal(orders[0], orders[2])


# --------------------------------------------------------------------------- missing data


@pytest.mark.parametrize(
    "name, subdir",
    [
        ("mnist", "MNIST/raw"),
        ("fashion_mnist", "FashionMNIST/raw"),
        ("cifar10", "cifar-10-batches-py"),
        ("cifar100", "cifar-100-python"),
        ("svhn", "svhn"),
    ],
)
def test_missing_data_raises_clear_error(tmp_path, name, subdir):
    with pytest.raises(DataNotFoundError) as err:
        load_data(name, data_dir=tmp_path)
    message = str(err.value)
    assert str(tmp_path / subdir) in message
    assert "download" in message and "digits" in message and name in message
    assert isinstance(err.value, ValueError)


def test_failed_download_raises_clear_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(tvd.cifar, "download_and_extract_archive", offline)
    with pytest.raises(DataNotFoundError, match="no network") as err:
        load_data("cifar10", data_dir=tmp_path, download=True)
    assert str(tmp_path) in str(err.value) and "download" in str(err.value)


def test_data_dir_expands_user(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(DataNotFoundError) as err:
        load_data("mnist", data_dir="~/facto-data")
    assert str(tmp_path / "facto-data" / "MNIST" / "raw") in str(err.value)


def _offline(*args, **kwargs):
    raise URLError("no network")


@pytest.mark.parametrize(
    "name, module, helper, subdir, url",
    [
        ("cifar10", tvd.cifar, "download_and_extract_archive", "cifar-10-batches-py",
         "cifar-10-python.tar.gz"),
        ("mnist", tvd.mnist, "download_and_extract_archive", "MNIST/raw",
         "train-images-idx3-ubyte.gz"),
        ("svhn", tvd.svhn, "download_url", "svhn", "train_32x32.mat"),
    ],
)
def test_failed_download_says_so_and_how_to_place_files_by_hand(
    tmp_path, monkeypatch, name, module, helper, subdir, url
):
    monkeypatch.setattr(module, helper, _offline)
    with pytest.raises(DataNotFoundError) as err:
        load_data(name, data_dir=tmp_path, download=True)
    message = str(err.value)
    assert "\n" not in message
    assert "the download failed" in message and "no network" in message
    assert "--download" not in message and "download=True" not in message  # it was asked for
    assert "by hand" in message and url in message and str(tmp_path / subdir) in message
    assert "digits" in message


def test_failed_download_from_the_dataset_class(tmp_path, monkeypatch):
    def refused(self):
        raise PermissionError(13, "Permission denied", str(tmp_path))

    monkeypatch.setattr(tvd.CIFAR100, "download", refused)
    with pytest.raises(DataNotFoundError) as err:
        load_data("cifar100", data_dir=tmp_path, download=True)
    message = str(err.value)
    assert "the download failed" in message and "Permission denied" in message
    assert "--download" not in message and "cifar-100-python.tar.gz" in message


def test_missing_data_without_download_suggests_download_and_by_hand(tmp_path):
    with pytest.raises(DataNotFoundError) as err:
        load_data("fashion_mnist", data_dir=tmp_path)
    message = str(err.value)
    assert "download=True (--download)" in message and "by hand" in message
    assert str(tmp_path / "FashionMNIST" / "raw") in message and "gunzip" in message


@pytest.mark.parametrize("name", ["mnist", "cifar10", "svhn"])
@pytest.mark.parametrize("download", [False, True])
def test_data_dir_that_is_a_file(tmp_path, monkeypatch, name, download):
    monkeypatch.setattr(tvd.cifar, "download_and_extract_archive", _offline)
    monkeypatch.setattr(tvd.mnist, "download_and_extract_archive", _offline)
    monkeypatch.setattr(tvd.svhn, "download_url", _offline)
    blocker = tmp_path / "data.tar"
    blocker.write_bytes(b"not a folder")
    for data_dir in (blocker, blocker / "deeper"):
        with pytest.raises(DataNotFoundError) as err:
            load_data(name, data_dir=data_dir, download=download)
        message = str(err.value)
        assert f"{blocker} is a file, not a folder" in message
        assert "files missing" not in message and "--data-dir" in message
    assert blocker.read_bytes() == b"not a folder"
