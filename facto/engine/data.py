"""Dataset registry and loaders: 32x32 images as CPU tensors in torch DataLoaders.

Usage::

    from facto.engine.data import load_data
    data = load_data("digits", batch_size=64, seed=0)
    for images, labels in data.train_loader: ...

``digits`` (scikit-learn's 8x8 digits, upsampled to 32x32) works offline and is the
default. mnist, fashion_mnist, cifar10, cifar100 and svhn are read by torchvision
from ``data_dir`` (``download=True`` fetches them; that needs internet).
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.error import URLError

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import (
    DataLoader,
    Dataset,
    RandomSampler,
    Sampler,
    Subset,
    TensorDataset,
)

__all__ = [
    "DataBundle",
    "DataNotFoundError",
    "DatasetInfo",
    "SeededSampler",
    "dataset_info",
    "list_datasets",
    "load_data",
    "register_dataset",
]

IMAGE_SIZE = 32
DIGITS_TEST_SIZE = 397
DIGITS_SPLIT_SEED = 0

Builder = Callable[[Path, bool, bool], tuple[Dataset, Dataset]]


class DataNotFoundError(ValueError):
    """The dataset files are not in ``data_dir`` and could not be downloaded."""


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset, for model creation and help texts."""

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    description: str
    needs_download: bool
    train_size: int | None = None  # images in the full training split (None: unknown)
    test_size: int | None = None


@dataclass
class DataBundle:
    """Train and test loaders plus what the trainer needs to know about them."""

    train_loader: DataLoader
    test_loader: DataLoader
    info: DatasetInfo
    train_size: int
    test_size: int
    augment: bool = False


@dataclass(frozen=True)
class _Spec:
    """How to build one dataset: its info, default augmentation and split builder."""

    info: DatasetInfo
    augment_default: bool
    build: Builder


_DATASETS: dict[str, _Spec] = {}


def register_dataset(
    info: DatasetInfo, augment_default: bool = False
) -> Callable[[Builder], Builder]:
    """Decorator registering ``build(data_dir, download, augment) -> (train, test)``."""

    def decorator(build: Builder) -> Builder:
        if info.name in _DATASETS:
            raise ValueError(f"name={info.name!r} is already registered: choose a new dataset name")
        _DATASETS[info.name] = _Spec(info, augment_default, build)
        return build

    return decorator


def list_datasets() -> list[str]:
    """Names of the registered datasets, in registration order."""
    return list(_DATASETS)


def _spec(name: object) -> _Spec:
    """The registered spec of ``name`` (case-insensitive, '-' or '_')."""
    key = name.strip().lower().replace("-", "_") if isinstance(name, str) else None
    if key not in _DATASETS:
        raise ValueError(
            f"dataset={name!r} is not known: choose one of {', '.join(list_datasets())}"
        )
    return _DATASETS[key]


def dataset_info(name: str) -> DatasetInfo:
    """Number of classes, channels, image size and description of dataset ``name``."""
    return _spec(name).info


# --------------------------------------------------------------------------- load_data


def _check_optional_positive(arg: str, value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{arg}={value!r} is not allowed: it must be None or an integer >= 1")


def _check_args(
    batch_size: object, num_workers: object, max_train: object, max_test: object
) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} is not allowed: it must be an integer >= 1")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers={num_workers!r} is not allowed: it must be an integer >= 0")
    _check_optional_positive("max_train", max_train)
    _check_optional_positive("max_test", max_test)


def _subset(dataset: Dataset, max_items: int | None, seed: int) -> Dataset:
    """A fixed random subset of ``max_items`` items (the whole set if None or larger)."""
    if isinstance(dataset, _Augmented):
        return _Augmented(_subset(dataset.dataset, max_items, seed), dataset.augment)
    size = len(dataset)  # type: ignore[arg-type]
    if max_items is None or max_items >= size:
        return dataset
    generator = torch.Generator().manual_seed(seed)
    indices = torch.randperm(size, generator=generator)[:max_items].sort().values
    if isinstance(dataset, TensorDataset):
        return TensorDataset(*(t[indices] for t in dataset.tensors))
    return Subset(dataset, indices.tolist())


