"""Datasets described as data: classes, image size, normalisation and where official files live."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple
from ..errors import UnknownName

CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]

# The official CIFAR-100 fine label order (the `meta` file's fine_label_names).
CIFAR100_CLASSES = [
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup",
    "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house",
    "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man",
    "maple_tree", "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange", "orchid",
    "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy",
    "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal",
    "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider", "squirrel", "streetcar",
    "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor",
    "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
]


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    num_classes: int
    image_size: int
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    # None: class identifiers come from the source (Tiny-ImageNet's wnids, sorted as ImageFolder does).
    class_names: Optional[Tuple[str, ...]]
    splits: Tuple[str, ...]
    # Files/folders looked for under the data root, in order (see data/sources.py).
    root_candidates: Dict[str, Tuple[str, ...]] = field(default_factory=dict)
    download_hint: str = ""
    worst_fraction_metric: str = "worst"  # which worst-case metric the paper reports

    def info(self) -> Dict[str, object]:
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "image_size": self.image_size,
            "splits": list(self.splits),
            "paper_worst_metric": self.worst_fraction_metric,
        }


DATASETS: Dict[str, DatasetSpec] = {
    "cifar10": DatasetSpec(
        name="cifar10",
        num_classes=10,
        image_size=32,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2471, 0.2435, 0.2616),
        class_names=tuple(CIFAR10_CLASSES),
        splits=("train", "test"),
        root_candidates={
            "official": ("cifar-10-batches-py",),
            "imagefolder": ("cifar10-jpeg.zip", "cifar10-jpeg", "cifar10"),
        },
        download_hint=(
            "put the official 'cifar-10-batches-py/' folder (from cifar-10-python.tar.gz) or an image "
            "folder/zip 'cifar10-jpeg.zip' with {train,test}/<class>/* under the data root"
        ),
    ),
    "cifar100": DatasetSpec(
        name="cifar100",
        num_classes=100,
        image_size=32,
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
        class_names=tuple(CIFAR100_CLASSES),
        splits=("train", "test"),
        root_candidates={
            "official": ("cifar-100-python",),
            "imagefolder": ("cifar100-jpeg.zip", "cifar100-jpeg", "cifar100"),
        },
        download_hint=(
            "put the official 'cifar-100-python/' folder (from cifar-100-python.tar.gz) or an image "
            "folder/zip 'cifar100-jpeg.zip' under the data root"
        ),
        worst_fraction_metric="worst10",
    ),
    "tinyimagenet": DatasetSpec(
        name="tinyimagenet",
        num_classes=200,
        image_size=64,
        mean=(0.4802, 0.4481, 0.3975),
        std=(0.2302, 0.2265, 0.2262),
        class_names=None,
        # The official test split has no labels, so 'test' is the validation split (as in the paper).
        splits=("train", "test"),
        root_candidates={
            "official": ("tiny-imagenet-200", "tiny-imagenet-200.zip", "tiny-imagenet-200-val.zip"),
        },
        download_hint=(
            "put the official 'tiny-imagenet-200/' folder or 'tiny-imagenet-200.zip' under the data root"
        ),
        worst_fraction_metric="worst10",
    ),
}


def get_dataset_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        import difflib

        close = difflib.get_close_matches(name, list(DATASETS), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise UnknownName(f"unknown dataset {name!r}{hint}; known: {', '.join(DATASETS)}")
    return DATASETS[name]


def class_names_list(spec: DatasetSpec) -> List[str]:
    return list(spec.class_names) if spec.class_names else [f"class{i}" for i in range(spec.num_classes)]
