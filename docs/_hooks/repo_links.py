"""MkDocs hook: a page may link to a file of the repository outside docs/ (a recipe, a script),
as it would on GitHub. The site has no copy of that file, so the link becomes the file's path
in code. A link whose file does not exist is left alone, so that --strict still fails on it."""

from __future__ import annotations

import re
from pathlib import Path

LINK = re.compile(r"\[([^\]]*)\]\(([^)\s#]+)(#[^)\s]*)?\)")


def on_page_markdown(markdown, page, config, files):
    docs = Path(config["docs_dir"]).resolve()
    repo = docs.parent
    here = (docs / page.file.src_uri).parent

    def rewrite(match):
        text, target = match.group(1), match.group(2)
        if "://" in target or target.startswith(("/", "mailto:")):
            return match.group(0)
        path = (here / target).resolve()
        if docs in path.parents or repo not in path.parents or not path.exists():
            return match.group(0)
        shown = path.relative_to(repo).as_posix()
        return text if text.strip("`") == shown else f"{text} (`{shown}` in the repository)"

    return LINK.sub(rewrite, markdown)
