"""Download, here, the wheels `bench/gpu/check.py` installs on a GPU machine that has PyTorch but no network.

    python bench/gpu/fetch_wheels.py [--dest bench/gpu/wheels] [--python-version 3.12] [--max-mib 60]

What it fetches: sft's dependencies (pyproject.toml) and liger-kernel, with everything they require, each at the
version constraints.txt pins (CI's tested set), as manylinux x86_64 / pure-Python wheels for the target Python.
Nothing is decided by this machine's interpreter: every `pip download` names the platform and Python version, and
dependencies are followed through the downloaded wheels' own METADATA (markers evaluated for Linux x86_64 and the
target Python). Never fetched: torch, triton and the nvidia-*/cuda-* runtime wheels (the GPU machine has the build
that matches its driver), nor the large libraries a PyTorch image already holds (NOT_CARRIED below); check.py's
pip keeps what is installed there when it satisfies the requirement and says so when it does not.

bitsandbytes' wheel (41 MiB) holds its library built for every CUDA and ROCm release; only the builds for the GPU
machine's CUDA major version (--bnb-cuda, default 13: its PyTorch is cu130) and the CPU one are kept, the rest are
removed from the wheel and its RECORD (3 MiB left). The folder must fit, with the repository, in the 64 MiB that
travels to the GPU machine: the total is printed and the script exits 1 when it is over --max-mib.
"""

import argparse
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from check import needed_requirements  # what check.py installs is what this fetches

# GPU-only extras are not in constraints.txt (CI installs none of them); pinned here, checked on a GPU run.
EXTRA_PINS = {"liger-kernel": "0.8.5"}
# Never carried: the GPU machine's own CUDA build of PyTorch and what comes with it.
NEVER = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*|pytorch-triton.*)$")
# Large libraries every PyTorch/data-science image has (the device's list: /work/.library/device/KINDS.md);
# carrying them would not fit the 64 MiB. If the machine's version does not satisfy a requirement, check.py says so.
NOT_CARRIED = {"numpy", "pyarrow", "pandas", "matplotlib", "contourpy", "fonttools", "kiwisolver", "pillow",
               "scipy", "sympy", "networkx", "setuptools", "pip", "wheel"}
# manylinux tags pip may match (it matches N exactly); the GPU machine runs glibc 2.39.
PLATFORMS = ["manylinux1_x86_64", "manylinux2010_x86_64", "manylinux2014_x86_64"] + [
    f"manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28, 31, 34, 35, 39)]


def pins(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            found[canonicalize_name(name)] = version.strip()
    return found | {canonicalize_name(k): v for k, v in EXTRA_PINS.items()}


def wheel_requirements(wheel: Path) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(name).decode()
    return [Requirement(line.split(":", 1)[1].strip()) for line in text.splitlines()
            if line.startswith("Requires-Dist:")]


def applies(requirement: Requirement, python_version: str, extras: set[str]) -> bool:
    """Does this requirement apply on Linux x86_64 CPython `python_version` with these extras of its parent?"""
    if requirement.marker is None:
        return True
    env = {"python_version": python_version, "python_full_version": python_version + ".0", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
           "implementation_name": "cpython", "platform_python_implementation": "CPython"}
    return any(Marker(str(requirement.marker)).evaluate(env | {"extra": e}) for e in (extras or {""}))


def download(specs: list[str], dest: Path, python_version: str) -> None:
    """Binary wheels for the target platform; a release published only as a source archive (rouge-score 0.1.2) is
    built into a wheel here, which must come out pure Python (py3-none-any) to be usable on the GPU machine."""
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    binary = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
              "--python-version", python_version, "--implementation", "cp", *platforms, "-d", str(dest)]
    if subprocess.run(binary + specs, check=False).returncode == 0:
        return
    for spec in specs:  # find which ones have no wheel
        if subprocess.run(binary + [spec], check=False, capture_output=True).returncode == 0:
            continue
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dest), spec], check=True)
        name = canonicalize_name(spec.split("==")[0])
        built = [w for w in dest.glob("*.whl") if canonicalize_name(parse_wheel_filename(w.name)[0]) == name]
        if not built or not all(w.name.endswith("-py3-none-any.whl") for w in built):
            sys.exit(f"error: {spec} has no wheel for the target and its source does not build pure Python")
        print(f"{spec}: no wheel published; built {built[0].name} from its source")


