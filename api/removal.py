"""Removing a deleted resource's stored objects, after the commit that deleted its rows."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from core.storage import Storage

log = logging.getLogger(__name__)


def remove_objects(storage: Storage, prefixes: Iterable[str]) -> None:
    """The rows are already gone, so the deletion has happened whatever storage answers now:
    objects it fails to remove are orphans, which the sweeper (core.sweeper) removes later."""
    for prefix in prefixes:
        try:
            storage.delete_prefix(prefix)
        except Exception:
            log.warning("objects under %s left for the sweeper", prefix, exc_info=True)