def load_data(
    name: str = "digits",
    data_dir: str | Path = "~/.facto/data",
    batch_size: int = 64,
    download: bool = False,
    seed: int = 0,
    augment: bool | None = None,
    num_workers: int = 0,
    max_train: int | None = None,
    max_test: int | None = None,
) -> DataBundle:
    """Load dataset ``name`` into seeded train/test DataLoaders of CPU tensors.

    The train loader shuffles with a generator seeded by ``seed``; ``max_train`` and
    ``max_test`` keep a fixed random subset (also chosen by ``seed``). ``augment=None``
    uses the dataset's default: on for CIFAR (crop + flip) and SVHN (crop), off for
    digits and the MNISTs (``augment=True`` gives them a random shift).
    Augmentation never uses the global torch RNG: each train item gets its own seed,
    drawn in the main process from the loader's seeded generator (see `SeededSampler`),
    so the batches depend only on ``seed`` and the epoch, for any ``num_workers``.
    """
    spec = _spec(name)
    _check_args(batch_size, num_workers, max_train, max_test)
    use_augment = spec.augment_default if augment is None else bool(augment)
    root = Path(data_dir).expanduser()
    train_set, test_set = spec.build(root, bool(download), use_augment)
    train_set = _subset(train_set, max_train, seed)
    test_set = _subset(test_set, max_test, seed)
    generator = torch.Generator().manual_seed(seed)
    sampler: Sampler = RandomSampler(train_set, generator=generator)
    if isinstance(train_set, _Augmented):
        sampler = SeededSampler(sampler, len(train_set), generator)
    train_loader = DataLoader(
        train_set,
        batch_size=batch_size,
        sampler=sampler,
        generator=generator,
        num_workers=num_workers,
    )
    test_loader = DataLoader(
        test_set, batch_size=batch_size, shuffle=False, num_workers=num_workers
    )
    return DataBundle(
        train_loader=train_loader,
        test_loader=test_loader,
        info=spec.info,
        train_size=len(train_set),  # type: ignore[arg-type]
        test_size=len(test_set),  # type: ignore[arg-type]
        augment=use_augment,
    )


# --------------------------------------------------------------------------- augmentation


class SeededSampler(Sampler[tuple[int, int]]):
    """Yields ``(index, item seed)`` for each index that ``sampler`` yields.

    Each epoch draws one seed per dataset index (``size`` of them) from ``generator``,
    in the main process, so the seeds depend on neither the workers nor the global RNG.
    """

    def __init__(self, sampler: Sampler[int], size: int, generator: torch.Generator) -> None:
        self.sampler = sampler
        self.size = size
        self.generator = generator

    def __iter__(self) -> Iterator[tuple[int, int]]:
        seeds = torch.randint(2**62, (self.size,), generator=self.generator).tolist()
        return ((index, seeds[index]) for index in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)  # type: ignore[arg-type]


@dataclass(frozen=True)
class _CropFlip:
    """Random crop of the image padded by ``padding`` (pad value ``fill``), optional
    horizontal flip (p=0.5), then normalisation if ``mean`` and ``std`` are given."""

    padding: int
    fill: float = 0.0
    flip: bool = False
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __call__(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        height, width = image.shape[-2:]
        top, left = torch.randint(0, 2 * self.padding + 1, (2,), generator=generator).tolist()
        image = F.pad(image, [self.padding] * 4, value=self.fill)
        image = image[:, top : top + height, left : left + width]
        if self.flip and torch.rand((), generator=generator) < 0.5:
            image = image.flip(-1)
        if self.mean is not None and self.std is not None:
            mean = torch.as_tensor(self.mean, dtype=image.dtype).view(-1, 1, 1)
            std = torch.as_tensor(self.std, dtype=image.dtype).view(-1, 1, 1)
            image = (image - mean) / std
        return image


class _Augmented(Dataset):
    """``dataset`` of (image tensor, label), indexed by ``(index, item seed)``: the image
    goes through ``augment`` with a generator seeded by the item seed."""

    def __init__(
        self, dataset: Dataset, augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor]
    ) -> None:
        self.dataset = dataset
        self.augment = augment

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int | torch.Tensor]:
        index, seed = key
        image, label = self.dataset[index]
        return self.augment(image, torch.Generator().manual_seed(seed)), label


