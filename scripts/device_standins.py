"""Write metadata-only wheels standing in for the GPU image's own packages (for device_prepare.sh's check).

`pip install --dry-run --no-index` over .device/wheels plus these resolves as the GPU machine would, where
torch, torchvision, numpy, scipy and pillow come with the image: it fails if a shipped package needs a wheel that
is not in the folder. The wheels hold no code and are never installed.

    .venv/bin/python scripts/device_standins.py OUT_DIR torch==2.11.0 numpy==2.5.2 ...
"""
from __future__ import annotations

import sys
import zipfile
from pathlib import Path


def standin_wheel(out_dir: Path, name: str, version: str) -> Path:
    """A py3-none-any wheel of `name` `version` holding only its dist-info."""
    stem = f"{name.replace('-', '_')}-{version}"
    info = f"{stem}.dist-info"
    files = {f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: device_standins\nRoot-Is-Purelib: true\n"
                              "Tag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{path},,\n" for path in files) + f"{info}/RECORD,,\n"
    path = out_dir / f"{stem}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for arcname, text in files.items():
            wheel.writestr(arcname, text)
    return path


def main() -> None:
    out_dir = Path(sys.argv[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    for pin in sys.argv[2:]:
        name, version = pin.split("==")
        standin_wheel(out_dir, name, version)


if __name__ == "__main__":
    main()
