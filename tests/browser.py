"""Headless Chromium for tests: render a page to PNG and to its DOM after scripts ran; loopback traffic only."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

INSTALL_HINT = ("install the Debian package `chromium` (.ci/run does: apt-get install -y chromium); "
                "the browser tests need it")


def chromium() -> str | None:
    """The Chromium binary, or None when it is not installed."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _command(binary: str, profile: Path, window: tuple[int, int], budget_ms: int) -> list[str]:
    return [
        binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-quic",
        "--disable-extensions", "--hide-scrollbars", "--mute-audio", f"--user-data-dir={profile}",
        # Only loopback: every other host name fails to resolve, and anything else goes to a closed proxy port.
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost , EXCLUDE 127.0.0.1",
        "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=127.0.0.1;localhost",
        f"--window-size={window[0]},{window[1]}", f"--virtual-time-budget={budget_ms}",
    ]


def screenshot(url: str, png: Path, profile: Path, window=(1280, 2400), budget_ms: int = 10_000,
               timeout: float = 120) -> Path:
    """Render `url` and save a PNG of the window (the top `window[1]` pixels of the page)."""
    binary = chromium()
    proc = subprocess.run(_command(binary, profile, window, budget_ms) + [f"--screenshot={png}", url],
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0 and png.exists(), f"chromium --screenshot failed: {proc.stderr[-2000:]}"
    return png


def dom(url: str, profile: Path, budget_ms: int = 10_000, timeout: float = 120) -> str:
    """The page's DOM (HTML) after its scripts ran for `budget_ms` of virtual time."""
    binary = chromium()
    proc = subprocess.run(_command(binary, profile, (1280, 1000), budget_ms) + ["--dump-dom", url],
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0 and proc.stdout, f"chromium --dump-dom failed: {proc.stderr[-2000:]}"
    return proc.stdout


def visible_text(html: str) -> str:
    """The text a person sees: tags, scripts, styles and repeated whitespace removed."""
    import html as entities

    html = re.sub(r"<(script|style|noscript)\b[^>]*>.*?</\1>", " ", html, flags=re.S | re.I)
    return " ".join(entities.unescape(re.sub(r"<[^>]+>", " ", html)).split())


def ink(png: Path) -> dict:
    """How much is drawn on a screenshot: its size, the share of pixels that differ from the background (the
    commonest colour), the number of distinct colours and the grey-level standard deviation."""
    import numpy as np
    from PIL import Image

    with Image.open(png) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
    flat = pixels.reshape(-1, 3)
    colours, counts = np.unique(flat, axis=0, return_counts=True)
    background = colours[counts.argmax()]
    drawn = (np.abs(flat - background).max(axis=1) > 24).mean()
    return {"size": (pixels.shape[1], pixels.shape[0]), "drawn_share": float(drawn), "colours": int(len(colours)),
            "stddev": float(flat.mean(axis=1).std())}