# --------------------------------------------------------------------------- digits (offline)


# sklearn's train_test_split(arange(1797), test_size=DIGITS_TEST_SIZE, random_state=DIGITS_SPLIT_SEED,
# stratify=labels): the train indices in its order, then the test indices (tests/engine/test_data.py
# checks it against scikit-learn). Read from this file, a run loads digits without importing
# scikit-learn, which takes seconds to import.
DIGITS_SPLIT = Path(__file__).with_name("digits_split.npy")


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: (images 1797x8x8 with values 0..16, labels), read from the file it ships."""
    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    csv = Path(spec.submodule_search_locations[0], "datasets", "data", "digits.csv.gz") if spec else None
    if csv is None or not csv.is_file():
        from sklearn.datasets import load_digits

        digits = load_digits()
        return digits.images, digits.target
    table = np.loadtxt(csv, delimiter=",")
    return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)


@functools.lru_cache(maxsize=1)
def _digits_tensors() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalised 32x32 digits: (train images, train labels, test images, test labels).

    Computed once per process; callers must not modify the returned tensors.
    """
    pixels, targets = _digits_arrays()
    images = torch.as_tensor(pixels, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.as_tensor(targets, dtype=torch.long)
    order = torch.as_tensor(np.load(DIGITS_SPLIT).astype(np.int64))
    train_idx, test_idx = order[:-DIGITS_TEST_SIZE], order[-DIGITS_TEST_SIZE:]
    size = (IMAGE_SIZE, IMAGE_SIZE)
    images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
    mean, std = images[train_idx].mean(), images[train_idx].std()
    images = (images - mean) / std
    return images[train_idx], labels[train_idx], images[test_idx], labels[test_idx]


@register_dataset(
    DatasetInfo(
        name="digits",
        num_classes=10,
        in_channels=1,
        image_size=IMAGE_SIZE,
        description="scikit-learn handwritten digits: 1,797 8x8 images upsampled to 32x32 "
        "(1,400 train / 397 test); offline, trains in seconds",
        needs_download=False,
        train_size=1_400,
        test_size=397,
    )
)
def _build_digits(root: Path, download: bool, augment: bool) -> tuple[Dataset, Dataset]:
    train_x, train_y, test_x, test_y = _digits_tensors()
    train: Dataset = TensorDataset(train_x, train_y)
    if augment:  # random shift of up to 2 px, filled with the value of a blank pixel
        train = _Augmented(train, _CropFlip(padding=2, fill=float(train_x.min())))
    return train, TensorDataset(test_x, test_y)


def _digit_classes(low: int, high: int) -> Builder:
    """Builder of the digits `low`..`high` only, labelled 0..high-low (the same train/test split)."""

    def build(root: Path, download: bool, augment: bool) -> tuple[Dataset, Dataset]:
        train_x, train_y, test_x, test_y = _digits_tensors()
        keep_train = (train_y >= low) & (train_y <= high)
        keep_test = (test_y >= low) & (test_y <= high)
        train: Dataset = TensorDataset(train_x[keep_train], train_y[keep_train] - low)
        if augment:
            train = _Augmented(train, _CropFlip(padding=2, fill=float(train_x.min())))
        return train, TensorDataset(test_x[keep_test], test_y[keep_test] - low)

    return build


# a transfer task from the shipped data: learn digits 0-4, then fine-tune on 5-9 (sizes: the split's counts)
for _low, _high, _train, _test in ((0, 4, 703, 198), (5, 9, 697, 199)):
    register_dataset(
        DatasetInfo(
            name=f"digits_{_low}_{_high}",
            num_classes=_high - _low + 1,
            in_channels=1,
            image_size=IMAGE_SIZE,
            description=f"the digits {_low}-{_high} only, labelled 0-{_high - _low} ({_train} train / {_test} "
            "test): half of a transfer task (learn 0-4, fine-tune on 5-9); offline",
            needs_download=False,
            train_size=_train,
            test_size=_test,
        )
    )(_digit_classes(_low, _high))


# --------------------------------------------------------------------------- torchvision datasets


def _vision_sets(
    open_split: Callable[[bool, Callable], Dataset],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    augment: bool,
    pad: int = 0,
    crop_padding: int = 4,
    flip: bool = False,
) -> tuple[Dataset, Dataset]:
    """(train, test) from ``open_split(train, transform)``: pad to 32, to tensor, normalise.

    With ``augment`` the train set is wrapped in `_Augmented`: seeded random crop (zero
    padding in [0, 1] pixel space) and optional flip, then the normalisation.
    """
    from torchvision import transforms as T

    base = [T.Pad(pad)] if pad else []
    base.append(T.ToTensor())
    normalise = T.Normalize(mean, std)
    train = open_split(True, T.Compose(base if augment else [*base, normalise]))
    test = open_split(False, T.Compose([*base, normalise]))
    if augment:
        train = _Augmented(train, _CropFlip(crop_padding, flip=flip, mean=mean, std=std))
    return train, test


def _manual_hint(cls: type, root: Path, folder: Path) -> str:
    """How to put ``cls``'s files in place by hand, from the URLs torchvision uses."""
    url, base = getattr(cls, "url", None), getattr(cls, "base_folder", None)
    if isinstance(url, str) and base:  # CIFAR: one archive unpacking to base_folder
        return f"download {url} and unpack it in {root} (it creates {folder})"
    resources, mirrors = getattr(cls, "resources", None), getattr(cls, "mirrors", None)
    if resources and mirrors:  # MNIST-like: gzipped files read unpacked from raw/
        files = ", ".join(str(r[0] if isinstance(r, (tuple, list)) else r) for r in resources)
        return f"download {files} from {mirrors[0]} into {folder} and gunzip them"
    split_list = getattr(cls, "split_list", None)
    if isinstance(split_list, dict):  # SVHN: one .mat file per split
        urls = " and ".join(split_list[k][0] for k in ("train", "test") if k in split_list)
        return f"download {urls} into {folder}"
    return f"put the dataset files in {folder}"


def _reason(cause: BaseException) -> str:
    """One line from an exception (torchvision spreads the real cause over lines)."""
    text = " ".join(str(cause).split())
    if not text:
        return type(cause).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _not_found(
    name: str, folder: Path, download: bool, cause: BaseException, manual: str
) -> DataNotFoundError:
    offline = "or choose dataset='digits' which works offline"
    if download:  # asked for and failed: repeating "--download" would not help
        return DataNotFoundError(
            f"dataset={name!r}: the download failed ({_reason(cause)}) and the files are not "
            f"in {folder}. To fix: check the internet connection (or proxy) and try again, "
            f"or place the files by hand: {manual}; {offline}."
        )
    return DataNotFoundError(
        f"dataset={name!r}: files missing or incomplete in {folder} (download=False). "
        f"To fix: pass download=True (--download) on a machine with internet, or place the "
        f"files by hand: {manual}; {offline}."
    )


def _file_in_the_way(folder: Path) -> Path | None:
    """The file that stands where ``folder`` or one of its parents should be, if any."""
    for path in (folder, *folder.parents):
        if path.exists():
            return None if path.is_dir() else path
    return None


def _open(name: str, folder: Path, cls: type, root: Path, download: bool, **kwargs) -> Dataset:
    """``cls(root, download=download, **kwargs)``, converting missing-data and network errors."""
    blocker = _file_in_the_way(folder)
    if blocker is not None:
        raise DataNotFoundError(
            f"dataset={name!r}: {blocker} is a file, not a folder. To fix: pass a folder as "
            f"data_dir (--data-dir), or move the file {blocker} aside."
        )
    manual = _manual_hint(cls, root, folder)
    try:
        return cls(str(root), download=download, **kwargs)
    except (URLError, OSError) as err:
        raise _not_found(name, folder, download, err, manual) from err
    except RuntimeError as err:
        message = str(err).lower()
        if "not found" in message or "download" in message or "corrupted" in message:
            raise _not_found(name, folder, download, err, manual) from err
        raise


def _mnist_like(cls_name: str, name: str, mean: float, std: float) -> Builder:
    """Builder for torchvision's MNIST or FashionMNIST: 28x28 zero-padded to 32x32."""

    def build(root: Path, download: bool, augment: bool) -> tuple[Dataset, Dataset]:
        import torchvision.datasets as D

        cls = getattr(D, cls_name)
        folder = root / cls_name / "raw"

        def open_split(train: bool, transform: Callable) -> Dataset:
            return _open(name, folder, cls, root, download, train=train, transform=transform)

        return _vision_sets(open_split, (mean,), (std,), augment, pad=2, crop_padding=2)

    return build


def _cifar(
    cls_name: str, name: str, mean: tuple[float, ...], std: tuple[float, ...]
) -> Builder:
    """Builder for torchvision's CIFAR10 or CIFAR100 (augmentation: crop + flip)."""

    def build(root: Path, download: bool, augment: bool) -> tuple[Dataset, Dataset]:
        import torchvision.datasets as D

        cls = getattr(D, cls_name)
        folder = root / cls.base_folder

        def open_split(train: bool, transform: Callable) -> Dataset:
            return _open(name, folder, cls, root, download, train=train, transform=transform)

        return _vision_sets(open_split, mean, std, augment, flip=True)

    return build


def _build_svhn(root: Path, download: bool, augment: bool) -> tuple[Dataset, Dataset]:
    """SVHN from ``<root>/svhn`` (augmentation: crop only; flipped digits are wrong)."""
    from torchvision.datasets import SVHN

    mean, std = (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)
    folder = root / "svhn"

    def open_split(train: bool, transform: Callable) -> Dataset:
        split = "train" if train else "test"
        return _open("svhn", folder, SVHN, folder, download, split=split, transform=transform)

    return _vision_sets(open_split, mean, std, augment)


register_dataset(
    DatasetInfo(
        name="mnist",
        num_classes=10,
        in_channels=1,
        image_size=IMAGE_SIZE,
        description="MNIST handwritten digits, 60k/10k, 28x28 padded to 32x32",
        needs_download=True,
        train_size=60_000,
        test_size=10_000,
    )
)(_mnist_like("MNIST", "mnist", 0.1307, 0.3081))

register_dataset(
    DatasetInfo(
        name="fashion_mnist",
        num_classes=10,
        in_channels=1,
        image_size=IMAGE_SIZE,
        description="Fashion-MNIST clothing, 60k/10k, 28x28 padded to 32x32",
        needs_download=True,
        train_size=60_000,
        test_size=10_000,
    )
)(_mnist_like("FashionMNIST", "fashion_mnist", 0.2860, 0.3530))

register_dataset(
    DatasetInfo(
        name="cifar10",
        num_classes=10,
        in_channels=3,
        image_size=IMAGE_SIZE,
        description="CIFAR-10 colour photos, 50k/10k, 10 classes",
        needs_download=True,
        train_size=50_000,
        test_size=10_000,
    ),
    augment_default=True,
)(_cifar("CIFAR10", "cifar10", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)))

register_dataset(
    DatasetInfo(
        name="cifar100",
        num_classes=100,
        in_channels=3,
        image_size=IMAGE_SIZE,
        description="CIFAR-100 colour photos, 50k/10k, 100 classes",
        needs_download=True,
        train_size=50_000,
        test_size=10_000,
    ),
    augment_default=True,
)(_cifar("CIFAR100", "cifar100", (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)))

register_dataset(
    DatasetInfo(
        name="svhn",
        num_classes=10,
        in_channels=3,
        image_size=IMAGE_SIZE,
        description="SVHN street-view house numbers, 73k/26k, files in <data_dir>/svhn",
        needs_download=True,
        train_size=73_257,
        test_size=26_032,
    ),
    augment_default=True,
)(_build_svhn)
