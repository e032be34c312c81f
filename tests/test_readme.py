"""The README is executable documentation: its test command is .ci/run's and its example runs."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci.startswith('python -m pip install -e ".[test]"')
    assert ci in README


def test_python_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    example = [b for b in blocks if "import cellsearch" in b]
    assert example, "README has no Python API example"
    exec(compile(example[0], "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "(20, 4, 8) ['c', 'h']" in out


def test_dsl_example_is_the_zoo_cell():
    import cellsearch as cs

    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert cs.parse(blocks[0]) == cs.zoo.get("lstm_peephole")
