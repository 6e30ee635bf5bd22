"""Compile the voice worker's frame path (shared.native.MODULES) with mypyc, in place.

    python -m scripts.build_native           build if a source changed since the last build
    python -m scripts.build_native --clean   remove the compiled modules (run interpreted)

Each module's extension lands beside its source, where Python's import prefers it; the
build records a hash of the sources it compiled, so a stale extension is rebuilt by the
next bootstrap and caught by the test suite (tests/conftest.py) rather than run. Without a
C compiler and Python's headers, or with SWITCHBOARD_NATIVE=0, nothing is compiled and any
earlier build is removed: the same modules then run as Python. A build that fails where
they are present fails the bootstrap: our sources no longer compile, which CI must see."""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from shared.native import MODULES

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / ".build" / "native"
STAMP = BUILD / "sources.sha256"
LISTED = BUILD / "extensions.txt"  # what the last build put in the tree
GROUP = "switchboard_native"  # names the shared runtime library: ROOT/switchboard_native__mypyc.*


def sources_hash() -> str:
    digest = hashlib.sha256(f"{sys.version} {_mypy_version()}\n".encode())
    for path in MODULES:
        digest.update(path.encode() + b"\0" + (ROOT / path).read_bytes())
    return digest.hexdigest()


def built() -> list[Path]:
    """The extensions a build left in the tree (also of modules no longer in MODULES)."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    names = {f"{path.removesuffix('.py')}{suffix}" for path in MODULES}
    names.add(f"{GROUP}__mypyc{suffix}")
    if LISTED.exists():
        names.update(LISTED.read_text().split())
    return sorted(p for p in map(ROOT.joinpath, names) if p.exists())


def stale() -> bool:
    """True if compiled modules are in the tree but not built from the current sources."""
    if not built():
        return False
    return not STAMP.exists() or STAMP.read_text().strip() != sources_hash()


def clean() -> None:
    for path in built():
        path.unlink()
    shutil.rmtree(BUILD, ignore_errors=True)


def build() -> None:
    """Compile MODULES; raises CalledProcessError (with mypyc's and the compiler's output
    printed) if they do not compile."""
    clean()
    BUILD.mkdir(parents=True)
    setup = (
        "from setuptools import setup\n"
        "from mypyc.build import mypycify\n"
        f"setup(name={GROUP!r}, packages=[], py_modules=[], ext_modules=mypycify("
        f"{list(MODULES)!r}, target_dir={str(BUILD / 'c')!r}, group_name={GROUP!r}))\n"
    )
    argv = [sys.executable, "-c", setup, "build_ext", "--inplace"]
    argv += [f"--build-temp={BUILD / 'obj'}", f"--build-lib={BUILD / 'lib'}"]
    done = subprocess.run(argv, check=False, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        print(done.stdout[-20_000:], done.stderr[-20_000:], sep="\n", file=sys.stderr)
        clean()
        done.check_returncode()
    LISTED.write_text("".join(f"{p.relative_to(ROOT)}\n" for p in built()))
    STAMP.write_text(sources_hash() + "\n")


def _mypy_version() -> str:
    try:
        from mypy.version import __version__
    except ImportError:
        return "none"
    return __version__


def _can_compile() -> bool:
    """A C compiler, Python's headers (Debian's python3-dev) and mypyc: what a build needs."""
    compiler = os.environ.get("CC") or sysconfig.get_config_var("CC").split()[0]
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    return shutil.which(compiler) is not None and headers.exists() and _mypy_version() != "none"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clean", action="store_true", help="remove the compiled modules")
    args = parser.parse_args()
    if args.clean or os.environ.get("SWITCHBOARD_NATIVE", "1") == "0":
        clean()
        return 0
    if not _can_compile():
        print(
            "build_native: no C compiler, Python headers or mypyc here; "
            "the frame path runs as Python",
            file=sys.stderr,
        )
        clean()
        return 0
    if built() and not stale():
        return 0
    print(f"compiling the frame path with mypyc ({len(MODULES)} modules)", file=sys.stderr)
    build()
    return 0


if __name__ == "__main__":
    sys.exit(main())
