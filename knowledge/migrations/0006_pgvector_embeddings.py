"""Chunk embeddings move from float32 ``bytea`` to a pgvector ``vector`` column (searched in
PostgreSQL: knowledge.vectors), and the per-process vector cache's ``vector_version`` goes.

The extension's SQL objects are first brought to the installed pgvector (a data folder of the
previous embedded build was created with pgvector 0.8.2). The vectors are stored in the row
(``STORAGE MAIN``, see below). Rows are converted in batches of
``BATCH`` by id; the reverse conversion writes the same float32 little-endian bytes back.
"""

import numpy as np
import pgvector.django
from django.db import migrations, models

BATCH = 2000


def _batches(cursor, select: str):
    last = 0
    while True:
        cursor.execute(select, [last, BATCH])
        rows = cursor.fetchall()
        if not rows:
            return
        yield rows
        last = rows[-1][0]


def bytes_to_vectors(apps, schema_editor):
    table = apps.get_model("knowledge", "Chunk")._meta.db_table
    with schema_editor.connection.cursor() as cursor:
        select = f"SELECT id, embedding_bytes FROM {table} WHERE id > %s AND embedding_bytes IS NOT NULL ORDER BY id LIMIT %s"  # noqa: S608
        for rows in _batches(cursor, select):
            ids = [r[0] for r in rows]
            texts = ["[" + ",".join(map(repr, np.frombuffer(bytes(r[1]), dtype="<f4").tolist())) + "]" for r in rows]
            cursor.execute(
                f"UPDATE {table} c SET embedding = v.e::vector FROM unnest(%s::bigint[], %s::text[]) AS v(id, e) WHERE c.id = v.id",  # noqa: S608
                [ids, texts],
            )


def vectors_to_bytes(apps, schema_editor):
    table = apps.get_model("knowledge", "Chunk")._meta.db_table
    with schema_editor.connection.cursor() as cursor:
        select = f"SELECT id, vector_send(embedding) FROM {table} WHERE id > %s AND embedding IS NOT NULL ORDER BY id LIMIT %s"  # noqa: S608
        for rows in _batches(cursor, select):
            ids = [r[0] for r in rows]
            blobs = [np.frombuffer(bytes(r[1])[4:], dtype=">f4").astype("<f4").tobytes() for r in rows]
            cursor.execute(
                f"UPDATE {table} c SET embedding_bytes = v.e FROM unnest(%s::bigint[], %s::bytea[]) AS v(id, e) WHERE c.id = v.id",  # noqa: S608
                [ids, blobs],
            )


class Migration(migrations.Migration):
    dependencies = [
        ("knowledge", "0005_fair_indexing_queue"),
        ("tenants", "0001_initial"),
    ]

    operations = [
        migrations.RunSQL("ALTER EXTENSION vector UPDATE", reverse_sql=migrations.RunSQL.noop),
        migrations.RemoveIndex(model_name="chunk", name="chunk_embedded"),
        migrations.RenameField(model_name="chunk", old_name="embedding", new_name="embedding_bytes"),
        migrations.AddField(
            model_name="chunk",
            name="embedding",
            field=pgvector.django.VectorField(blank=True, editable=False, null=True),
        ),
        # Kept in the row (a 384-d vector is 1.5 kB): with the default (external) storage the row
        # passes the 2 kB TOAST threshold and every distance computed from the table reads the TOAST
        # table first (an exact scan of 3,900 rows took 16 ms instead of ~3). The content goes
        # out of line instead when a row is too large.
        migrations.RunSQL(
            "ALTER TABLE knowledge_chunk ALTER COLUMN embedding SET STORAGE MAIN", reverse_sql=migrations.RunSQL.noop
        ),
        migrations.RunPython(bytes_to_vectors, vectors_to_bytes),
        migrations.RemoveField(model_name="chunk", name="embedding_bytes"),
        migrations.AddIndex(
            model_name="chunk",
            index=models.Index(
                condition=models.Q(("embedding__isnull", False)),
                fields=["tenant", "embedding_model", "id"],
                name="chunk_embedded",
            ),
        ),
        migrations.RemoveField(model_name="lexicalstats", name="vector_version"),
    ]
