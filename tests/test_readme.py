"""The README's fresh-machine commands and CI agree: .ci/run runs exactly the README's test command."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command() -> None:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    install_and_demo, tests = blocks[0].strip(), blocks[1].strip()
    assert install_and_demo.startswith("pip install torch==2.13.0") and "frleak demo" in install_and_demo
    test_command = tests.split("&&")[-1].strip()
    ci_lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines
    assert "python -m pip install -q torch==2.13.0" in ci_lines  # the CPU wheel, never a CUDA build
