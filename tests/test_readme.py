"""The README stays true to the tree: its code map names every module and folder of the package (and
nothing that is gone), and its contents list names every section in order."""

import os
import re

from tests.conftest import REPO_ROOT

ROOT = REPO_ROOT
README = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()


def _code_map() -> tuple[list[str], str]:
    """(the top-level entries of the map, the map's text)."""
    block = README.split("## Layout of the code", 1)[1].split("```", 2)[1]
    lines = block.splitlines()
    start = lines.index("instsynth/")
    names, body = [], []
    for ln in lines[start + 1:]:
        if ln and not ln.startswith(" "):
            break
        body.append(ln)
        m = re.match(r"^  (\S+)", ln)
        if m:
            names.append(m.group(1))
    return names, "\n".join(body)


def test_code_map_matches_the_package():
    """Every top-level module and folder is in the map and nothing gone is; every module of a folder
    is named in it too (a newcomer finds a job by its folder, then its file)."""
    names, text = _code_map()
    pkg = os.path.join(ROOT, "instsynth")
    for n in names:
        assert os.path.exists(os.path.join(pkg, n.rstrip("/"))), f"README's code map names instsynth/{n}: not in the tree"
    top = {n.split("/")[0] + ("/" if "/" in n else "") for n in names}
    for entry in sorted(os.listdir(pkg)):
        if entry in ("__init__.py", "__pycache__") or entry.startswith("."):
            continue
        name = entry + "/" if os.path.isdir(os.path.join(pkg, entry)) else entry
        assert name in top, f"instsynth/{name} is missing from the README's code map"
    for folder, dirs, files in os.walk(pkg):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for f in files:
            if f.endswith(".py") and f != "__init__.py":
                rel = os.path.relpath(os.path.join(folder, f), pkg)
                assert re.search(rf"(?<![\w.]){re.escape(f[:-3])}(\.py)?(?!\w)", text), \
                    f"instsynth/{rel} is not named in the README's code map"
    mentioned = set(re.findall(r"(?<![\w/.])(\w+)\.py\b", text))
    present = {f[:-3] for _, _, fs in os.walk(pkg) for f in fs if f.endswith(".py")}
    assert not mentioned - present, f"the code map names modules that are gone: {sorted(mentioned - present)}"


def test_top_of_the_package_stays_small():
    """At most eight modules at the top of instsynth/ (issue 31): the rest lives in folders."""
    pkg = os.path.join(ROOT, "instsynth")
    top = [f for f in os.listdir(pkg) if f.endswith(".py") and f != "__init__.py"]
    assert len(top) <= 8, sorted(top)


def test_contents_list_names_every_section_in_order():
    line = next(ln for ln in README.splitlines() if ln.startswith("**Contents**:"))
    listed = re.findall(r"\]\(#([^)]+)\)", line)
    sections = re.findall(r"^## (.+)$", README, re.M)

    def anchor(h: str) -> str:
        return re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")

    assert listed == [anchor(h) for h in sections]
