"""The GPU kit: exactly the wheels the fixed GPU image lacks, or has at a version we refuse, for the GPU check.

The GPU machine has no registry access; wheels travel with the working tree (64 MiB in all, the tree
included) and are installed there with ``pip install --no-index --no-deps --target DIR``. Because
``--no-deps`` skips pip's resolver, this script does the resolving: starting from the packages the
check needs (:data:`ROOTS`), it downloads each wheel for CPython 3.12 manylinux x86_64, reads its
``Requires-Dist`` (markers evaluated for that platform, extras not followed) and adds every
requirement the image does not satisfy (``bench/gpu_image.txt``: absent, or a version outside the
specifier), at the version of the lock (``constraints.txt``), until nothing is missing. torch is
never packed: the image's torch 2.11 is the one to measure.

Writes the wheels plus ``MANIFEST.md`` / ``manifest.json`` (why each wheel is there, and what the
check leaves out on purpose) to ``--out``; fails if the kit exceeds ``--max_mib`` (55).

    python bench/gpu_kit.py                  # -> .whl/gpu-kit/ (git-ignored); `make gpu-kit`
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]

#: What the check imports that the image cannot serve, and why (versions come from the lock).
ROOTS = {
    "transformers": "our bound transformers>=5.24,<5.25 (setup.cfg): the image's 5.17 ignores the `cache=` "
                    "keyword the sampler passes, i.e. samples with no KV cache and no error",
    "trl": "rl/ subclasses trl.GRPOTrainer and overrides private methods: pinned trl==1.16.0",
    "datasets": "trl imports it, and rl/ builds its prompt sets with it",
}
#: Runtime requirements of setup.cfg the check does not need, and why (imported lazily by their users).
LEFT_OUT = {
    "torch": "the image's own torch 2.11.0+cu130 is what the check measures",
    "torchvision": "imported only by the HPS preprocessing and the GenEval reward",
    "open_clip_torch": "imported only by the clip/hps/pickscore rewards (built when a recipe names them)",
    "wandb": "imported only with report_to: wandb",
    "deepspeed": "extra [deepspeed]: the ZeRO-3 step of the check is skipped without it",
    "rapidocr-onnxruntime": "extra [ocr]: the ocr reward",
    "fastapi": "extra [serve]: simplear-rl rewards serve",
}
#: The image's interpreter and platform (pip download's target, and the markers in the wheels' metadata).
PYTHON_VERSION, PYTHON_FULL_VERSION = "3.12", "3.12.3"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "linux_x86_64")


def set_python_version(version: str) -> None:
    """Target CPython ``version`` (X.Y) instead of the image's 3.12."""
    global PYTHON_VERSION, PYTHON_FULL_VERSION
    if version != PYTHON_VERSION:
        PYTHON_VERSION, PYTHON_FULL_VERSION = version, f"{version}.0"


def read_pins(path: Path) -> dict[str, str]:
    """``{canonical name: version}`` from a pip pin file (``name==version``; comments and blanks skipped)."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = (part.strip() for part in line.split("==", 1))
            pins[canonicalize_name(name.split("[")[0])] = version
    return pins


def image_environment() -> dict[str, str]:
    """The marker environment of the GPU image: CPython 3.12 on Linux x86_64."""
    env = default_environment()
    env.update(python_version=PYTHON_VERSION, python_full_version=PYTHON_FULL_VERSION, sys_platform="linux",
               platform_system="Linux", platform_machine="x86_64", os_name="posix", implementation_name="cpython",
               platform_python_implementation="CPython", implementation_version=PYTHON_FULL_VERSION)
    return env


def download(name: str, version: str, out: Path) -> Path:
    """Download the one wheel of ``name==version`` for the image's platform into ``out``; its path."""
    before = set(out.glob("*.whl"))
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--python-version", PYTHON_VERSION, "--implementation", "cp", "--abi", "cp" + PYTHON_VERSION.replace(".", ""),
               *[arg for platform in PLATFORMS for arg in ("--platform", platform)], "-d", str(out),
               f"{name}=={version}"]
    subprocess.run(command, check=True)
    for path in set(out.glob("*.whl")) - before or out.glob("*.whl"):
        wheel_name, wheel_version, _, _ = parse_wheel_filename(path.name)
        if wheel_name == canonicalize_name(name) and wheel_version == Version(version):
            return path
    raise FileNotFoundError(f"pip downloaded no wheel of {name}=={version} into {out}")


