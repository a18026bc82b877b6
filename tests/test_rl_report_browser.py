"""The run report in a real browser (issue 20): headless Debian Chromium renders report.html from a GRPO run with
held-out monitoring; the screenshot is not blank and every embedded image loaded (no network needed).

Needs the Debian package: ``apt-get update && apt-get install -y chromium``. Run with ``pytest -m slow``.
"""

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rl.grpo import main as grpo_main

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "tiny" / "grpo.yaml"
PROMPTS = REPO / "recipes" / "tiny" / "prompts.jsonl"
#: After the page has loaded, write each image's load state into the DOM (added to a copy; the report has no script).
PROBE = """<script>window.addEventListener('load', () => {
  const states = [...document.images].map(i => (i.complete && i.naturalWidth > 0) ? 'loaded' : 'broken');
  document.body.setAttribute('data-images', states.join(','));
});</script></body>"""


def chromium(profile: Path, *args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.skip("Chromium is not installed (apt-get update && apt-get install -y chromium)")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}"]
    return subprocess.run([binary, *flags, *args], capture_output=True, text=True, timeout=180)


@pytest.mark.slow
def test_chromium_renders_the_report_with_every_image_loaded_and_a_screenshot_that_is_not_blank(tmp_path):
    run = tmp_path / "run"
    assert grpo_main(["--config", str(RECIPE), "--output_dir", str(run), "--train_prompts", str(PROMPTS),
                      "--max_steps", "2", "--sample_every", "0", "--monitor_prompts", str(PROMPTS),
                      "--monitor_steps", "1", "--monitor_num_prompts", "4"]) == 0
    report = run / "report.html"
    html = report.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), "the report must not reach the network"

    probed = tmp_path / "probe.html"
    probed.write_text(html.replace("</body>", PROBE))
    dom = chromium(tmp_path / "profile1", "--virtual-time-budget=10000", "--dump-dom", probed.as_uri())
    states = re.search(r'data-images="([^"]*)"', dom.stdout)
    assert states, f"the page did not finish loading: {dom.stderr[-500:]}"
    assert states.group(1).split(",") == ["loaded"] * 4  # the curves and one filmstrip frame per step 0, 1, 2

    shot = tmp_path / "shot.png"
    chromium(tmp_path / "profile2", "--window-size=1400,2400", f"--screenshot={shot}", report.as_uri())
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3)
    assert pixels.std() > 20, "the screenshot is blank"
    colours = {tuple(p) for p in pixels[::7]}
    assert len(colours) > 200, "the pictures did not render (too few distinct colours)"
