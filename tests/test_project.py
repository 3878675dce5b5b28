"""The project's own facts: the version from the installed distribution, the public names."""

from importlib.metadata import version

import augpipe


def test_version_is_the_installed_distributions(cli):
    result = cli("--version")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"augpipe, version {version('augpipe')}"
    assert augpipe.__version__ == version("augpipe")


def test_all_names_every_lazy_public_name_and_nothing_else():
    # __all__ is written out for the linters; it must not drift from what __getattr__ serves.
    assert sorted(augpipe.__all__) == sorted([*augpipe._API, "__version__"])
    for name in augpipe.__all__:
        assert getattr(augpipe, name) is not None


def test_architecture_page_names_every_module():
    # docs/architecture.md is where a newcomer finds where a change goes: a module missing
    # from it is a room without a sign.
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    page = (root / "docs" / "architecture.md").read_text()
    missing = []
    for folder in ("augpipe", "plugins", "cli"):
        for path in sorted((root / folder).rglob("*.py")):
            if path.name == "__init__.py" and path.parent.name != "augpipe":
                continue
            if f"`{path.name}`" not in page and f"`{path.parent.name}/{path.name}`" not in page:
                missing.append(str(path.relative_to(root)))
    assert not missing, f"docs/architecture.md does not name: {', '.join(missing)}"


def test_docs_hook_shows_repository_files_as_paths_and_leaves_broken_links(tmp_path):
    # Links from a page to a repository file outside docs/ become its path; a link to nothing
    # stays a link, so that `mkdocs build --strict` still fails on it.
    import importlib.util
    from pathlib import Path
    from types import SimpleNamespace

    hook_path = Path(__file__).resolve().parents[1] / "docs" / "_hooks" / "repo_links.py"
    spec = importlib.util.spec_from_file_location("repo_links", hook_path)
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "other.md").write_text("# other\n")
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "fast.yaml").write_text("epochs: 1\n")
    page = SimpleNamespace(file=SimpleNamespace(src_uri="page.md"))
    text = (
        "[`recipes/fast.yaml`](../recipes/fast.yaml), [the recipe](../recipes/fast.yaml), "
        "[gone](../recipes/gone.yaml), [a page](other.md), [web](https://example.org/x.yaml)"
    )
    out = hook.on_page_markdown(text, page, {"docs_dir": str(tmp_path / "docs")}, None)
    assert out == (
        "`recipes/fast.yaml`, the recipe (`recipes/fast.yaml` in the repository), "
        "[gone](../recipes/gone.yaml), [a page](other.md), [web](https://example.org/x.yaml)"
    )
