"""Object storage: replicas and CURRENT markers (`replicas`), scoped identities (`credentials`), the embedded
SeaweedFS (`seaweed`)."""

from control_plane.storage.credentials import SeaweedCredentials, TenantCredentials
from control_plane.storage.replicas import Current, CurrentMoved, ObjectStorage
from control_plane.storage.seaweed import EmbeddedStore, ObjectStoreError, StoreAddress, free_address

__all__ = [
    "Current",
    "CurrentMoved",
    "EmbeddedStore",
    "ObjectStorage",
    "ObjectStoreError",
    "SeaweedCredentials",
    "StoreAddress",
    "TenantCredentials",
    "free_address",
]
