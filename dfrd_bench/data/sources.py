"""Where images come from: official layouts, image folders (or a zip of one), `.npz` arrays, downloads.

Everything is decoded once to uint8 arrays (N, H, W, 3) and cached under the cache folder, keyed by
the source's path, size and modification time, so a second run starts in well under a second.
Every loaded split carries a `source` record (kind, path, split, number of images, sha256 of the
decoded pixels and labels) that is copied into every result, so tables never mix sources silently.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import DfrdError, first_line
from ..utils import atomic_write_bytes, cache_dir
from .specs import DatasetSpec, get_dataset_spec

CACHE_VERSION = 1
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class DataError(DfrdError, RuntimeError):
    """Missing or malformed data; the message says what to do."""


@dataclass
class ImageSet:
    """A decoded split: uint8 images (N, H, W, 3), int64 labels, class names and provenance."""

    x: np.ndarray
    y: np.ndarray
    class_names: List[str]
    source: Dict[str, object] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def tensors(self):
        """Images as float32 [0,1] NCHW and labels as int64 torch tensors."""
        import torch

        x = torch.from_numpy(np.ascontiguousarray(self.x)).permute(0, 3, 1, 2).float().div_(255.0)
        return x.contiguous(), torch.from_numpy(self.y.astype(np.int64))

    def subset(self, n: Optional[int], seed: int = 0) -> "ImageSet":
        """A class-stratified, seeded subset of n images (files come class by class, so never a prefix)."""
        if n is None or n >= len(self):
            return self
        idx = stratified_indices(self.y, n, seed, self.num_classes)
        src = dict(self.source)
        src["subset"] = {"n": int(n), "rule": "stratified: seeded shuffle, then round-robin over classes",
                         "seed": int(seed), "of": len(self)}
        src["n"] = int(n)
        src["sha256"] = content_sha256(self.x[idx], self.y[idx])
        return ImageSet(self.x[idx], self.y[idx], self.class_names, src)

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.y, minlength=self.num_classes)


def stratified_indices(y: np.ndarray, n: int, seed: int, num_classes: int) -> np.ndarray:
    """Seeded shuffle, then take images round-robin over classes until n are chosen."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(y))
    per_class = [perm[y[perm] == c] for c in range(num_classes)]
    chosen: List[int] = []
    depth = 0
    while len(chosen) < n:
        progressed = False
        for members in per_class:
            if depth < len(members) and len(chosen) < n:
                chosen.append(int(members[depth]))
                progressed = True
        if not progressed:
            break
        depth += 1
    return np.sort(np.asarray(chosen, dtype=np.int64))


def content_sha256(x: np.ndarray, y: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(x).tobytes())
    h.update(np.ascontiguousarray(y.astype(np.int64)).tobytes())
    return h.hexdigest()


def resolve_data_root(data_root: Optional[str] = None) -> Path:
    """--data-root, else $DFRD_DATA, else <cache>/data."""
    if data_root:
        return Path(data_root).expanduser()
    env = os.environ.get("DFRD_DATA")
    if env:
        return Path(env).expanduser()
    return cache_dir() / "data"


# --------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------
def load_split(
    dataset: str,
    split: str = "test",
    source: Optional[str] = None,
    data_root: Optional[str] = None,
    use_cache: bool = True,
) -> ImageSet:
    """Load one split of a dataset from `source`, else from the data root (downloading when online)."""
    spec = get_dataset_spec(dataset)
    if split not in spec.splits:
        raise DataError(f"dataset {dataset} has splits {', '.join(spec.splits)}, not {split!r}")
    path = Path(source).expanduser() if source else _find_in_data_root(spec, split, data_root)
    if not path.exists():
        raise DataError(f"data source {path} does not exist; pass an existing --source or fix --data-root")
    kind = detect_source_kind(path)
    key = _cache_key(spec, split, path, kind)
    if use_cache:
        cached = _read_cache(key)
        if cached is not None:
            return cached
    x, y, names = _READERS[kind](spec, split, path)
    _check_images(spec, x, y, path)
    _check_labels(spec, y, names, path)
    record = {
        "kind": kind,
        "path": str(path.resolve()),
        "dataset": spec.name,
        "split": split,
        "n": int(len(y)),
        "sha256": content_sha256(x, y),
    }
    image_set = ImageSet(x, y, names, record)
    if use_cache:
        _write_cache(key, image_set)
    return image_set


