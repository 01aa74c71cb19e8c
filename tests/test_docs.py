"""The README and docs/ link only to files and sections that exist, and name only modules that exist."""
import re
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*$")
MODULE = re.compile(r"python -m ((?:train|bench)(?:\.\w+)*)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@lru_cache(maxsize=None)  # a page is linked many times
def anchors(page: Path) -> frozenset[str]:
    found, fenced = set(), False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (match := HEADING.match(line)):
            found.add(slug(match.group(1)))
    return frozenset(found)


def test_slug_matches_github():
    assert slug("Trust: where the network looked, and what it refuses") == \
        "trust-where-the-network-looked-and-what-it-refuses"
    assert slug("Other cameras and clinics (simulated)") == "other-cameras-and-clinics-simulated"
    assert slug("The `--view-turns` option") == "the---view-turns-option"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_links_resolve(page):
    broken = []
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not followed
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no such section")
    assert not broken, f"{page.name}: " + "; ".join(broken)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_named_modules_exist(page):
    missing = []
    for module in set(MODULE.findall(page.read_text(encoding="utf-8"))):
        path = ROOT.joinpath(*module.split("."))
        if not (path.with_suffix(".py").is_file() or (path / "__main__.py").is_file()):
            missing.append(module)
    assert not missing, f"{page.name} names modules that do not exist: {sorted(missing)}"


def commands(text: str):
    """(module, flags) for every `python -m train...` or `python -m bench` command in a page: from the module name to
    the end of its line (backslash continuations joined), its inline code span, a shell comment or the next
    command."""
    text = re.sub(r"\\\n\s*", " ", text)
    for match in MODULE.finditer(text):
        rest = re.split(r"`|\n|python -m |&&|\||\s#\s", text[match.end():], maxsplit=1)[0]
        yield match.group(1), set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", rest))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_named_flags_exist(page, capsys):
    """Every flag given to a `python -m` command in the docs is one that command's --help lists."""
    import importlib

    helps, unknown = {}, []
    for module, flags in commands(page.read_text(encoding="utf-8")):
        if module not in helps:
            entry = importlib.import_module({"train": "train.train", "bench": "bench.__main__"}.get(module, module))
            with pytest.raises(SystemExit):
                entry.main(["--help"])
            helps[module] = capsys.readouterr().out
        unknown += [f"python -m {module} {flag}" for flag in sorted(flags)
                    if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", helps[module])]
    assert not unknown, f"{page.name} gives flags their command does not have: {sorted(set(unknown))}"
