"""The conversations app's raw SQL statements of fixed text. Two kinds stay where they are: the turn's
writes (intake's contact, conversation and messages, finish's outcome), assembled per burst from
``pipeline.rows.insert_sql`` and ``events.services``' insert builders with as many rows as the burst
has, and the analytics selectors, which are SQL through and through (conversations.analytics).

These statements are raw because the ORM cannot say them (advisory locks taken in the statement that
reads the row they guard, a CTE that updates and returns, an experiment's bucket computed from a hash)
or because building them as querysets cost more CPU than PostgreSQL spends answering them: they are
the turn's hottest reads, measured in bench.turn. Table names come from the models' ``_meta.db_table``;
a statement that needs the app registry is built on first use and cached. The callers bind every value
as a parameter.
"""

from __future__ import annotations

import functools

from django.contrib.auth import get_user_model

from channels_app.models import Channel, ChannelSecret, InboundEvent
from conversations.models import Contact, Conversation, ConversationRead, Experiment, Message, TenantFunction
from tenants.models import Tenant

# --- the turn's locks and reads (conversations.pipeline) ------------------------------------------------

# The advisory lock's key, computed by PostgreSQL from "turn|<channel id>|<sender>" (so that the
# event's own row can name it in the query that reads the event: one round trip less per turn).
LOCK_KEY_SQL = "hashtextextended('turn|' || {channel} || '|' || {sender}, 0)"
TRY_LOCK = f"SELECT pg_try_advisory_lock({LOCK_KEY_SQL.format(channel='%s', sender='%s')})"
UNLOCK = f"SELECT pg_advisory_unlock({LOCK_KEY_SQL.format(channel='%s', sender='%s')})"


def _columns(model: type, alias: str) -> str:
    from conversations.pipeline import rows

    return rows.columns(model, alias)


@functools.cache
def lock_event_sql() -> str:
    """A pending message event's tenant, channel and sender, with its contact's lock tried; the event is
    marked ``turn_busy_at`` when the lock is held."""
    table = InboundEvent._meta.db_table
    key = LOCK_KEY_SQL.format(channel="channel_id::text", sender="sender_external_id")
    return (
        f"WITH e AS (SELECT id, tenant_id, channel_id, sender_external_id, pg_try_advisory_lock({key}) AS got "  # noqa: S608 (our table)
        f"FROM {table} WHERE id = %s AND status = %s AND kind = %s), "
        f"busy AS (UPDATE {table} SET turn_busy_at = now() WHERE id = (SELECT id FROM e WHERE NOT got) RETURNING id) "
        "SELECT tenant_id, channel_id, sender_external_id, got FROM e"
    )


@functools.cache
def pending_sql(for_turn: bool) -> str:
    """A contact's pending message events in arrival order; ``for_turn``: with their channel, tenant,
    encrypted credentials and the tenant's active functions (``pipeline._pending``)."""
    events = InboundEvent._meta.db_table
    where = (
        "WHERE e.tenant_id = %s AND e.channel_id = %s AND e.sender_external_id = %s AND e.kind = %s "
        "AND e.status = %s ORDER BY e.id LIMIT %s"
    )
    if not for_turn:
        return f"SELECT e.id, e.normalized, e.turn_busy_at IS NOT NULL FROM {events} e {where}"  # noqa: S608 (our tables)
    functions = TenantFunction._meta.db_table
    return (
        f"WITH fn AS (SELECT COALESCE(json_agg(f ORDER BY f.name), '[]')::text AS rows FROM {functions} f "  # noqa: S608
        "WHERE f.tenant_id = %s AND f.is_active) "
        f"SELECT {_columns(InboundEvent, 'e')}, {_columns(Channel, 'c')}, {_columns(Tenant, 't')}, "
        f"{_columns(ChannelSecret, 's')}, fn.rows FROM {events} e "
        f"JOIN {Channel._meta.db_table} c ON c.id = e.channel_id JOIN {Tenant._meta.db_table} t ON t.id = c.tenant_id "
        f"LEFT JOIN {ChannelSecret._meta.db_table} s ON s.channel_id = c.id CROSS JOIN fn {where}"
    )


@functools.cache
def latest_conversation_sql() -> str:
    """The contact's latest conversation with its contact, and which platform message ids are stored."""
    return (
        f"SELECT {_columns(Conversation, 'v')}, {_columns(Contact, 'k')}, "  # noqa: S608 (our tables)
        f"ARRAY(SELECT m.platform_message_id FROM {Message._meta.db_table} m WHERE m.tenant_id = %s "
        "AND m.channel_id = %s AND m.platform_message_id = ANY(%s::text[])) "
        f"FROM {Conversation._meta.db_table} v JOIN {Contact._meta.db_table} k ON k.id = v.contact_id "
        "WHERE v.tenant_id = %s AND v.channel_id = %s AND k.tenant_id = %s AND k.external_id = %s "
        "ORDER BY v.last_activity_at DESC LIMIT 1"
    )


# In the model's field order (``Model.from_db`` takes a subset of the fields in that order).
CONTEXT_FIELDS = tuple(
    f.attname
    for f in Message._meta.concrete_fields
    if f.attname in {"id", "sender", "content", "status", "kind", "platform_message_id"}
)


