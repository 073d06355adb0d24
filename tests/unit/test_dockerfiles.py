"""Static checks of the two Dockerfiles (no Docker engine here): pinned bases, a numeric non-root
user, the CLIs as exec-form entrypoints, no remote ADD, pip without a cache, COPY sources that
exist and survive .dockerignore, and the trainer's torch pin consistent with pyproject.toml.

The parser handles what these files use: comments, line continuations, ARG defaults before and
after FROM, multi-stage builds. It is deliberately small; hadolint is the tool for more.
"""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, ...
    args: str  # the rest of the logical line, continuations joined
    line: int  # where it starts (1-based)


def parse(path: Path) -> list[Instruction]:
    """The logical instructions of a Dockerfile (comments dropped, continuations joined)."""
    out: list[Instruction] = []
    buf, start = "", 0
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if not buf:
            start = n
        if line.endswith("\\"):
            buf += line[:-1].rstrip() + " "
            continue
        buf += line
        keyword, _, args = buf.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start))
        buf = ""
    assert not buf, f"{path}: unterminated line continuation"
    return out


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    """Instructions grouped by build stage (each group starts with its FROM)."""
    groups: list[list[Instruction]] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            groups.append([])
        if groups:
            groups[-1].append(ins)
    return groups


def expand(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), text)


def arg_defaults(instructions: list[Instruction]) -> dict[str, str]:
    out = {}
    for ins in instructions:
        if ins.keyword == "ARG" and "=" in ins.args:
            name, _, value = ins.args.partition("=")
            out[name.strip()] = value.strip().strip('"')
    return out


def base_images(instructions: list[Instruction]) -> list[tuple[str, str | None]]:
    """(image, stage name) of every FROM, with ARG defaults filled in."""
    args = arg_defaults(instructions)
    out = []
    for ins in instructions:
        if ins.keyword != "FROM":
            continue
        words = [w for w in ins.args.split() if not w.startswith("--platform")]
        image = expand(words[0], args)
        name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
        out.append((image, name))
    return out


@dataclass(frozen=True)
class Image:
    dockerfile: Path
    cli: str
    base: re.Pattern[str]


IMAGES = [
    Image(REPO / "operator/Dockerfile", "vlm-operator", re.compile(r"^python:3\.11\.\d+-slim\b")),
    Image(
        REPO / "trainer_image/Dockerfile",
        "vlm-trainer",
        re.compile(r"^nvidia/cuda:\d+\.\d+\.\d+-(cudnn-)?runtime-ubuntu\d+\.\d+$"),
    ),
]
IDS = [i.cli for i in IMAGES]


@pytest.mark.parametrize("image", IMAGES, ids=IDS)
def test_bases_are_pinned(image: Image) -> None:
    instructions = parse(image.dockerfile)
    seen_stages: set[str] = set()
    bases = base_images(instructions)
    assert bases, "no FROM"
    for ref, name in bases:
        if ref in seen_stages:
            continue  # FROM an earlier stage
        assert "$" not in ref, f"unresolved variable in FROM {ref}"
        repo, _, tag = ref.partition("@")[0].rpartition(":")
        assert repo and tag, f"FROM {ref} has no tag"
        assert tag != "latest", f"FROM {ref} uses latest"
        # A version tag: starts with a full x.y.z version, not a moving alias such as 3.11-slim.
        assert re.match(r"^\d+\.\d+\.\d+", tag), f"FROM {ref} is not pinned to a version"
        assert image.base.match(ref), f"FROM {ref}: expected {image.base.pattern}"
        if name:
            seen_stages.add(name)
    # The final image is built on the same pinned base as the stage that made its venv.
    assert len({ref for ref, _ in bases}) == 1


@pytest.mark.parametrize("image", IMAGES, ids=IDS)
def test_runs_as_a_numeric_non_root_user(image: Image) -> None:
    final = stages(parse(image.dockerfile))[-1]
    users = [i.args for i in final if i.keyword == "USER"]
    assert users, "the final stage sets no USER (it would run as root)"
    user = users[-1]
    uid, _, gid = user.partition(":")
    # Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
    assert uid.isdigit() and int(uid) != 0, f"USER {user}"
    assert not gid or (gid.isdigit() and int(gid) != 0), f"USER {user}"
    # The Helm chart's default securityContext uses the same ids.
    if image.cli == "vlm-operator":
        import yaml

        values = yaml.safe_load((REPO / "charts/vlm-trainer-operator/values.yaml").read_text())
        assert int(uid) == values["securityContext"]["runAsUser"]
        assert int(gid) == values["securityContext"]["runAsGroup"]


