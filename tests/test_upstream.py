"""The upstream workarounds in megaindex/upstream.py are written for the pinned versions."""

from __future__ import annotations

import importlib.metadata

from megaindex.upstream import PINNED


def test_installed_versions_are_the_pinned_ones():
    # A new megatron-core must be checked against every entry of megaindex/upstream.py first.
    for package, version in PINNED.items():
        assert importlib.metadata.version(package) == version, f"{package}: re-check megaindex/upstream.py, then move PINNED"


def test_setup_py_pins_the_same_versions():
    from pathlib import Path

    setup = (Path(__file__).resolve().parents[1] / "setup.py").read_text()
    for package, version in PINNED.items():
        assert f'"{package}=={version}"' in setup
