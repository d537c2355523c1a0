"""The README's library example really runs, and its commands match .ci/run."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_library_example_runs(capsys):
    text = (ROOT / "README.md").read_text()
    (example,) = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "facto.factorize" in b]
    exec(compile(example, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "layers factorized" in out and "stored for backward" in out


def test_ci_runs_the_readme_commands():
    readme, ci = (ROOT / "README.md").read_text(), (ROOT / ".ci" / "run").read_text()
    for command in ("python -m pip install -r requirements.txt", "python -m pytest -q -n auto --maxprocesses 4"):
        assert command in readme and command in ci
    assert "streamlit run app.py" in readme
    assert "set -euo pipefail" in ci
