"""Rebuild cifar10-jpeg.zip (the data root's image-folder zip) from cifar10-jpeg-pack.npz.

The pack (../shared/assets/cifar10-jpeg-pack.npz, 19 MB) holds the 60,000 JPEG files of
cifar10-jpeg.zip byte for byte with their shared header stored once (the assets README): small enough
to carry to a GPU machine, where this script writes the zip the suite reads (`DFRD_DATA` pointing at
its folder). The files are stored uncompressed under the zip's names
(`cifar10-jpeg/{train,test}/<class>/NNNN.jpg`), so the decoded pixels, and the sha256 every result
records, are those of the original zip.

    python3 results/gpu/unpack_cifar10.py PACK.npz OUT_FOLDER     # writes OUT_FOLDER/cifar10-jpeg.zip
"""
from __future__ import annotations

import os
import sys
import zipfile
from pathlib import Path

import numpy as np


def unpack(pack_path: str, out_dir: str) -> Path:
    pack = np.load(pack_path, allow_pickle=False)
    header, trailer = pack["header"].tobytes(), pack["trailer"].tobytes()
    classes = [str(c) for c in pack["classes"]]
    out = Path(out_dir) / "cifar10-jpeg.zip"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        for split in ("test", "train"):
            data, offsets = pack[f"{split}_data"], pack[f"{split}_offsets"]
            labels, numbers = pack[f"{split}_y"], pack[f"{split}_number"]
            for i in range(len(labels)):
                body = data[offsets[i]:offsets[i + 1]].tobytes()
                name = f"cifar10-jpeg/{split}/{classes[int(labels[i])]}/{int(numbers[i]):04d}.jpg"
                zf.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), header + body + trailer)
    os.replace(tmp, out)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__.strip().splitlines()[-1].strip())
    print(unpack(sys.argv[1], sys.argv[2]))
