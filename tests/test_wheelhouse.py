"""The wheelhouse's bookkeeping, without pip: its key, what counts as a complete one, what its rbee wheel
is built from, and the pins it takes from this environment."""

from __future__ import annotations

import json

import pytest

from rbee import __version__
from rbee.errors import ErrorCode, RbeeError
from rbee.queen.installer import check_platform, index_command
from rbee.queen.nodes import Node
from rbee.queen.remote_hive import RemoteFacts
from rbee.queen.wheelhouse import Platform, WheelhouseBuilder, _read_manifest, clean_copy, constraints


def test_the_key_names_version_python_and_machine(tmp_path):
    builder = WheelhouseBuilder(tmp_path)
    builder.platform = Platform("3.11", "x86_64")
    assert builder.key == f"rbee-{__version__}-py311-x86_64"


def test_a_wheelhouse_missing_a_wheel_is_built_again(tmp_path):
    (tmp_path / "a-1-py3-none-any.whl").write_bytes(b"zip")
    (tmp_path / "manifest.json").write_text(json.dumps({"wheels": ["a-1-py3-none-any.whl", "b-2-py3-none-any.whl"]}))
    assert _read_manifest(tmp_path) is None
    (tmp_path / "b-2-py3-none-any.whl").write_bytes(b"zip")
    assert _read_manifest(tmp_path) is not None


def test_the_rbee_wheel_is_built_from_a_clean_copy(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "rbee"\n')
    (tmp_path / "rbee" / "__pycache__").mkdir(parents=True)
    (tmp_path / "rbee" / "__init__.py").write_text("")
    (tmp_path / "build" / "lib" / "rbee").mkdir(parents=True)
    (tmp_path / "build" / "lib" / "rbee" / "deleted_long_ago.py").write_text("")
    with clean_copy(tmp_path) as copy:
        assert sorted(p.name for p in copy.iterdir()) == ["pyproject.toml", "rbee"]
        assert [p.name for p in (copy / "rbee").iterdir()] == ["__init__.py"]


def test_dependencies_are_pinned_to_what_runs_here_but_rbee():
    pins = constraints().splitlines()
    assert any(p.lower().startswith("aiohttp==") for p in pins)
    assert not any(p.lower().startswith("rbee==") for p in pins)


def test_a_machine_that_cannot_take_the_wheels_is_told_the_index_command():
    node = Node(name="arm1", host="10.0.0.5", user="pi", remote_dir="rbee", added_at=0)
    facts = RemoteFacts.parse("python=/usr/bin/python3\npython_version=3.12.1\nmachine=aarch64\n")
    with pytest.raises(RbeeError) as refused:
        check_platform(node, facts, Platform("3.11", "x86_64"))
    assert refused.value.code == ErrorCode.REMOTE_UNSUPPORTED and refused.value.status == 424
    assert "Python 3.12 on aarch64" in refused.value.message and index_command(node) in refused.value.message
    assert index_command(node) == f"ssh pi@10.0.0.5 'python3 -m venv rbee/venv && rbee/venv/bin/pip install rbee=={__version__}'"
    with pytest.raises(RbeeError) as no_python:
        check_platform(node, RemoteFacts.parse(""), Platform("3.11", "x86_64"))
    assert "no python3" in no_python.value.message