@pytest.mark.parametrize("image", IMAGES, ids=IDS)
def test_entrypoint_is_the_cli_in_exec_form(image: Image) -> None:
    final = stages(parse(image.dockerfile))[-1]
    entrypoints = [i.args for i in final if i.keyword == "ENTRYPOINT"]
    assert entrypoints, "no ENTRYPOINT"
    argv = json.loads(entrypoints[-1])  # exec form: a JSON array, no shell in between
    assert argv == [image.cli]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert image.cli in scripts  # a console script the install puts on PATH


@pytest.mark.parametrize("image", IMAGES, ids=IDS)
def test_no_remote_add_and_pip_without_cache(image: Image) -> None:
    for ins in parse(image.dockerfile):
        if ins.keyword == "ADD":
            assert not re.search(r"\b(https?|git)://|git@", ins.args), f"line {ins.line}: {ins}"
        if ins.keyword == "RUN":
            for cmd in re.split(r"&&|;|\|\|", ins.args):
                if re.search(r"\bpip3?\s+install\b", cmd):
                    assert "--no-cache-dir" in cmd, f"line {ins.line}: {cmd.strip()}"
                if re.search(r"\bapt-get\s+install\b", cmd):
                    assert "--no-install-recommends" in cmd, f"line {ins.line}: {cmd.strip()}"
                assert not re.search(r"\b(curl|wget)\b.*\|\s*(ba)?sh", cmd), f"line {ins.line}"
            if "apt-get update" in ins.args:
                assert "rm -rf /var/lib/apt/lists/*" in ins.args, f"line {ins.line}"


def dockerignore_allows(path: str) -> bool:
    """Whether .dockerignore lets ``path`` (relative, with / separators) into the context."""
    allowed = True
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        rule = raw.strip()
        if not rule or rule.startswith("#"):
            continue
        negate = rule.startswith("!")
        pattern = rule.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if pattern == "**" or any(
            fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p, pattern.replace("**/", ""))
            for p in prefixes
        ):
            allowed = negate
    return allowed


@pytest.mark.parametrize("image", IMAGES, ids=IDS)
def test_copy_sources_exist_in_the_build_context(image: Image) -> None:
    """Built from the repository root: every COPY source exists and .dockerignore keeps it."""
    copies = [i for i in parse(image.dockerfile) if i.keyword == "COPY"]
    assert copies
    for ins in copies:
        words = [w for w in ins.args.split() if not w.startswith("--")]
        if any(w.startswith("--from") for w in ins.args.split()):
            continue
        for src in words[:-1]:
            assert (REPO / src).exists(), f"line {ins.line}: {src} does not exist"
            assert dockerignore_allows(src.rstrip("/")), (
                f"line {ins.line}: .dockerignore drops {src}"
            )
    assert not dockerignore_allows(".venv")
    assert not dockerignore_allows(".git")
    assert not dockerignore_allows(".devcluster/runner")


def test_trainer_pins_a_torch_the_project_accepts() -> None:
    instructions = parse(REPO / "trainer_image/Dockerfile")
    pinned = arg_defaults(instructions)["TORCH_VERSION"]
    installs = [i.args for i in instructions if i.keyword == "RUN" and "pip" in i.args]
    assert any('"torch==${TORCH_VERSION}"' in cmd for cmd in installs), "torch is not pinned"
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    (torch,) = [
        Requirement(r)
        for r in project["optional-dependencies"]["trainer"]
        if Requirement(r).name == "torch"
    ]
    assert Version(pinned) in torch.specifier, f"torch=={pinned} is outside {torch.specifier}"


def test_parser_joins_continuations_and_skips_comments(tmp_path: Path) -> None:
    f = tmp_path / "Dockerfile"
    f.write_text(
        "# top\nARG BASE=python:3.11.15-slim\nFROM ${BASE} AS b\nRUN a \\\n  # inside\n"
        "  && pip install --no-cache-dir x\nUSER 1000\n"
    )
    ins = parse(f)
    assert [i.keyword for i in ins] == ["ARG", "FROM", "RUN", "USER"]
    assert ins[2].args == "a && pip install --no-cache-dir x"
    assert ins[2].line == 4
    assert base_images(ins) == [("python:3.11.15-slim", "b")]
