"""The documentation stays true: the generated reference is current, links and anchors resolve, and the
code's pointers into docs/ land on a heading that exists."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
CODE = [
    ROOT / "run.py",
    *(
        p
        for d in ("rarespur", "hydra_plugins", "benchmarks", "tests", "scripts")
        for p in sorted((ROOT / d).rglob("*.py"))
    ),
]
CONFIG = sorted((ROOT / "conf").rglob("*.yaml")) + sorted((ROOT / "sweeps").glob("*.yaml"))
REGENERATE = "run python scripts/reference_tables.py > docs/reference.md"


def prose(text: str) -> str:
    """Markdown without fenced code blocks and inline code, where brackets are not links."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)
    return re.sub(r"`[^`\n]*`", "", text)


def anchors(page: Path) -> set[str]:
    """The anchors GitHub gives the page's headings (lowercase, punctuation dropped, spaces to hyphens)."""
    seen: dict[str, int] = {}
    found = set()
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.MULTILINE | re.DOTALL)
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", text, flags=re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return found


def test_reference_is_generated_from_the_registries():
    spec = importlib.util.spec_from_file_location("reference_tables", ROOT / "scripts" / "reference_tables.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        script.main()
    committed = (DOCS / "reference.md").read_text()
    assert committed == printed.getvalue(), f"docs/reference.md is out of date: {REGENERATE}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path):
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", prose(page.read_text())):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no file {file.relative_to(ROOT) if file.is_relative_to(ROOT) else file}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading with anchor #{anchor} in {file.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)} has broken links:\n" + "\n".join(broken)


def test_code_and_config_point_at_existing_docs():
    broken = []
    for file in CODE + CONFIG:
        for page, anchor in re.findall(r"docs/([a-z_]+\.md)(?:#([a-z0-9-]+))?", file.read_text()):
            if not (DOCS / page).is_file():
                broken.append(f"{file.relative_to(ROOT)}: docs/{page} does not exist")
            elif anchor and anchor not in anchors(DOCS / page):
                broken.append(f"{file.relative_to(ROOT)}: docs/{page} has no heading #{anchor}")
    assert not broken, "\n".join(broken)


def test_nothing_points_at_documents_outside_the_repository():
    """The science lives in docs/science.md; the docs show the user's paths, not the developers' checkout."""
    offenders = []
    for file in CODE + CONFIG:
        if file == Path(__file__).resolve():
            continue
        for number, line in enumerate(file.read_text().splitlines(), 1):
            if re.search(r"\bSPEC(\.md| [0-9]| section)", line):
                offenders.append(f"{file.relative_to(ROOT)}:{number}: {line.strip()}")
    for page in PAGES:
        if "../shared" in page.read_text():
            offenders.append(f"{page.relative_to(ROOT)}: mentions ../shared (use data.root=/path/to/data)")
    assert not offenders, "\n".join(offenders)


def test_help_names_every_option():
    """`python run.py --help`'s footer names every model, experiment, debias method, influence preset and cluster
    preset in conf/."""
    footer = yaml.safe_load((ROOT / "conf" / "hydra" / "help" / "rarespur.yaml").read_text())["footer"]
    missing = [
        f"{group}={path.stem}"
        for group in "dataset pattern model optim regularizer experiment debias influence cluster".split()
        for path in sorted((ROOT / "conf" / group).glob("*.yaml"))
        if not re.search(rf"(?<![\w.]){re.escape(path.stem)}(?![\w])", footer)
    ]
    assert not missing, f"conf/hydra/help/rarespur.yaml's footer does not name: {', '.join(missing)}"
