"""The documentation: generated reference pages match the code, links resolve, the site builds."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from pgpool import docs
from pgpool.config import implemented_settings

REPO = Path(__file__).resolve().parents[2]


def test_generated_reference_pages_match_the_code():
    stale = list(docs.stale_pages(REPO / "docs"))
    assert not stale, (f"{', '.join(stale)} differ from what pgpool/config.py and pgpool/metrics.py say; "
                       f"regenerate with `python -m pgpool.docs` and commit the result")


def test_docs_check_command_reports_a_stale_page(tmp_path, capsys):
    for name, render in docs.PAGES.items():
        (tmp_path / name).write_text(render())
    assert docs.main(["--check", "--docs", str(tmp_path)]) == 0
    (tmp_path / "metrics.md").write_text(docs.metrics_page().replace("pgpool_clients_waiting", "pgpool_x"))
    assert docs.main(["--check", "--docs", str(tmp_path)]) == 1
    assert "metrics.md differs" in capsys.readouterr().err and "python -m pgpool.docs" in docs.REGENERATE


def test_settings_page_lists_every_setting_and_metrics_page_every_family():
    settings_page = (REPO / "docs" / "settings.md").read_text()
    for name in implemented_settings():
        assert f"| `{name}` |" in settings_page, name
    metrics_page = (REPO / "docs" / "metrics.md").read_text()
    for name, _, _, _ in docs.exported_metrics():
        assert f"| `{name}` |" in metrics_page, name
    assert "pgpool_errors_total" in metrics_page and "query_wait_timeout" in metrics_page


def test_readme_links_point_at_files_that_exist():
    readme = (REPO / "README.md").read_text()
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    assert links, "the README links to the docs"
    missing = [link for link in links if "://" not in link and not (REPO / link).exists()]
    assert not missing, f"README.md links to missing files: {missing}"


def test_readme_opens_with_the_two_commands_and_stays_short():
    readme = (REPO / "README.md").read_text()
    first_block = readme.split("```")[1]
    assert "bash scripts/demo.sh" in first_block and "bash scripts/test.sh" in first_block
    assert len(readme.splitlines()) < 150, "the README is an entry page; reference goes to docs/"


def test_mkdocs_site_builds_strict(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "site" / "settings" / "index.html").exists()
