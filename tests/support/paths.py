"""Where the repository's files are, for tests that read the shipped examples and deploy files."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
SEED = EXAMPLES / "kubevirt-centos7.yaml"
DEPLOY = ROOT / "deploy"