def detect_source_kind(path: Path) -> str:
    name = path.name.lower()
    if path.is_file():
        if name.endswith(".npz"):
            return "npz"
        if name.endswith(".zip"):
            files = _Files(path)  # one clear error for a file that is not a zip
            names = files.names()
            files.close()
            if any(n.endswith("wnids.txt") for n in names):
                return "tinyimagenet-zip"
            return "imagefolder-zip"
        raise DataError(f"cannot read {path}: expected a folder, a .zip of an image folder or a .npz")
    if path.is_dir():
        if (path / "data_batch_1").exists() or (path / "test_batch").exists():
            return "cifar10-official"
        if (path / "meta").is_file() and ((path / "train").is_file() or (path / "test").is_file()):
            return "cifar100-official"
        if (path / "cifar-10-batches-py").is_dir():
            return "cifar10-official"
        if (path / "cifar-100-python").is_dir():
            return "cifar100-official"
        if (path / "wnids.txt").exists() or (path / "tiny-imagenet-200").is_dir():
            return "tinyimagenet-folder"
        return "imagefolder"
    raise DataError(f"data source {path} does not exist")


# --------------------------------------------------------------------------------------------
# Data root lookup and download
# --------------------------------------------------------------------------------------------
def _find_in_data_root(spec: DatasetSpec, split: str, data_root: Optional[str]) -> Path:
    root = resolve_data_root(data_root)
    for kind in ("official", "imagefolder"):
        for rel in spec.root_candidates.get(kind, ()):
            candidate = root / rel
            if candidate.exists() and _has_split(candidate, spec, split):
                return candidate
    if os.environ.get("DFRD_OFFLINE", "") not in ("", "0"):
        raise DataError(f"no {spec.name} {split} data under {root} (offline): {spec.download_hint}")
    return _download(spec, root)


def _has_split(path: Path, spec: DatasetSpec, split: str) -> bool:
    """The Tiny-ImageNet validation-only archive has no train split; fall through to the next file."""
    if spec.name != "tinyimagenet" or split != "train":
        return True
    if path.is_dir():
        return (path / "train").is_dir() or (path / "tiny-imagenet-200" / "train").is_dir()
    with zipfile.ZipFile(path) as zf:
        return any("/train/" in n for n in zf.namelist())


def _download(spec: DatasetSpec, root: Path) -> Path:
    try:
        root.mkdir(parents=True, exist_ok=True)
        if spec.name in ("cifar10", "cifar100"):
            import torchvision

            cls = torchvision.datasets.CIFAR10 if spec.name == "cifar10" else torchvision.datasets.CIFAR100
            cls(str(root), train=False, download=True)
            return root / spec.root_candidates["official"][0]
        from torchvision.datasets.utils import download_and_extract_archive

        download_and_extract_archive("http://cs231n.stanford.edu/tiny-imagenet-200.zip", str(root))
        return root / "tiny-imagenet-200"
    except Exception as exc:  # offline, DNS failure, bad archive...
        raise DataError(
            f"no {spec.name} data under {root} and downloading failed ({type(exc).__name__}): "
            f"{spec.download_hint}, or pass --source PATH"
        ) from None


# --------------------------------------------------------------------------------------------
# Readers: (spec, split, path) -> (x uint8 NHWC, y int64, class names)
# --------------------------------------------------------------------------------------------
Arrays = Tuple[np.ndarray, np.ndarray, List[str]]


def _spec_names(spec: DatasetSpec) -> List[str]:
    return list(spec.class_names) if spec.class_names else []


