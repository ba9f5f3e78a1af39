"""Every relative link and image in the repository's Markdown resolves inside it, and the README stays short."""

import os
import re
import unicodedata
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[3]
# Not the project's own pages: hidden folders (the venv, the pinned uv, run state, tool caches) other than these,
# the local MLflow store and generated load reports.
HIDDEN_KEPT = {".ci", ".github"}
SKIPPED = {"mlruns", "node_modules"}
SKIPPED_PATHS = {Path("load/reports")}
SEED_URL = "https://github.com/giulianoLacerda/api-iris-classifier"
README_MAX_LINES = 250

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
# [text](target "title"), ![alt](target), with <target> allowed; text may hold one level of brackets.
INLINE = re.compile(
    r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]"
    r"\(\s*(<[^>]*>|[^\s()]*(?:\([^\s()]*\)[^\s()]*)*)(?:\s+[\"'(].*?)?\s*\)"
)
REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)", re.M)
HTML = re.compile(r"<(?:a|img)\b[^>]*?\b(?:href|src)\s*=\s*[\"']([^\"']*)[\"']", re.I)
HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.*?)(?:\s+#+)?\s*$")
HTML_ANCHOR = re.compile(r"<a\b[^>]*?\b(?:id|name)\s*=\s*[\"']([^\"']+)[\"']", re.I)
SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)
# A path that starts by climbing out of the file's folder, in a link or in prose: `../shared/x.py`.
CLIMB = re.compile(r"(?<![\w./])((?:\.\./)+[\w.-][\w./-]*)")


def project_folder(relative: Path) -> bool:
    """Say whether a folder, relative to the repository, may hold the project's own pages."""
    name = relative.name
    hidden = name.startswith(".") and name not in HIDDEN_KEPT
    return not hidden and name not in SKIPPED and relative not in SKIPPED_PATHS


def markdown_files() -> list[Path]:
    """Return every Markdown file of the project, outside installed packages and generated reports."""
    found: list[Path] = []
    for folder, subfolders, files in os.walk(ROOT):
        here = Path(folder).relative_to(ROOT)
        subfolders[:] = sorted(name for name in subfolders if project_folder(here / name))
        found.extend(Path(folder) / name for name in sorted(files) if name.endswith(".md"))
    return found


def unfenced(text: str) -> list[str | None]:
    """Return the lines of ``text``, with None for each line of a fenced code block (fences included)."""
    lines: list[str | None] = []
    fence = ""
    for line in text.splitlines():
        match = FENCE.match(line)
        if fence:
            if match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence):
                fence = ""
            lines.append(None)
        elif match:
            fence = match.group(1)
            lines.append(None)
        else:
            lines.append(line)
    return lines


def prose_lines(text: str) -> list[str]:
    """Return the lines outside fenced code blocks, with inline code spans blanked out."""
    return [
        "" if line is None else CODE_SPAN.sub(lambda span: " " * len(span.group(0)), line) for line in unfenced(text)
    ]


def links(text: str) -> list[str]:
    """Return the target of every link and image in Markdown ``text``, code excluded."""
    prose = "\n".join(prose_lines(text))
    targets = [match.group(1) for pattern in (INLINE, REFERENCE, HTML) for match in pattern.finditer(prose)]
    return [target[1:-1] if target.startswith("<") and target.endswith(">") else target for target in targets]


