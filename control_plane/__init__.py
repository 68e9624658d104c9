"""The litefleet control plane. So far: the embedded object store, per-tenant object storage, the CLI."""

from control_plane.objectstore import EmbeddedStore
from control_plane.storage import CurrentMoved, ObjectStorage, TenantCredentials

__all__ = ["CurrentMoved", "EmbeddedStore", "ObjectStorage", "TenantCredentials"]