@functools.cache
def context_sql(bounded: bool) -> str:
    """A conversation's messages from the given senders, newest first (``bounded``: after a message id)."""
    return (
        f"SELECT {', '.join(CONTEXT_FIELDS)} FROM {Message._meta.db_table} "  # noqa: S608 (our table)
        "WHERE tenant_id = %s AND conversation_id = %s AND sender = ANY(%s::text[])"
        + (" AND id > %s" if bounded else "")
        + " ORDER BY id DESC LIMIT %s"
    )


# --- experiments -----------------------------------------------------------------------------------------

# A contact's bucket (0-99) in an experiment: the same hash as ``experiments.bucket`` computes in Python.
BUCKET_SQL = "(('x' || left(encode(sha256(convert_to({experiment} || ':' || {contact}, 'UTF8')), 'hex'), 8))::bit(32)::bigint %% 100)"


@functools.cache
def experiment_apply_sql() -> str:
    """The tenant's running experiment and the contact's variant, recorded on the conversation."""
    experiments, conversations = Experiment._meta.db_table, Conversation._meta.db_table
    bucket_sql = BUCKET_SQL.format(experiment="e.id::text", contact="%s::text")
    return (
        f"WITH e AS (SELECT id, variants, {bucket_sql} AS bucket FROM {experiments} e "  # noqa: S608 (our tables)
        "WHERE e.tenant_id = %s AND e.status = 'running' LIMIT 1), "
        "pick AS (SELECT e.id, s.item FROM e, LATERAL (SELECT item, sum((item->>'share')::int) OVER (ORDER BY ord) "
        "AS upto, ord FROM jsonb_array_elements(e.variants) WITH ORDINALITY AS x(item, ord)) s "
        "WHERE s.upto > e.bucket ORDER BY s.ord LIMIT 1), "
        f"recorded AS (UPDATE {conversations} c SET experiment_id = pick.id, experiment_variant = pick.item->>'name' "
        "FROM pick WHERE c.id = %s AND c.tenant_id = %s AND (c.experiment_id IS DISTINCT FROM pick.id "
        "OR c.experiment_variant <> pick.item->>'name') RETURNING c.id) "
        "SELECT pick.id, pick.item::text FROM pick"
    )


# --- the inbox ---------------------------------------------------------------------------------------------


@functools.cache
def inbox_list_sql(unread_cap: int) -> str:
    """One page of the inbox's list; ``{where}`` takes the filters' conditions (their values are
    parameters)."""
    c, k, ch, m, r = (
        Conversation._meta.db_table,
        Contact._meta.db_table,
        Channel._meta.db_table,
        Message._meta.db_table,
        ConversationRead._meta.db_table,
    )
    users = get_user_model()._meta.db_table
    # The page is chosen first (the order and the filters read the conversation row alone, from the
    # tenant's rows), then only its rows get their contact, preview and unread count: computed for every
    # row before the sort, those cost ~3 ms per 100 conversations.
    return f"""
        WITH page AS (
            SELECT c.*,
                   CASE c.state WHEN 'handoff_requested' THEN 0 WHEN 'agent' THEN 1 WHEN 'bot' THEN 2 ELSE 3 END
                       AS state_rank,
                   CASE WHEN c.state = 'handoff_requested' THEN c.waiting_since END AS waiting_rank
            FROM {c} c
            WHERE c.tenant_id = %(tenant)s {{where}}
            ORDER BY state_rank, waiting_rank ASC NULLS LAST, c.last_activity_at DESC, c.id
            LIMIT %(limit)s OFFSET %(offset)s
        )
        SELECT c.id, c.state, c.last_activity_at, c.waiting_since, c.created_at, c.handoff_reason,
               c.channel_id, ch.type, ch.name, c.assignee_id, u.username, u.first_name, u.last_name,
               k.id, k.profile_name, k.external_id, lm.content, lm.sender, lm.kind,
               c.sentiment, c.tags, c.analysed_at,
               (SELECT count(*) FROM (SELECT 1 FROM {m} x WHERE x.tenant_id = c.tenant_id
                    AND x.conversation_id = c.id AND x.direction = 'in'
                    AND x.id > COALESCE(r.last_read_message_id, 0) LIMIT {unread_cap + 1}) AS unread_rows)
        FROM page c
        JOIN {k} k ON k.id = c.contact_id
        JOIN {ch} ch ON ch.id = c.channel_id
        LEFT JOIN {users} u ON u.id = c.assignee_id
        LEFT JOIN {r} r ON r.tenant_id = c.tenant_id AND r.conversation_id = c.id AND r.user_id = %(user)s
        LEFT JOIN LATERAL (SELECT x.content, x.sender, x.kind FROM {m} x WHERE x.tenant_id = c.tenant_id
            AND x.conversation_id = c.id AND x.sender = ANY(%(senders)s) ORDER BY x.id DESC LIMIT 1) lm ON true
        ORDER BY c.state_rank, c.waiting_rank ASC NULLS LAST, c.last_activity_at DESC, c.id
    """  # noqa: S608 (our tables; values are parameters)