def _read_npz(spec: DatasetSpec, split: str, path: Path) -> Arrays:
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as exc:  # not a zip, truncated, or an object array
        raise DataError(f"{path} is not a readable .npz ({first_line(exc, 100)})") from None
    with data:
        if "x" not in data or "y" not in data:
            raise DataError(f"{path} must hold arrays 'x' (uint8 N,H,W,3) and 'y' (labels); found {list(data)}")
        try:  # arrays are read here: an object array (pickled Python objects) or a cut-short member fails now
            x, y = data["x"], data["y"]
        except Exception as exc:
            raise DataError(f"{path}: cannot read its arrays ({first_line(exc, 100)}); store 'x' as uint8 and 'y' "
                            "as integer numpy arrays (np.savez, no Python objects)") from None
    size = spec.image_size
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise DataError(f"{path}: 'x' must be uint8 (N,{size},{size},3), got {x.dtype} {x.shape}")
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        hint = " (one-hot? store y.argmax(1))" if y.ndim == 2 and y.shape[1] == spec.num_classes else ""
        raise DataError(f"{path}: 'y' must be class indices of shape (N,), got {y.dtype} {y.shape}{hint}")
    if len(x) != len(y):
        raise DataError(f"{path}: 'x' holds {len(x)} images but 'y' {len(y)} labels; they must match")
    names = _spec_names(spec) or [f"class{i}" for i in range(spec.num_classes)]
    return x, y.astype(np.int64), names


class _CifarUnpickler(pickle.Unpickler):
    """The official CIFAR batches are pickles, and a pickle can run code. This unpickler builds only
    what the format holds (dicts, lists, bytes, numbers and numpy arrays) and refuses every other
    global, so a crafted batch file fails to load instead of running."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing {module}.{name}: CIFAR batch files hold only arrays, lists and bytes")


def _unpickle(blob: bytes, path: Path = Path("?")) -> dict:
    try:
        out = _CifarUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except Exception as exc:
        raise DataError(f"{path} is not a CIFAR batch file ({first_line(exc, 120)}); re-extract the official "
                        "archive") from None
    if not isinstance(out, dict):
        raise DataError(f"{path} is not a CIFAR batch file (it holds a {type(out).__name__}, not a dict)")
    return out


def _read_cifar_official(spec: DatasetSpec, split: str, path: Path) -> Arrays:
    folder = path
    for sub in ("cifar-10-batches-py", "cifar-100-python"):
        if (path / sub).is_dir():
            folder = path / sub
    if spec.name == "cifar10":
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        label_key = b"labels"
    elif spec.name == "cifar100":
        files = ["train"] if split == "train" else ["test"]
        label_key = b"fine_labels"
    else:
        raise DataError(f"{path} is a CIFAR folder, but the dataset is {spec.name}")
    xs, ys = [], []
    for fname in files:
        fpath = folder / fname
        if not fpath.exists():
            raise DataError(f"{fpath} is missing from the official {spec.name} folder; re-extract the archive")
        batch = _unpickle(fpath.read_bytes(), fpath)
        if label_key not in batch:
            raise DataError(f"{fpath} has no {label_key.decode()}: it is not a {spec.name} batch file")
        xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        ys.append(np.asarray(batch[label_key], dtype=np.int64))
    return np.ascontiguousarray(np.concatenate(xs)), np.concatenate(ys), _spec_names(spec)


def _decode(blob: bytes, size: int, name: str = "image") -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(blob)) as img:
            img = img.convert("RGB")
            if img.size != (size, size):
                raise DataError(f"{name} is {img.size[0]}x{img.size[1]} where {size}x{size} was expected; check --dataset")
            return np.asarray(img, dtype=np.uint8)
    except DataError:
        raise
    except Exception as exc:  # truncated or not an image at all
        raise DataError(f"cannot decode {name} ({first_line(exc, 100)}): replace or remove the file") from None


def _progress(items: Sequence, desc: str):
    from ..utils import progress

    return progress(items, desc=desc, unit="img")


class _Files:
    """A folder or a zip behind one interface: list names, read bytes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.zip = zipfile.ZipFile(path) if path.is_file() else None
        except (zipfile.BadZipFile, OSError) as exc:
            raise DataError(f"{path} is not a readable zip archive ({first_line(exc, 100)}): re-download it") from None

    def names(self) -> List[str]:
        if self.zip is not None:
            return [n for n in self.zip.namelist() if not n.endswith("/")]
        return [str(p.relative_to(self.path)).replace(os.sep, "/") for p in self.path.rglob("*") if p.is_file()]

    def read(self, name: str) -> bytes:
        if self.zip is not None:
            return self.zip.read(name)
        return (self.path / name).read_bytes()

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()