def slug(heading: str) -> str:
    """Return GitHub's anchor for a heading: lower case, punctuation dropped, spaces turned into hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading anchors on its text
    # Code keeps its text, even what looks like a tag; a tag outside code is dropped.
    text = re.sub(r"(`+)(.*?)\1", lambda span: span.group(2).replace("<", "").replace(">", ""), text)
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    kept = "".join(
        char
        for char in text
        if char in " -" or unicodedata.category(char)[0] in "LMN" or unicodedata.category(char) == "Pc"
    )
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Return every anchor a link into ``path`` may name: its headings' slugs (numbered when repeated) and ids."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    text = path.read_text(encoding="utf-8")
    for line in unfenced(text):
        heading = HEADING.match(line or "")
        if heading:
            base = slug(heading.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    found.update(HTML_ANCHOR.findall(text))
    return found


def problems(page: Path, target: str) -> str | None:
    """Return why ``target``, linked from ``page``, does not resolve inside the repository, or None when it does."""
    if SCHEME.match(target) or target.startswith("//"):
        return None  # a URL: not a file of this repository
    if not target:
        return "an empty link"
    path_part, _, anchor = target.partition("#")
    path_part = unquote(path_part.split("?", 1)[0])
    if path_part.startswith("/"):
        return "an absolute path, which resolves differently on GitHub and on disk"
    resolved = (page.parent / path_part).resolve() if path_part else page
    if not resolved.is_relative_to(ROOT):
        return "a path outside the repository"
    if not resolved.exists():
        return "a file that does not exist"
    if anchor and resolved.suffix == ".md" and unquote(anchor).lower() not in anchors(resolved):
        return f"no heading in {resolved.relative_to(ROOT)} has the anchor #{anchor}"
    return None


PAGES = markdown_files()


def test_the_repository_has_a_readme_and_pages_under_docs() -> None:
    names = {page.relative_to(ROOT).as_posix() for page in PAGES}

    assert "README.md" in names
    assert any(name.startswith("docs/") for name in names)


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_every_relative_link_and_image_resolves_to_a_file_and_heading_in_the_repository(page: Path) -> None:
    broken = {
        target: why for target in links(page.read_text(encoding="utf-8")) if (why := problems(page, target)) is not None
    }

    assert broken == {}


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_every_path_a_page_climbs_to_with_dots_is_a_file_of_the_repository(page: Path) -> None:
    # In prose and code too: `../shared/bench/x.py` named from the README points at a sibling checkout.
    elsewhere = [
        found
        for found in CLIMB.findall(page.read_text(encoding="utf-8"))
        if not (resolved := (page.parent / found).resolve()).is_relative_to(ROOT) or not resolved.exists()
    ]

    assert elsewhere == []


def test_the_readme_is_short_links_the_seed_by_url_and_every_docs_page() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    targets = links(text)
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in targets if not SCHEME.match(target)}

    assert len(text.splitlines()) <= README_MAX_LINES
    assert SEED_URL in targets
    assert sorted(set((ROOT / "docs").glob("*.md")) - linked) == []


def test_every_picture_under_docs_img_is_shown_by_some_page() -> None:
    shown = {
        (page.parent / unquote(target.partition("#")[0])).resolve()
        for page in PAGES
        for target in links(page.read_text(encoding="utf-8"))
        if not SCHEME.match(target)
    }

    assert sorted(path.name for path in (ROOT / "docs" / "img").iterdir() if path.resolve() not in shown) == []


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        (
            "Model lifecycle: train → gate → promote → live swap → rollback",
            "model-lifecycle-train--gate--promote--live-swap--rollback",
        ),
        ("`POST /v1/classify`: classify and wait", "post-v1classify-classify-and-wait"),
        ("`POST /v1/classify/async` and `GET /v1/tasks/<task_id>`", "post-v1classifyasync-and-get-v1taskstask_id"),
        ("API keys, request ids and logs", "api-keys-request-ids-and-logs"),
        ("Metrics (Prometheus)", "metrics-prometheus"),
        ("What Redis as a broker cannot promise", "what-redis-as-a-broker-cannot-promise"),
    ],
)
def test_heading_anchors_follow_githubs_rules(heading: str, anchor: str) -> None:
    assert slug(heading) == anchor


def test_a_link_to_a_missing_file_a_missing_heading_or_outside_the_repository_is_reported() -> None:
    page = ROOT / "docs" / "page.md"  # never written: problems() only resolves paths against it

    assert problems(page, "missing.md") == "a file that does not exist"
    assert problems(page, "../README.md#no-such-heading") == "no heading in README.md has the anchor #no-such-heading"
    assert problems(page, "../../shared/bench/side_by_side.py") == "a path outside the repository"
    assert problems(page, "/etc/hosts") == "an absolute path, which resolves differently on GitHub and on disk"
    assert problems(page, "https://example.org/x.md") is None
    assert problems(page, "../README.md") is None


def test_links_inside_code_are_not_links() -> None:
    text = 'see [a](a.md) and `[b](b.md)`\n```\n[c](c.md)\n```\n![d](img/d.png) <img src="e.png">\n[f]: f.md\n'

    assert links(text) == ["a.md", "img/d.png", "f.md", "e.png"]
