"""A node's container-disk pulls, observed on the VM's subjects: which registries it asked, which
served the image and why the others did not (kubelet's "Pulling image" and "Pulled" events).
Part of the union in `events/model.py`.
"""

from __future__ import annotations

from events.event import Event


class ImagePulling(Event, frozen=True):
    """A node lacks a containerDisk image and starts to pull it (kubelet's "Pulling image"):
    the registries it will ask, in order. `ImagePulled` or the start's failure follows."""

    image: str = ""
    node: str = ""
    registries: list[str] = []


class ImagePulled(Event, frozen=True):
    """A node pulled a containerDisk image into its cache before starting the VM: which registry
    served it, and why each one asked before it did not (refused, 404, skipped as unhealthy)."""

    image: str = ""
    digest: str = ""
    registry: str = ""
    node: str = ""
    size_bytes: int = 0
    seconds: float = 0.0
    attempts: list[str] = []
