"""How long the SYNTHETIC sample takes to generate (``cxr_model.sample``, the default spec).

The test suite checks the work done (each image drawn once, on the small grid); this times it.
Each repeat writes the default sample into a fresh temporary folder; it prints every time and
the best, with the machine.

    .venv/bin/python bench/sample_generation.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from cxr_model.sample import SampleSpec, generate_sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    spec = SampleSpec()
    seconds = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            summary = generate_sample(Path(folder) / "demo", spec)
            seconds.append(time.perf_counter() - start)
    images = summary.images + spec.inbox_images
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    print(f"default spec: {images} images of {spec.image_size} px (+ bad files)")
    print("seconds: " + ", ".join(f"{s:.2f}" for s in seconds) + f"; best {min(seconds):.2f}")


if __name__ == "__main__":
    main()
