# ruff: noqa: S608 (table names from the models' _meta; every value is a bound parameter)
"""The events app's raw SQL, in one place.

These statements are raw because they run once per event or per webhook attempt, where the ORM
either cannot say them or costs more than the statement: the Event INSERT of every change on the
platform (Model.save()'s per-field preparation cost more than the statement), the fan-out's one
statement of data-modifying CTEs over SKIP LOCKED rows, a drain's slot taken with try-advisory locks
in the statement that reads its endpoint, a claim that leases deliveries and reads their events at
once, a batch of attempts stored as arrays, and the publisher's raw rows (its message body is built
around the payload's stored JSON text). Table names come from the models' ``_meta.db_table``, so a
renamed table or a moved model changes one place. The callers bind every value as a parameter.
"""

from __future__ import annotations

import functools

from events.models import Event, WebhookAttempt, WebhookDelivery, WebhookEndpoint

EVENT = Event._meta.db_table
WEBHOOK_ATTEMPT = WebhookAttempt._meta.db_table
WEBHOOK_DELIVERY = WebhookDelivery._meta.db_table
WEBHOOK_ENDPOINT = WebhookEndpoint._meta.db_table

# --- events.services: writing events ----------------------------------------------------------------


@functools.cache
def event_insert(rows: int = 1) -> str:
    """One INSERT of ``rows`` events ``RETURNING id, event_id`` (parameters: events.services._row_params
    per row)."""
    values = ", ".join(["(%s, %s, %s, %s::jsonb, %s, %s, %s, %s)"] * rows)
    return (
        f"INSERT INTO {EVENT} (tenant_id, event_id, type, payload, correlation_id, created_at, "
        f"dispatch_pending, publish_pending) VALUES {values} RETURNING id, event_id"
    )


def event_insert_per_row(count: int, *, rows: str, key: str) -> str:
    """One INSERT of ``count`` events for the rows of the data-modifying CTE ``rows``, each joined on
    its ``key`` (see events.services.insert_per_row_sql)."""
    row = "(%s::uuid, %s::uuid, %s, %s::jsonb, %s, %s::timestamptz, %s::boolean, %s::boolean, %s)"
    return (
        f"INSERT INTO {EVENT} (tenant_id, event_id, type, payload, correlation_id, created_at, "
        "dispatch_pending, publish_pending) "
        "SELECT v.tenant_id, v.event_id, v.type, v.payload || jsonb_build_object(%s, r.id), v.correlation_id, "
        f"v.created_at, v.dispatch_pending, v.publish_pending FROM {rows} r JOIN (VALUES {', '.join([row] * count)}) "
        "AS v(tenant_id, event_id, type, payload, correlation_id, created_at, dispatch_pending, publish_pending, k) "
        f"ON v.k = r.{key} ORDER BY r.id RETURNING id, event_id"
    )


# --- events.publisher: RabbitMQ -----------------------------------------------------------------------

# One publisher at a time walks the pending events (key: events.publisher.ADVISORY_LOCK_KEY).
PUBLISHER_LOCK = "SELECT pg_advisory_xact_lock(%s)"

# Raw rows, not model instances: the body is built around the payload's stored JSON text.
PUBLISH_PENDING_BATCH = (
    f"SELECT id, event_id, tenant_id, type, created_at, correlation_id, payload FROM {EVENT} "
    "WHERE publish_pending ORDER BY id LIMIT %s"
)

EVENTS_MARK_PUBLISHED = f"UPDATE {EVENT} SET publish_pending = false, published_at = %s WHERE id = ANY(%s)"

# --- events.delivery: fan-out -------------------------------------------------------------------------

# The fan-out in one statement (see events.delivery.dispatch_pending_events): a batch of pending events
# locked with SKIP LOCKED, one delivery per subscribed active endpoint, the events' flag cleared, and
# whether pending events held by another transaction were skipped. Parameters: batch size, the
# deliveries' next_attempt_at, their created_at.
DISPATCH_PENDING_EVENTS = (
    f"WITH batch AS (SELECT id, tenant_id, type, payload FROM {EVENT} WHERE dispatch_pending "
    "ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED), "
    f"done AS (UPDATE {EVENT} e SET dispatch_pending = false FROM batch WHERE e.id = batch.id RETURNING e.id), "
    f"created AS (INSERT INTO {WEBHOOK_DELIVERY} (tenant_id, endpoint_id, event_id, status, attempt_count, "
    "next_attempt_at, last_error, created_at) "
    "SELECT b.tenant_id, w.id, b.id, 'pending', 0, %s, '', %s "
    f"FROM batch b JOIN {WEBHOOK_ENDPOINT} w ON w.tenant_id = b.tenant_id AND w.is_active "
    "WHERE (w.event_types IS NULL OR w.event_types IN ('[]'::jsonb, 'null'::jsonb) OR w.event_types ? b.type) "
    "AND NOT (b.type LIKE 'webhook.%%' AND coalesce(b.payload ->> 'endpoint_id', '') = w.id::text) "
    "ON CONFLICT DO NOTHING RETURNING endpoint_id) "
    "SELECT (SELECT count(*) FROM done), ARRAY(SELECT DISTINCT endpoint_id FROM created), "
    f"EXISTS (SELECT 1 FROM {EVENT} WHERE dispatch_pending AND id NOT IN (SELECT id FROM batch))"
)

# --- events.delivery: one endpoint's drain --------------------------------------------------------------

