"""Install PyTorch's CPU build into the running interpreter's environment, never the CUDA one.

The tests and the benchmark compare against ``torch.optim.RMSprop`` on the CPU.
On Linux x86_64, PyPI's ``torch`` wheel is the CUDA build: it pulls several GB
of ``nvidia-*``, ``cuda-*`` and ``triton`` wheels that no test uses. This
script tries, in order:

1. torch already installed at the requested version: nothing to do;
2. what pip would pick from its configured sources (PyPI, ``--find-links``,
   extra indexes): used if that build needs no CUDA packages here (a local
   ``+cpu`` wheel, or PyPI on macOS and Windows, where torch is CPU-only);
3. PyTorch's CPU index (``--index``) for torch itself, its ordinary
   dependencies from the configured sources.

If none works, torch is left out: the torch parity tests then skip, saying so.
With ``--required`` (``make torch``, ``make bench``, and ``make test`` when
``CI`` is set) that is an error instead.

Usage: python tools/install_torch.py [--required] [--index URL] [-c CONSTRAINTS] [SPEC]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from importlib import metadata

DEFAULT_SPEC = "torch==2.13.0"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
CUDA_PREFIXES = ("nvidia-", "cuda-", "triton")


def pip(*args: str, capture: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", *args], text=True, capture_output=capture, check=False
    )


def installed_version() -> str | None:
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return None


def satisfies(version: str, spec: str) -> bool:
    """Whether ``version`` meets ``spec`` (``torch==2.13.0`` accepts ``2.13.0+cpu``)."""
    from pip._vendor.packaging.requirements import Requirement

    return Requirement(spec).specifier.contains(version, prereleases=True)


def needs_cuda(requires_dist: list[str]) -> list[str]:
    """The CUDA packages among a torch build's dependencies, on this platform."""
    from pip._vendor.packaging.requirements import Requirement

    found = []
    for line in requires_dist:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        if req.name.lower().startswith(CUDA_PREFIXES):
            found.append(req.name)
    return found


def default_choice(spec: str, constraints: list[str]) -> tuple[str, list[str]] | None:
    """The torch build pip would install from its configured sources, and the CUDA
    packages it would bring; None if pip finds none. Reads metadata only."""
    result = pip(
        "install", "--dry-run", "--ignore-installed", "--no-deps", "--quiet",
        "--report", "-", *constraints, spec,
        capture=True,
    )  # fmt: skip
    if result.returncode != 0:
        return None
    report = json.loads(result.stdout)
    for item in report.get("install", []):
        meta = item["metadata"]
        if meta["name"].lower() == "torch":
            return meta["version"], needs_cuda(meta.get("requires_dist", []))
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", nargs="?", default=DEFAULT_SPEC)
    parser.add_argument("--index", default=CPU_INDEX, help="PyTorch's CPU wheel index")
    parser.add_argument("-c", "--constraint", action="append", default=[])
    parser.add_argument("--required", action="store_true", help="fail if torch cannot be had")
    args = parser.parse_args()
    constraints = [x for c in args.constraint for x in ("-c", c)]

    have = installed_version()
    if have is not None and satisfies(have, args.spec):
        print(f"install_torch: torch {have} is already installed.")
        return 0

    choice = default_choice(args.spec, constraints)
    if choice is not None and not choice[1]:
        print(f"install_torch: installing torch {choice[0]}, a CPU build, from pip's sources.")
        if pip("install", "--quiet", *constraints, f"torch=={choice[0]}").returncode == 0:
            return 0
    elif choice is not None:
        print(
            f"install_torch: pip's sources offer torch {choice[0]}, the CUDA build "
            f"(with {', '.join(sorted(choice[1])[:3])}, ...): not installing that."
        )

    print(f"install_torch: trying PyTorch's CPU index, {args.index}")
    got = pip(
        "install", "--quiet", "--no-deps", "--timeout", "20", "--retries", "1",
        "--index-url", args.index, args.spec,
    )  # fmt: skip
    # Then torch's own dependencies (sympy, networkx, ...) from the usual sources.
    if got.returncode == 0 and pip("install", "--quiet", *constraints, args.spec).returncode == 0:
        print(f"install_torch: installed torch {installed_version()} from the CPU index.")
        return 0

    message = (
        f"install_torch: no CPU build of {args.spec} could be installed (no local CPU "
        f"wheel, and {args.index} is not reachable). The CUDA build was not installed. "
    )
    if args.required:
        print(message + "Put a CPU wheel in pip's --find-links, or pass TORCH_INDEX=<url>.")
        return 1
    print(message + "The torch parity tests will be skipped; `make torch` retries.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
