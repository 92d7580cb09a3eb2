"""Render a real report in headless Chromium and keep a screenshot of it (bench/plots/report_screenshot.png).

    apt-get update && apt-get install -y chromium      # Debian's package; once
    OMP_NUM_THREADS=1 python -m bench.report_screenshot

The run: the shipped ResNet-20 (Fashion-MNIST) pruned by hierarchical pruning to 50 % of its MACs, consumers refit
and BatchNorm re-estimated (no fine-tune), reported with chanprune.report.render_report against the checkpoint
(accuracy on 1,000 stratified test images). The page is opened from disk with the network and every background
service off (an empty profile folder), as a reader would open the file; the PNG is cropped to the page's end.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHOT = ROOT / "bench" / "plots" / "report_screenshot.png"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--no-first-run", "--disable-sync", "--hide-scrollbars")


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    raise SystemExit("no Chromium found; install Debian's package: apt-get update && apt-get install -y chromium")


def screenshot(html: Path, png: Path, width: int = 1100, height: int = 7000) -> Path:
    """Open ``html`` in headless Chromium (no network, empty profile) and save the page as ``png``, cropped."""
    from PIL import Image, ImageChops

    with tempfile.TemporaryDirectory(prefix="chanprune-chromium-") as profile, \
            tempfile.TemporaryDirectory(prefix="chanprune-shot-") as tmp:
        raw = Path(tmp) / "raw.png"
        subprocess.run([chromium(), *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
                        f"--screenshot={raw}", html.resolve().as_uri()], check=True, timeout=120,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        image = Image.open(raw).convert("RGB")
        background = Image.new("RGB", image.size, image.getpixel((image.width - 1, image.height - 1)))
        box = ImageChops.difference(image, background).getbbox()
        if box:
            image = image.crop((0, 0, image.width, min(image.height, box[3] + 24)))
        png.parent.mkdir(parents=True, exist_ok=True)
        image.save(png, optimize=True)
    return png


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--html", default=str(ROOT / "runs" / "report_example" / "report.html"))
    ap.add_argument("--keep-html", action="store_true", help="render the existing --html instead of a new run")
    args = ap.parse_args()
    html = Path(args.html)
    if not args.keep_html:
        import torch

        import chanprune
        from chanprune.report import render_report

        torch.set_num_threads(1)
        data = chanprune.load_data("fashion_mnist")
        dense = chanprune.load(ROOT / "checkpoints" / "resnet20_fashion_mnist" / "model").eval()
        cfg = chanprune.HierarchicalConfig(target_macs=0.5, recover="compensate+bn", allow_exceed=True)
        pruned = chanprune.prune(dense, cfg, data=data)
        render_report(html, model=pruned, dense=dense, data=data,
                      record={"label": "hierarchical → 50% MACs (consumers refit, BN re-estimated, no fine-tune)",
                              "data": "fashion_mnist", "test_images": 1000})
    print(f"wrote {screenshot(html, SHOT)} from {html}")


if __name__ == "__main__":
    main()
