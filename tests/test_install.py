"""The install's pinned versions: the pip lock, the Makefile's torch pin, the npm test fixtures."""
import json
import re
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # the test extra installs tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "lock.txt"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][0-9A-Za-z.!]*)$")  # no local tag (+cpu), no URL


def _lock() -> dict[str, Version]:
    pins = {}
    for number, line in enumerate(LOCK.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        match = PIN.match(line)
        assert match, f"{LOCK}:{number}: {line!r} is not an exact 'name==version' pin"
        name = canonicalize_name(match.group(1))
        assert name not in pins, f"{LOCK}:{number}: {name} is pinned twice"
        pins[name] = Version(match.group(2))
    return pins


def test_lock_pins_every_dependency_within_pyproject_ranges():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = _lock()
    assert canonicalize_name(project["name"]) not in pins  # the project itself is installed editable
    wanted = project["dependencies"] + project["optional-dependencies"]["test"]
    for text in wanted:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{LOCK} does not pin {requirement.name} (pyproject.toml: {text!r})"
        assert requirement.specifier.contains(pins[name], prereleases=True), \
            f"{LOCK} pins {name}=={pins[name]}, outside pyproject.toml's {text!r}"


def test_makefile_torch_pin_is_the_locks():
    makefile = (ROOT / "Makefile").read_text()
    match = re.search(r"^TORCH_PIN \?= torch==(\S+)$", makefile, re.MULTILINE)
    assert match, "Makefile: no 'TORCH_PIN ?= torch==VERSION' line"
    assert Version(match.group(1)) == _lock()["torch"]
    assert re.search(r"^LOCK \?= \$\(LOCK_FILE\)$", makefile, re.MULTILINE)
    assert re.search(r"^LOCK_FILE := requirements/lock.txt$", makefile, re.MULTILINE)


def test_npm_fixtures_are_pinned_exactly_and_locked():
    folder = ROOT / "tests" / "fixtures" / "npm"
    wanted = json.loads((folder / "package.json").read_text())["dependencies"]
    # llama-tokenizer-js carries LLaMA-2's vocabulary and merges; @lenml/llama2-tokenizer-vocab-llama2
    # (also named in the issue) holds another vocabulary (" Hello" = 22557), so it is not used.
    assert set(wanted) == {"llama-tokenizer-js"}
    locked = json.loads((folder / "package-lock.json").read_text())["packages"]
    for name, version in wanted.items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"package.json: {name} {version!r} is not an exact version"
        assert locked[f"node_modules/{name}"]["version"] == version, f"package-lock.json disagrees on {name}"