# Concurrent drains per endpoint, on any worker: session advisory locks on WEBHOOK_ENDPOINT_CONCURRENCY
# slots (a drain spans several statements and its requests), taken with *try* in the statement that
# reads the endpoint; one slot only while the endpoint is failing (an attempt failed since its last
# success). A drain that gets no slot leaves; each holder looks for due deliveries once it has let
# go, so nothing waits for the sweep. A receiver that hangs thus holds at most that many worker
# threads until its first timeout, and one after, however many events arrive meanwhile. A killed
# worker's locks go with its connection.
_DRAIN_LOCK_KEY = "hashtextextended('webhook-drain|' || {endpoint} || '|' || {slot}, 0)"


@functools.cache
def endpoint_taking_a_slot() -> str:
    """The endpoint's concrete columns (in ``_meta.concrete_fields`` order), then the drain slot taken
    (NULL: none free, or the endpoint is inactive). Parameters: the concurrency, the endpoint id. Built
    at first use: the model's fields are complete only once the app registry is."""
    columns = ", ".join(str(f.column) for f in WebhookEndpoint._meta.concrete_fields)
    key = _DRAIN_LOCK_KEY.format(endpoint="id::text", slot="s")
    locking = (
        "CASE WHEN is_active THEN (SELECT s FROM generate_series(0, CASE WHEN failing_since IS NULL THEN %s "
        f"ELSE 1 END - 1) s WHERE pg_try_advisory_lock({key}) LIMIT 1) END"
    )
    return f"SELECT {columns}, {locking} FROM {WEBHOOK_ENDPOINT} WHERE id = %s"


# Parameters: the endpoint id and the slot, as text.
DRAIN_UNLOCK = f"SELECT pg_advisory_unlock({_DRAIN_LOCK_KEY.format(endpoint='%s', slot='%s')})"

# Whether a delivery of this endpoint is due (a fixed statement, as the claim's: at a steady trickle
# of events every drain ends with it).
DELIVERY_DUE_EXISTS = (
    f"SELECT EXISTS (SELECT 1 FROM {WEBHOOK_DELIVERY} WHERE tenant_id = %s AND endpoint_id = %s "
    "AND status = 'pending' AND next_attempt_at <= %s)"
)

# Lease up to LIMIT due deliveries and read their events (one statement; concurrent drains skip each
# other's rows). Nothing is claimed once the endpoint is disabled. Parameters: tenant, endpoint, now,
# endpoint, limit, lease end.
DELIVERIES_CLAIM = (
    f"WITH due AS (SELECT id FROM {WEBHOOK_DELIVERY} WHERE tenant_id = %s AND endpoint_id = %s "
    "AND status = 'pending' AND next_attempt_at <= %s "
    f"AND EXISTS (SELECT 1 FROM {WEBHOOK_ENDPOINT} WHERE id = %s AND is_active) "
    "ORDER BY next_attempt_at, id LIMIT %s FOR UPDATE SKIP LOCKED) "
    f"UPDATE {WEBHOOK_DELIVERY} d SET next_attempt_at = %s FROM due, {EVENT} e WHERE d.id = due.id AND e.id = d.event_id "
    "RETURNING d.id, d.tenant_id, d.attempt_count, e.event_id, e.type, e.tenant_id, e.created_at, e.payload, "
    "e.correlation_id"
)


@functools.cache
def attempts_store() -> str:
    """A batch in one statement, its rows as arrays (a fixed statement text, parsed once): the new state
    of every delivery still pending, every attempt of a delivery that still exists, and the end of an
    endpoint's failure streak (see events.delivery._store). Returns the ids of the deliveries updated."""
    return (
        "WITH v AS (SELECT * FROM unnest(%s::bigint[], %s::uuid[], %s::text[], %s::int[], %s::timestamptz[], "
        "%s::timestamptz[], %s::int[], %s::text[], %s::timestamptz[], %s::int[], %s::bool[], %s::text[]) "
        "AS v(id, tenant_id, status, attempt_count, next_attempt_at, last_attempt_at, last_status_code, "
        "last_error, completed_at, duration_ms, success, response_excerpt)), "
        f"updated AS (UPDATE {WEBHOOK_DELIVERY} d SET status = v.status, attempt_count = v.attempt_count, "
        "next_attempt_at = v.next_attempt_at, last_attempt_at = v.last_attempt_at, "
        "last_status_code = v.last_status_code, last_error = v.last_error, completed_at = v.completed_at "
        "FROM v WHERE d.id = v.id AND d.status = 'pending' RETURNING d.id), "
        f"attempts AS (INSERT INTO {WEBHOOK_ATTEMPT} (tenant_id, delivery_id, started_at, duration_ms, status_code, "
        "success, response_excerpt, error) SELECT v.tenant_id, v.id, v.last_attempt_at, v.duration_ms, "
        "v.last_status_code, v.success, v.response_excerpt, v.last_error FROM v "
        f"WHERE EXISTS (SELECT 1 FROM {WEBHOOK_DELIVERY} x WHERE x.id = v.id)), "
        f"streak AS (UPDATE {WEBHOOK_ENDPOINT} SET last_success_at = %s::timestamptz, failing_since = NULL "
        "WHERE id = %s AND (failing_since IS NOT NULL OR last_success_at IS NULL OR last_success_at < %s)) "
        "SELECT id FROM updated"
    )
