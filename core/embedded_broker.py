"""The broker for a single machine: kombu's SQLAlchemy transport on a SQLite file.

Registered as the `mpsqla` transport so it can poll more often than kombu's default of
once a second (the transport passes its options to create_engine, so they can't carry it).
"""

from __future__ import annotations

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport.sqlalchemy import Transport as SQLAlchemyTransport

SCHEME = "mpsqla"


class Transport(SQLAlchemyTransport):
    polling_interval = 0.1


TRANSPORT_ALIASES[SCHEME] = f"{__name__}:Transport"