def _read_imagefolder(spec: DatasetSpec, split: str, path: Path) -> Arrays:
    files = _Files(path)
    try:
        by_class: Dict[str, List[str]] = {}
        for name in files.names():
            parts = name.split("/")
            if len(parts) < 3 or not name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            # <prefix...>/<split>/<class>/<file>
            if parts[-3] != split:
                continue
            by_class.setdefault(parts[-2], []).append(name)
        if not by_class:
            raise DataError(f"{path} has no images under '{split}/<class>/'; expected <root>/{{train,test}}/<class>/*")
        names = _spec_names(spec) or sorted(by_class)
        found = sorted(by_class)
        if sorted(names) != found:
            missing = sorted(set(names) - set(found))[:5]
            extra = sorted(set(found) - set(names))[:5]
            raise DataError(
                f"{path}/{split} has {len(found)} class folders but {spec.name} has {spec.num_classes} classes "
                f"(missing {missing}, unexpected {extra}); is this the right --dataset?"
            )
        ordered = [(c, n) for c_idx, c in enumerate(names) for n in sorted(by_class[c])]
        x = np.stack([_decode(files.read(n), spec.image_size, f"{path}/{n}")
                      for _, n in _progress(ordered, f"decode {spec.name}/{split}")])
        index = {c: i for i, c in enumerate(names)}
        y = np.asarray([index[c] for c, _ in ordered], dtype=np.int64)
        return x, y, names
    finally:
        files.close()


def _read_tinyimagenet(spec: DatasetSpec, split: str, path: Path) -> Arrays:
    files = _Files(path)
    try:
        all_names = files.names()
        wnids_file = next((n for n in all_names if n.endswith("wnids.txt")), None)
        if wnids_file is None:
            raise DataError(f"{path} has no wnids.txt: not the official Tiny-ImageNet layout")
        prefix = wnids_file[: -len("wnids.txt")]
        # Class order: sorted wnids, as torchvision's ImageFolder orders them (what robust
        # Tiny-ImageNet checkpoints are trained with).
        wnids = sorted(w.strip() for w in files.read(wnids_file).decode().split() if w.strip())
        index = {w: i for i, w in enumerate(wnids)}
        if split == "train":
            items = sorted(
                (n.split("/")[-3], n) for n in all_names
                if n.startswith(prefix + "train/") and n.lower().endswith(IMAGE_EXTENSIONS)
            )
            if not items:
                raise DataError(
                    f"{path} has no Tiny-ImageNet train split (tiny-imagenet-200/train/<wnid>/images/*.JPEG); "
                    "use the full official archive"
                )
        else:
            ann_name = prefix + "val/val_annotations.txt"
            if ann_name not in all_names:
                raise DataError(f"{path} lacks val/val_annotations.txt: not the official Tiny-ImageNet layout")
            items = []
            for line in files.read(ann_name).decode().splitlines():
                cols = line.split("\t")
                if len(cols) >= 2:
                    items.append((cols[1], prefix + "val/images/" + cols[0]))
            items.sort(key=lambda it: it[1])
        x = np.stack([_decode(files.read(n), spec.image_size) for _, n in _progress(items, f"decode tinyimagenet/{split}")])
        y = np.asarray([index[w] for w, _ in items], dtype=np.int64)
        words = next((n for n in all_names if n.endswith("words.txt")), None)
        names = wnids
        if words is not None:
            table = dict(
                line.split("\t", 1) for line in files.read(words).decode().splitlines() if "\t" in line
            )
            names = [f"{w}:{table.get(w, w).split(',')[0].strip()}" for w in wnids]
        return x, y, names
    finally:
        files.close()


