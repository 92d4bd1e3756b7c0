"""The README's Python example runs as the README shows it."""

import re
from pathlib import Path

import matplotlib

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_block(marker: str) -> str:
    text = README.read_text()
    match = re.search(re.escape(marker) + r".*?\n```python\n(.*?)```", text, re.S)
    assert match, f"no python block after {marker!r} in README.md"
    return match.group(1)


def test_the_notebook_example_trains_loads_and_plots(tmp_path, monkeypatch):
    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)  # its runs go to ./outputs, as in a notebook started here
    scope: dict = {}
    exec(readme_block("<!-- tested: tests/test_readme.py"), scope)
    runs = scope["runs"]
    assert sorted(runs["init.name"].unique()) == ["bias_normal", "zero"]
    assert sorted(runs["epoch"]) == [1, 1, 2, 2] and set(runs["status"]) == {"completed"}
    assert all(Path(f).parent == tmp_path / "outputs" / "runs" for f in scope["folders"])
    assert len(matplotlib.pyplot.gca().get_lines()) == 2  # one curve per init
