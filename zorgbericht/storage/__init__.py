"""The ObjectStore port and its two implementations, picked by ``ZB_STORAGE_URL``."""

from zorgbericht.storage.base import ObjectStore, StorageUnavailable
from zorgbericht.storage.factory import make_store

__all__ = ["ObjectStore", "StorageUnavailable", "make_store"]
