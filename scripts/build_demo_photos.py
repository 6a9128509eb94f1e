"""Regenerate ruclip_tiny/assets/demo/ (photos, labels_ru.json, README.md) from an installed scikit-image.

scikit-image is NOT a dependency of this project; install it into a throwaway venv and run this script
with that venv's Python (it needs only scikit-image's bundled data files and Pillow)::

    python -m venv /tmp/skimage-venv && /tmp/skimage-venv/bin/pip install scikit-image
    /tmp/skimage-venv/bin/python scripts/build_demo_photos.py

Only photographs that ship inside the scikit-image wheel are used (nothing fetched through pooch), each
checked against the sha256 in scikit-image's data registry. The output is deterministic for a given
Pillow (and its libjpeg): LANCZOS downscale to a long side of at most 512 px, baseline JPEG quality 90,
no metadata copied (no EXIF, no ICC profile).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

LONG_SIDE = 512
JPEG_QUALITY = 90
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "ruclip_tiny" / "assets" / "demo"


@dataclass(frozen=True)
class DemoPhoto:
    """One demo photo: where it comes from in scikit-image, what it shows, and who may be credited."""

    file: str  # name in the demo folder
    source: str  # file under skimage/data/
    function: str  # the skimage.data function that returns it
    label_ru: str  # what it shows, as a zero-shot label
    credit: str
    licence: str


PHOTOS = (
    DemoPhoto(
        "astronaut.jpg", "astronaut.png", "skimage.data.astronaut", "астронавт",
        "NASA (portrait of astronaut Eileen Collins), NASA Great Images database, https://flic.kr/p/r9qvLn",
        "public domain (no known copyright restrictions)",
    ),
    DemoPhoto(
        "cat.jpg", "chelsea.png", "skimage.data.chelsea", "кошка",
        "Stefan van der Walt (Chelsea the cat)",
        "CC0 (no copyright restrictions, dedicated by the photographer)",
    ),
    DemoPhoto(
        "coffee.jpg", "coffee.png", "skimage.data.coffee", "кофе",
        "Rachel Michetti (coffee cup, courtesy of Pikolo Espresso Bar)",
        "CC0 (no copyright restrictions, dedicated by the photographer)",
    ),
    DemoPhoto(
        "coins.jpg", "coins.png", "skimage.data.coins", "монеты",
        "Brooklyn Museum Collection (Greek coins from Pompeii), "
        "https://www.brooklynmuseum.org/opencollection/archives/image/51611",
        "no known copyright restrictions",
    ),
    DemoPhoto(
        "galaxies.jpg", "hubble_deep_field.jpg", "skimage.data.hubble_deep_field", "галактики",
        "NASA / Hubble Space Telescope (Hubble eXtreme Deep Field), "
        "http://hubblesite.org/newscenter/archive/releases/2012/37/image/a/",
        "public domain (NASA imagery may be freely used)",
    ),
    DemoPhoto(
        "rocket.jpg", "rocket.jpg", "skimage.data.rocket", "ракета",
        "SpaceX (launch of DSCOVR on Falcon 9, Cape Canaveral), "
        "https://www.flickr.com/photos/spacexphotos/16511594820/",
        "public domain (released by SpaceX)",
    ),
)

# Labels that match none of the photos: a zero-shot demo must rank them below the right one.
DISTRACTORS_RU = ("диаграмма", "собака", "автомобиль", "цветы", "текст")


def skimage_data_dir() -> tuple[Path, str, dict[str, str]]:
    """(folder of scikit-image's bundled data, its version, registry path -> sha256)."""
    try:
        import skimage
        import skimage.data
    except ImportError as err:
        raise SystemExit(
            "scikit-image is not installed in this Python; run this script from a throwaway venv "
            "that has it (see the module docstring)"
        ) from err
    from skimage.data._registry import registry  # private, but it is where the hashes live

    return Path(skimage.data.__file__).parent, skimage.__version__, registry


def downscaled(image: Image.Image) -> Image.Image:
    """The image with its long side at most LONG_SIDE px (aspect kept, sizes rounded to nearest)."""
    scale = LONG_SIDE / max(image.size)
    if scale >= 1:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def readme_text(skimage_version: str, sizes: dict[str, tuple[int, int, int]]) -> str:
    rows = "\n".join(
        f"| `{p.file}` | {sizes[p.file][0]}×{sizes[p.file][1]}, {sizes[p.file][2] / 1024:.0f} KB "
        f"| `{p.function}()` (`skimage/data/{p.source}`) | {p.label_ru} | {p.credit} | {p.licence} |"
        for p in PHOTOS
    )
    return f"""# Demo photos

Real photographs for demos, smoke tests and the parity probe set, with the Russian label each one shows
(`labels_ru.json`: file name -> label, plus distractor labels that match none of them).

Taken from the sample data bundled inside the scikit-image {skimage_version} wheel, downscaled to a long
side of at most {LONG_SIDE} px (LANCZOS) and saved as JPEG quality {JPEG_QUALITY} without metadata.
Regenerate with `scripts/build_demo_photos.py` (see its docstring); do not edit these files by hand.
Credits and licences are as stated in scikit-image's documentation of each `skimage.data` function.

| file | size | scikit-image origin | label | author / credit | licence |
|---|---|---|---|---|---|
{rows}

EXIF orientation: none of these files carries EXIF, so they look the same whether or not a viewer
applies it (the model's preprocessing does not).
"""


def build(out_dir: Path) -> None:
    data_dir, version, registry = skimage_data_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    sizes: dict[str, tuple[int, int, int]] = {}
    for photo in PHOTOS:
        source = data_dir / photo.source
        if not source.is_file():
            raise SystemExit(f"{source}: not in this scikit-image wheel ({version}); pick another photo")
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
        expected = registry.get(f"data/{photo.source}")
        if digest != expected:
            raise SystemExit(f"{source}: sha256 {digest} does not match scikit-image's registry ({expected})")
        with Image.open(source) as image:
            image.load()
            # RGB or L only: JPEG cannot hold alpha, and L keeps the grey coins photo an 8-bit grey JPEG.
            image = image.convert("L" if image.mode in ("L", "I;16", "I", "1") else "RGB")
            image = downscaled(image)
        target = out_dir / photo.file
        image.save(target, format="JPEG", quality=JPEG_QUALITY, optimize=True)
        sizes[photo.file] = (image.width, image.height, target.stat().st_size)
        print(f"{target}: {image.mode} {image.width}x{image.height}, {target.stat().st_size / 1024:.1f} KB")

    labels = {
        "labels": {p.file: p.label_ru for p in PHOTOS},
        "distractors": list(DISTRACTORS_RU),
    }
    (out_dir / "labels_ru.json").write_text(json.dumps(labels, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    (out_dir / "README.md").write_text(readme_text(version, sizes), encoding="utf-8")
    total = sum(size for _, _, size in sizes.values())
    print(f"total {total / 1024:.1f} KB in {len(sizes)} photos")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="demo folder (default: %(default)s)")
    build(parser.parse_args().out)


if __name__ == "__main__":
    main()