def requirements(wheel: Path, env: dict[str, str]) -> list[Requirement]:
    """The wheel's ``Requires-Dist`` that apply on the image (no extras requested)."""
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        message = Parser().parsestr(z.read(meta).decode())
    reqs = [Requirement(r) for r in message.get_all("Requires-Dist") or []]
    return [r for r in reqs if r.marker is None or r.marker.evaluate({**env, "extra": ""})]


def build_kit(image: dict[str, str], lock: dict[str, str], out: Path) -> list[dict]:
    """Download the roots and every requirement the image does not satisfy; one manifest row per wheel."""
    env = image_environment()
    rows: dict[str, dict] = {}
    queue = [(canonicalize_name(name), why) for name, why in ROOTS.items()]
    while queue:
        name, why = queue.pop(0)
        if name in rows:
            continue
        if name not in lock:
            raise KeyError(f"{name} is needed on the GPU image but has no version in constraints.txt; lock it first")
        wheel = download(name, lock[name], out)
        rows[name] = {"wheel": wheel.name, "name": name, "version": lock[name], "mib": wheel.stat().st_size / 2**20,
                      "image_has": image.get(name), "why": why}
        for req in requirements(wheel, env):
            dep = canonicalize_name(req.name)
            if dep in rows or dep in LEFT_OUT_CANONICAL:
                continue
            have = image.get(dep)
            if have is not None and req.specifier.contains(have, prereleases=True):
                continue
            state = "the image lacks it" if have is None else f"the image has {have}"
            queue.append((dep, f"{name} {lock[name]} requires `{req}`; {state}"))
    return sorted(rows.values(), key=lambda r: r["name"])


LEFT_OUT_CANONICAL = {canonicalize_name(n) for n in LEFT_OUT}


def manifest_markdown(rows: list[dict], total: float, limit: float) -> str:
    """MANIFEST.md: one line per wheel and why, then what is left out on purpose."""
    lines = [
        "# GPU kit", "",
        f"{len(rows)} wheels, {total:.1f} MiB (limit {limit:.0f} MiB), for CPython {PYTHON_VERSION} manylinux x86_64.",
        "Install on the GPU image with `pip install --no-index --no-deps --target DIR *.whl` and put DIR first on",
        "PYTHONPATH (`bench/gpu_check.sh --kit THIS_FOLDER` does both). Written by `make gpu-kit` (bench/gpu_kit.py).",
        "", "| wheel | MiB | image has | why |", "| --- | ---: | --- | --- |",
    ]
    lines += [f"| {r['wheel']} | {r['mib']:.1f} | {r['image_has'] or '–'} | {r['why']} |" for r in rows]
    lines += ["", "Not brought (the check never imports them):", ""]
    lines += [f"- {name}: {why}" for name, why in LEFT_OUT.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image", default=str(REPO / "bench" / "gpu_image.txt"), help="the image's pins")
    p.add_argument("--lock", default=str(REPO / "constraints.txt"), help="versions of what the kit brings")
    p.add_argument("--out", default=str(REPO / ".whl" / "gpu-kit"))
    p.add_argument("--max_mib", type=float, default=55.0)
    p.add_argument("--python_version", default=PYTHON_VERSION,
                   help="the target interpreter's X.Y (3.12: the GPU image's; another one for a dry run elsewhere)")
    args = p.parse_args(argv)
    set_python_version(args.python_version)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.whl"):
        stale.unlink()
    rows = build_kit(read_pins(Path(args.image)), read_pins(Path(args.lock)), out)
    total = sum(r["mib"] for r in rows)
    (out / "manifest.json").write_text(json.dumps({"wheels": rows, "left_out": LEFT_OUT, "total_mib": total}, indent=2) + "\n")
    (out / "MANIFEST.md").write_text(manifest_markdown(rows, total, args.max_mib))
    print(manifest_markdown(rows, total, args.max_mib))
    if total > args.max_mib:
        print(f"gpu_kit: error: the kit is {total:.1f} MiB, over the {args.max_mib:.0f} MiB limit", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
