"""The README's custom-task example is the tested example file, verbatim."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("example", ["custom_pendulum.py", "fewshot_classify.py"])
def test_readme_examples_are_the_example_files(example: str) -> None:
    """The README's Python examples are the tested example files (after their docstring), verbatim."""
    readme = (ROOT / "README.md").read_text()
    body = (ROOT / "examples" / example).read_text().split('"""', 2)[2].lstrip("\n")
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert body in blocks, f"README's example differs from examples/{example}"


def test_readme_starts_with_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    first_block = re.search(r"```bash\n(.*?)```", readme, flags=re.S)
    assert first_block is not None
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines() if line.strip()]
    assert commands == ["bash scripts/quickstart.sh", "bash scripts/test.sh"]
    assert (ROOT / ".ci" / "run").read_text().count("scripts/test.sh") == 1


def test_readme_benchmark_block_is_generated_from_results() -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "report.py"), "--check"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
