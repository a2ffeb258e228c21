"""The documentation: the site (mkdocs.yml, docs/) builds with ``mkdocs build --strict``, so a
broken link, a missing anchor or an API reference to an object that does not exist fails here;
every public name has an API entry and a docstring; the README's links lead somewhere.

Needs the ``docs`` packages, which the ``test`` extra includes (pip install -e '.[test]').
"""
from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import poolparty_raster
from poolparty_raster import applier
from poolparty_raster.pools.base import Pool
from poolparty_raster.registry import BACKENDS
from poolparty_raster.settings import option_fields

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
CONFIG = ROOT / "mkdocs.yml"
BUILD_TIMEOUT = 600  # seconds; a build takes a few here

def _mkdocs(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    try:
        import mkdocs  # noqa: F401
        import mkdocstrings  # noqa: F401
        import material  # noqa: F401
    except ImportError as exc:
        pytest.fail(f"the documentation packages are missing ({exc}): the suite builds the "
                    f"site; install them with python -m pip install -e '.[test]'")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")  # mkdocs-material's banner, not ours
    return subprocess.run([sys.executable, "-m", "mkdocs", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=BUILD_TIMEOUT)


def _build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return _mkdocs("build", "--strict", "--config-file", str(config), "--site-dir", str(site),
                   cwd=config.parent)


def test_site_builds_strict(tmp_path):
    """Every page, link, anchor and ``::: object`` resolves: --strict aborts on any warning."""
    site = tmp_path / "site"
    result = _build(CONFIG, site)
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr}\n{result.stdout}"
    assert (site / "index.html").is_file()
    rendered = "".join((site / page / "index.html").read_text()
                       for page in ("api-pools", "api-errors", "api-applier"))
    for name in _own_exports():  # each export has its section, by its public name
        assert f'id="poolparty_raster.{name}"' in rendered, name
    # The benchmarks page is python -m bench's output, shown as it is written.
    assert (site / "benchmarks" / "index.html").is_file()


@pytest.mark.parametrize("page, expected", [
    ("See [workers mode](pools.md#workers-mode).\n\n"
     "::: poolparty_raster.LocalPool\n", None),
    ("See [the pools](no-such-page.md).\n", "no-such-page.md"),
    ("See [workers mode](pools.md#no-such-section).\n", "no-such-section"),
    ("::: poolparty_raster.NoSuchPool\n", "NoSuchPool"),
], ids=["control: a sound page builds", "broken link", "missing anchor", "missing object"])
def test_strict_build_fails_on(tmp_path, page, expected):
    """The guard above really guards: the same configuration (inherited from mkdocs.yml)
    refuses a page with a broken link, a link to a missing anchor, or an API reference to an
    object that does not exist, and builds the same page without them."""
    docs = tmp_path / "docs"
    (docs / "stylesheets").mkdir(parents=True)
    (docs / "stylesheets" / "extra.css").write_text((DOCS / "stylesheets" / "extra.css").read_text())
    (docs / "index.md").write_text("# Test\n\n" + page)
    (docs / "pools.md").write_text("# Pools\n\n## Workers mode\n")
    config = tmp_path / "mkdocs.yml"
    config.write_text(f"INHERIT: {CONFIG}\ndocs_dir: docs\n"
                      "nav:\n  - Test: index.md\n  - Pools: pools.md\n")
    result = _build(config, tmp_path / "site")
    output = result.stdout + result.stderr
    if expected is None:
        assert result.returncode == 0, output
        return
    assert result.returncode != 0, f"the build should have failed on {expected}:\n{output}"
    assert expected in output, output


def _api_directives() -> set[str]:
    """The objects the documentation renders with mkdocstrings (``::: dotted.path``)."""
    found: set[str] = set()
    for page in DOCS.glob("*.md"):
        found.update(re.findall(r"^::: *([\w.]+) *$", page.read_text(), flags=re.M))
    return found


def _own_exports() -> list[str]:
    """The exports defined by this package: those re-exported from the standard library
    (multiprocessing's RemoteTraceback) are documented there, and named on their page."""
    return [name for name in poolparty_raster.__all__
            if getattr(getattr(poolparty_raster, name), "__module__", "poolparty_raster")
            .startswith("poolparty_raster")]


def test_every_export_has_an_api_entry():
    """Each public name is rendered by its public path (``::: poolparty_raster.LocalPool``),
    the applier's classes and functions too; its constants are in a table of that page."""
    directives = _api_directives()
    missing = [name for name in _own_exports() if f"poolparty_raster.{name}" not in directives]
    assert not missing, (f"exports of poolparty_raster without a `::: poolparty_raster.Name` "
                         f"entry in docs/api-*.md: {missing}")
    api_applier = (DOCS / "api-applier.md").read_text()
    undocumented = []
    for name in applier.__all__:
        obj = getattr(applier, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            if f"poolparty_raster.applier.{name}" not in directives:
                undocumented.append(name)
        elif f"`{name}`" not in api_applier:  # constants: the table on that page
            undocumented.append(name)
    assert not undocumented, f"applier names missing from docs/api-applier.md: {undocumented}"


def _doc(obj: object) -> str:
    if isinstance(obj, (staticmethod, classmethod)):
        obj = obj.__func__
    if isinstance(obj, property):
        obj = obj.fget
    return (getattr(obj, "__doc__", None) or "").strip()


def _missing_docstrings() -> list[str]:
    """Exports without a docstring of their own, and public methods and properties of the
    pool classes without one (an override counts as documented when the method it overrides
    is: ``help()`` shows that)."""
    missing = set()
    pools = []
    for name in _own_exports():
        obj = getattr(poolparty_raster, name)
        own = vars(obj).get("__doc__") if inspect.isclass(obj) else obj.__doc__
        if not (own or "").strip():
            missing.add(name)
        if inspect.isclass(obj) and issubclass(obj, Pool):
            pools.append(obj)
    for cls in pools:
        for attr in dir(cls):
            if attr.startswith("_"):
                continue
            static = inspect.getattr_static(cls, attr)
            if not (inspect.isfunction(static)
                    or isinstance(static, (property, staticmethod, classmethod))):
                continue
            definers = [klass for klass in cls.__mro__ if attr in vars(klass)]
            if not any(_doc(vars(klass)[attr]) for klass in definers):
                missing.add(f"{definers[0].__name__}.{attr}")
    return sorted(missing)


def test_public_api_has_docstrings():
    missing = _missing_docstrings()
    assert not missing, f"public names without a docstring: {missing}"


def _relative_links(markdown: str) -> list[str]:
    links = re.findall(r"\]\(([^)\s]+)\)", markdown)
    return [link for link in links if not re.match(r"[a-z]+:", link) and not link.startswith("#")]


def test_readme_links_lead_somewhere():
    """The README's relative links (into docs/, and to files of the repository) exist, so they
    work on GitHub too; a link with an anchor names a heading of that page."""
    readme = (ROOT / "README.md").read_text()
    links = _relative_links(readme)
    assert any(link.startswith("docs/") for link in links), "the README links into docs/"
    for link in links:
        path, _, anchor = link.partition("#")
        target = ROOT / path
        assert target.exists(), f"README.md links to {link}, which does not exist"
        if anchor and target.suffix == ".md":
            slugs = {_slug(h) for h in re.findall(r"^#+ +(.+?) *$", target.read_text(), re.M)}
            assert anchor in slugs, f"README.md links to {link}: no such heading"


def _slug(heading: str) -> str:
    """Python-Markdown's toc slug (what mkdocs and GitHub both produce for plain headings)."""
    text = re.sub(r"[^\w\- ]", "", heading.replace("`", "")).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def test_readme_keeps_the_two_commands():
    """The two set-up commands, verbatim, near the top (.ci/run runs the second one)."""
    head = (ROOT / "README.md").read_text().splitlines()[:40]
    assert "python -m pip install . && python examples/quickstart.py" in head
    assert "python -m pip install -q -e '.[test]' && python -m pytest -ra -n 4" in head


BACKEND_PAGES = {"local": "local.md", "slurm": "slurm.md", "sge": "sge.md", "pbs": "pbs.md",
                 "lsf": "lsf.md", "htcondor": "htcondor.md", "ecs": "aws.md", "awsbatch": "aws.md"}


@pytest.mark.parametrize("entry", BACKENDS, ids=lambda b: b.name)
def test_every_option_of_a_backend_is_explained_on_its_page(entry):
    """help() lists each option in a line; the backend's page explains each one, with what
    the site needs to know: a new scheduler keyword without its explanation fails here."""
    page = (DOCS / BACKEND_PAGES[entry.name]).read_text()
    for name in entry.pool_classes:
        cls = getattr(poolparty_raster, name)
        own = inspect.signature(cls._scheduler_class.__init__).parameters
        missing = [o for o in own if o != "self" and o not in cls._fixed_options
                   and f"`{o}`" not in page]
        assert not missing, f"docs/{BACKEND_PAGES[entry.name]} does not explain {missing}"


def test_every_option_of_every_pool_is_explained_on_the_pools_page():
    page = (DOCS / "pools.md").read_text()
    missing = [f.name for f in option_fields() if f"`{f.name}`" not in page]
    assert not missing, f"docs/pools.md does not explain {missing}"
