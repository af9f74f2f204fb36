"""environment.yml says the same as pyproject.toml + constraints.txt."""

import re
import tomllib

import yaml

from tests.course_helpers import ROOT


def name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_matches_pyproject_and_constraints():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    direct = {name(r) for r in project["dependencies"]}
    for extra in project["optional-dependencies"].values():
        direct |= {name(r) for r in extra}
    pins = [
        line.strip()
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert all("==" in pin for pin in pins), "constraints.txt pins exact versions"
    pinned = {name(pin): pin for pin in pins}
    assert direct <= set(pinned), (
        f"unpinned direct dependencies: {sorted(direct - set(pinned))}"
    )

    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-e ." in pip
    assert sorted(p for p in pip if p != "-e .") == sorted(pins)
    python = next(
        d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python=")
    )
    assert project["requires-python"] == ">=" + python.split("=")[1]
