"""The installed ifval-pydvl package in ifval's catalog, in `ifval plugins` and when disabled."""

from __future__ import annotations

import subprocess
import sys

from ifval.plugins import Catalog, default_catalog, get_plugin_manager

ESTIMATORS = {"pydvl_direct", "pydvl_cg", "pydvl_arnoldi", "pydvl_ekfac"}


def test_catalog_lists_estimators():
    entries = {entry.plugin.name: (kind, entry) for kind, entry in default_catalog().entries()}

    for name in sorted(ESTIMATORS):
        assert name in entries, f"{name} missing from the catalog"
        kind, entry = entries[name]
        assert kind == "estimator"
        assert entry.distribution == "ifval-pydvl"
        assert entry.module == "ifval_pydvl.estimators"
        assert entry.source == "pydvl"


def test_plugins_command_lists_estimators():
    result = subprocess.run([sys.executable, "-m", "ifval", "plugins"], capture_output=True,
                            text=True, timeout=120, check=False)

    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if "ifval-pydvl" in line]
    listed = {name for name in ESTIMATORS if any(f" {name} " in row for row in rows)}
    assert listed == ESTIMATORS, result.stdout
    assert all("estimator" in row for row in rows)


def test_listing_imports_neither_torch_nor_pydvl():
    code = ("import sys, ifval.plugins; ifval.plugins.default_catalog(); "
            "print(sorted(m for m in ('torch', 'pydvl') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, check=False)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_disabled_entry_point_removes_estimators():
    catalog = Catalog(get_plugin_manager(disabled=["pydvl"]))

    names = set(catalog.registries["estimator"].names())
    assert not names & ESTIMATORS
    assert "exact" in names
