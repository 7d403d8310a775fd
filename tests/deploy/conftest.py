"""The Secrets `virtbus deploy secrets` makes, once per module: the deploy tests read them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from podfiles import Made

from bus.roles import node_permissions
from bus.trust import ensure
from virtbus.k8ssecrets import Place, secret_manifests


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Made]:
    root = tmp_path_factory.mktemp("deploy")
    trust = ensure(root / "D")
    node = trust.issue("node-a", permissions=node_permissions("node-a"), out=root / "node-a.creds")
    made = secret_manifests(root / "D", place=Place(), node_creds=[node])
    yield Made(root / "D", {s["metadata"]["name"]: s for s in made})
