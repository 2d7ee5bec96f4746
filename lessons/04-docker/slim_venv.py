"""A build step: make an installed virtual environment smaller without changing what it runs.

    python slim_venv.py /opt/venv

Each step prints what it saved (the lesson's notebook shows the numbers):
1. delete what only building or testing a package needs: the libraries' own test suites, C and
   Cython sources and headers, static libraries, type stubs;
2. strip the symbol tables from compiled extension modules (`strip`, from binutils, which only the
   build stage installs). Not the libraries in `*.libs/` folders: auditwheel rewrote those with
   patchelf, and numpy no longer imports after strip ("ELF load command address/offset not
   page-aligned");
3. hard-link files that are byte-for-byte identical (numpy and scipy bundle the same libgfortran).
"""

import filecmp
import os
import shutil
import subprocess
import sys
from pathlib import Path

BUILD_ONLY = {".pyx", ".pxd", ".pxi", ".c", ".cpp", ".h", ".hpp", ".tp", ".a", ".pyi"}


def size_mb(root: Path) -> float:
    """Bytes on disk, each hard-linked file once (what an image layer stores)."""
    seen, total = set(), 0
    for path in root.rglob("*"):
        info = path.lstat()
        if path.is_file() and not path.is_symlink() and info.st_ino not in seen:
            seen.add(info.st_ino)
            total += info.st_size
    return total / 1e6


def delete_build_and_test_files(root: Path) -> None:
    for tests in sorted(root.rglob("tests")):
        if tests.is_dir():  # False once a parent "tests" is gone
            shutil.rmtree(tests)
    for path in root.rglob("*"):
        if path.suffix in BUILD_ONLY and path.is_file():
            path.unlink()


def strip_extension_modules(root: Path) -> None:
    modules = [str(p) for p in root.rglob("*.so") if not p.parent.name.endswith(".libs")]
    if modules:
        subprocess.run(["strip", "--strip-unneeded", *modules], check=True)


def link_identical_files(root: Path) -> None:
    first_of_size: dict[int, list[Path]] = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.is_symlink() or path.stat().st_size < 4096:
            continue
        same_size = first_of_size.setdefault(path.stat().st_size, [])
        original = next((p for p in same_size if filecmp.cmp(p, path, shallow=False)), None)
        if original is None:
            same_size.append(path)
        elif not path.samefile(original):
            path.unlink()
            os.link(original, path)


def main(root: Path) -> None:
    before = size_mb(root)
    print(f"slim_venv: {root} is {before:.1f} MB")
    for step in (delete_build_and_test_files, strip_extension_modules, link_identical_files):
        step(root)
        after = size_mb(root)
        print(f"slim_venv: {step.__name__:<30} -{before - after:5.1f} MB  -> {after:.1f} MB")
        before = after


if __name__ == "__main__":
    main(Path(sys.argv[1]))