_READERS = {
    "npz": _read_npz,
    "cifar10-official": _read_cifar_official,
    "cifar100-official": _read_cifar_official,
    "imagefolder": _read_imagefolder,
    "imagefolder-zip": _read_imagefolder,
    "tinyimagenet-folder": _read_tinyimagenet,
    "tinyimagenet-zip": _read_tinyimagenet,
}


def _check_images(spec: DatasetSpec, x: np.ndarray, y: np.ndarray, path: Path) -> None:
    """Images of the dataset's size, as many as labels, at least one: any other data would be
    evaluated as the dataset and give numbers that look valid and are not."""
    size = spec.image_size
    if x.ndim != 4 or x.shape[1:] != (size, size, 3):
        raise DataError(f"{path} holds images of shape {tuple(x.shape[1:])}, but {spec.name} images are "
                        f"({size}, {size}, 3); check --dataset and --source")
    if len(x) != len(y):
        raise DataError(f"{path} holds {len(x)} images but {len(y)} labels")
    if len(y) == 0:
        raise DataError(f"{path} holds no image; pass a source with at least one")


def _check_labels(spec: DatasetSpec, y: np.ndarray, names: List[str], path: Path) -> None:
    if len(names) != spec.num_classes:
        raise DataError(f"{path} has {len(names)} classes but {spec.name} has {spec.num_classes}; check --dataset")
    if y.size and (y.min() < 0 or y.max() >= spec.num_classes):
        raise DataError(
            f"{path} has labels in [{y.min()}, {y.max()}] but {spec.name} has {spec.num_classes} classes; check --dataset"
        )


# --------------------------------------------------------------------------------------------
# Decoded-array cache
# --------------------------------------------------------------------------------------------
def _cache_key(spec: DatasetSpec, split: str, path: Path, kind: str) -> str:
    stat = path.stat()
    ident = f"v{CACHE_VERSION}|{spec.name}|{split}|{kind}|{path.resolve()}|{stat.st_size}|{int(stat.st_mtime)}"
    return hashlib.sha1(ident.encode()).hexdigest()[:20]


def _cache_path(key: str) -> Path:
    return cache_dir() / "decoded" / key


def _read_cache(key: str) -> Optional[ImageSet]:
    folder = _cache_path(key)
    meta_file = folder / "meta.json"
    if not meta_file.exists():
        return None
    try:
        meta = json.loads(meta_file.read_text())
        x = np.load(folder / "x.npy")
        y = np.load(folder / "y.npy")
    except Exception:
        return None  # a damaged cache entry is simply rebuilt
    if len(x) != meta["source"]["n"]:
        return None
    return ImageSet(x, y, meta["class_names"], meta["source"])


def _write_cache(key: str, image_set: ImageSet) -> None:
    folder = _cache_path(key)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, arr in (("x.npy", image_set.x), ("y.npy", image_set.y)):
            buf = io.BytesIO()
            np.save(buf, arr)
            atomic_write_bytes(folder / name, buf.getvalue())
        meta = {"class_names": image_set.class_names, "source": image_set.source}
        atomic_write_bytes(folder / "meta.json", json.dumps(meta).encode())
    except OSError:
        pass  # a read-only cache folder only costs speed


def from_arrays(x: np.ndarray, y: np.ndarray, dataset: str, label: str = "arrays") -> ImageSet:
    """Wrap in-memory arrays (tests, generated data) as an ImageSet with provenance."""
    spec = get_dataset_spec(dataset)
    names = _spec_names(spec) or [f"class{i}" for i in range(spec.num_classes)]
    src = {"kind": "arrays", "path": label, "dataset": dataset, "split": "n/a", "n": int(len(y)),
           "sha256": content_sha256(x, y)}
    return ImageSet(x, y.astype(np.int64), names, src)


def with_source(image_set: ImageSet, **updates) -> ImageSet:
    return replace(image_set, source={**image_set.source, **updates})