def slim_bitsandbytes(wheel: Path, cuda_major: str) -> None:
    """Keep the native libraries for one CUDA major version and the CPU; drop the rest from the wheel and RECORD."""
    keep = re.compile(rf"libbitsandbytes_(cpu|cuda{cuda_major}\d*)\.so$")
    native = re.compile(r"libbitsandbytes_\w+\.(so|dll|dylib)$")
    slim = wheel.with_suffix(".slim")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as dst:
        dropped = {i.filename for i in src.infolist() if native.search(i.filename) and not keep.search(i.filename)}
        if not dropped:
            slim.unlink()
            return  # already slim
        for item in src.infolist():
            if item.filename in dropped:
                continue
            data = src.read(item.filename)
            if item.filename.endswith(".dist-info/RECORD"):
                data = "".join(line for line in data.decode().splitlines(keepends=True)
                               if line.split(",")[0] not in dropped).encode()
            dst.writestr(item, data)
    shutil.move(slim, wheel)
    print(f"bitsandbytes: kept the CUDA {cuda_major}.x and CPU libraries, removed {len(dropped)} others")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dest", default=str(ROOT / "bench" / "gpu" / "wheels"))
    parser.add_argument("--python-version", default="3.12", help="the GPU machine's Python (default 3.12)")
    parser.add_argument("--bnb-cuda", default="13", help="CUDA major version of the GPU machine's PyTorch "
                        "(bitsandbytes keeps that build only; default 13)")
    parser.add_argument("--max-mib", type=float, default=60.0, help="fail when the wheels take more (default 60)")
    args = parser.parse_args()
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    pinned = pins(ROOT / "constraints.txt")

    # Breadth-first over requirements: one `pip download` per layer.
    wanted: dict[str, set[str]] = {}  # name -> extras asked for
    queue = [(canonicalize_name(r.name), set(r.extras)) for r in map(Requirement, needed_requirements(gpu=True))]
    fetched: dict[str, Path] = {}
    skipped = set()
    while queue:
        layer = {}
        for name, extras in queue:
            if NEVER.match(name) or name in NOT_CARRIED:
                skipped.add(name)
                continue
            new_extras = extras - wanted.get(name, set())
            if name in wanted and not new_extras:
                continue
            wanted.setdefault(name, set()).update(extras)
            layer[name] = wanted[name]
        if not layer:
            break
        missing_pins = sorted(n for n in layer if n not in pinned)
        if missing_pins:
            sys.exit(f"error: no pinned version for {', '.join(missing_pins)} in constraints.txt; run `bash .ci/lock` "
                     "or add it to EXTRA_PINS in this script")
        specs = [f"{n}=={pinned[n]}" for n in layer if n not in fetched]
        if specs:
            download(specs, dest, args.python_version)
        for wheel in dest.glob("*.whl"):
            fetched.setdefault(canonicalize_name(parse_wheel_filename(wheel.name)[0]), wheel)
        queue = [(canonicalize_name(r.name), set(r.extras)) for name, extras in layer.items()
                 for r in wheel_requirements(fetched[name]) if applies(r, args.python_version, extras)]

    stale = [w for w in dest.glob("*.whl") if canonicalize_name(parse_wheel_filename(w.name)[0]) not in wanted
             or str(parse_wheel_filename(w.name)[1]) != pinned[canonicalize_name(parse_wheel_filename(w.name)[0])]]
    for wheel in stale:  # from an earlier run with other pins: two versions of one package stop the install
        wheel.unlink()
    for wheel in dest.glob("bitsandbytes-*.whl"):
        slim_bitsandbytes(wheel, args.bnb_cuda)
    wheels = sorted(dest.glob("*.whl"))
    total = sum(w.stat().st_size for w in wheels)
    for wheel in sorted(wheels, key=lambda w: -w.stat().st_size):
        print(f"{wheel.stat().st_size / 2**20:7.2f} MiB  {wheel.name}")
    print(f"{len(wheels)} wheels, {total / 2**20:.1f} MiB in {dest}")
    print(f"not carried (the GPU machine's own): {', '.join(sorted(skipped))}")
    if total > args.max_mib * 2**20:
        sys.exit(f"error: {total / 2**20:.1f} MiB is over --max-mib {args.max_mib:g}: the repository and the wheels "
                 "must fit in the 64 MiB that travels")


if __name__ == "__main__":
    main()
