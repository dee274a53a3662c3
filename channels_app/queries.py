"""The channels app's raw SQL, in one place.

These statements are raw because the ORM cannot say them: a multi-row INSERT … ON CONFLICT DO NOTHING
RETURNING only the rows that were new (``bulk_create(ignore_conflicts=True)`` returns no ids), and
PostgreSQL's session advisory locks. Table names come from the models' ``_meta.db_table``, so a renamed
table or a moved model changes one place. The callers bind every value as a parameter.
"""

from __future__ import annotations

from channels_app.models import InboundEvent

INBOUND_EVENT = InboundEvent._meta.db_table

# What a channel received, each item once: ``inbound_insert(n)`` takes n rows of 7 parameters each
# (tenant_id, channel_id, kind, dedupe_key, sender_external_id, normalized as JSON text, correlation_id)
# and returns (id, kind, dedupe_key) of the rows that were new.
_INBOUND_ROW = "(%s, %s, %s, %s, %s, %s::jsonb, %s, 'pending', '', 0, now())"
_INBOUND_INSERT = (
    f"INSERT INTO {INBOUND_EVENT} "  # noqa: S608 (table name is ours)
    "(tenant_id, channel_id, kind, dedupe_key, sender_external_id, normalized, correlation_id, status, "
    "error, attempts, received_at) "
    "VALUES {values} ON CONFLICT (tenant_id, channel_id, dedupe_key) DO NOTHING RETURNING id, kind, dedupe_key"
)


def inbound_insert(rows: int) -> str:
    return _INBOUND_INSERT.format(values=", ".join([_INBOUND_ROW] * rows))


# One campaign runner at a time (a session lock: a killed runner's goes with its connection). The one
# parameter is the lock's name, hashed to the lock key by PostgreSQL.
ADVISORY_TRY_LOCK = "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))"
ADVISORY_UNLOCK = "SELECT pg_advisory_unlock(hashtextextended(%s, 0))"
