"""What an installer and a package index see: pins that fit pyproject, SPDX license metadata."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from bridge import __version__
from bridge.httpclient import USER_AGENT

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
HOME = "https://github.com/jobs-bridge/jobs-bridge"


def _declared() -> list[Requirement]:
    extras = PROJECT.get("optional-dependencies", {}).values()
    return [Requirement(r) for r in PROJECT["dependencies"] + [r for e in extras for r in e]]


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements" / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith((" ", "#")):
            requirement = Requirement(line)
            [spec] = requirement.specifier
            assert spec.operator == "==", f"{line!r} is not an exact pin"
            pins[canonicalize_name(requirement.name)] = spec.version
    return pins


def test_constraints_pin_every_dependency_within_its_bounds():
    """A dependency added or a bound raised in pyproject.toml without `make lock` fails here."""
    pins = _pins()
    for requirement in _declared():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not pinned: run `make lock`"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{name}=={pins[name]} is outside {requirement.specifier}: run `make lock`"
        )
        for extra in requirement.extras:  # redis[hiredis]: hiredis must be pinned too
            for dependency in map(Requirement, metadata.requires(requirement.name) or []):
                marker = dependency.marker
                if marker and marker.evaluate({"extra": extra}) and not marker.evaluate():
                    assert canonicalize_name(dependency.name) in pins, f"{dependency} unpinned"


def test_metadata_has_the_spdx_license_the_version_and_the_home():
    meta = metadata.metadata("jobs-bridge")
    assert meta["License-Expression"] == "Apache-2.0"
    assert "License" not in meta  # the deprecated free-text field
    assert meta.get_all("License-File") == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text().split()[:3] == ["Apache", "License", "Version"]
    assert meta["Version"] == __version__
    assert f"Homepage, {HOME}" in meta.get_all("Project-URL")
    assert USER_AGENT == f"jobs-bridge/{__version__} (+{HOME})"
