"""The README stays true to the tree: its code map names every module and folder of the package (and
nothing that is gone), and its contents list names every section in order."""

import os
import re

from tests.conftest import REPO_ROOT

ROOT = REPO_ROOT
README = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()


def _code_map() -> list[str]:
    block = README.split("## Layout of the code", 1)[1].split("```", 2)[1]
    lines = block.splitlines()
    start = lines.index("instsynth/")
    names = []
    for ln in lines[start + 1:]:
        m = re.match(r"^  (\S+)", ln)
        if m:
            names.append(m.group(1))
        elif ln and not ln.startswith(" "):
            break
    return names


def test_code_map_matches_the_package():
    names = _code_map()
    pkg = os.path.join(ROOT, "instsynth")
    for n in names:
        assert os.path.exists(os.path.join(pkg, n.rstrip("/"))), f"README's code map names instsynth/{n}: not in the tree"
    top = {n.split("/")[0] + ("/" if "/" in n else "") for n in names}
    for entry in sorted(os.listdir(pkg)):
        if entry in ("__init__.py", "__pycache__", "static") or entry.startswith("."):
            continue
        name = entry + "/" if os.path.isdir(os.path.join(pkg, entry)) else entry
        assert name in top, f"instsynth/{name} is missing from the README's code map"


def test_contents_list_names_every_section_in_order():
    line = next(ln for ln in README.splitlines() if ln.startswith("**Contents**:"))
    listed = re.findall(r"\]\(#([^)]+)\)", line)
    sections = re.findall(r"^## (.+)$", README, re.M)

    def anchor(h: str) -> str:
        return re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")

    assert listed == [anchor(h) for h in sections]
