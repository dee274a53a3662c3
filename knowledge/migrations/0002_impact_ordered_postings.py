# Impact-ordered postings and per-term document frequencies for the keyword leg (docs/knowledge.md,
# "Keyword leg at scale"). Applies to existing data: impacts and document frequencies are computed
# from the stored postings. Reversible: going back drops both and restores the (tenant, term) index.

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

import knowledge.models


def backfill(apps, schema_editor):
    k1, b = float(settings.KNOWLEDGE_BM25_K1), float(settings.KNOWLEDGE_BM25_B)
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(
            """
            UPDATE knowledge_chunkterm p
            SET impact = p.tf * (%(k1)s::float8 + 1)
                / (p.tf + %(k1)s::float8 * (1 - %(b)s::float8 + %(b)s::float8 * p.doc_len / s.avgdl))
            FROM (
                SELECT tenant_id, greatest(total_length::float8 / greatest(chunk_count, 1), 1) AS avgdl
                FROM knowledge_lexicalstats
            ) s
            WHERE p.tenant_id = s.tenant_id
            """,
            {"k1": k1, "b": b},
        )
        cursor.execute(
            """
            INSERT INTO knowledge_termstats (tenant_id, term, df)
            SELECT tenant_id, term, count(*) FROM knowledge_chunkterm GROUP BY tenant_id, term
            """
        )


class Migration(migrations.Migration):
    dependencies = [
        ("knowledge", "0001_initial"),
        ("tenants", "0001_initial"),
    ]

    operations = [
        migrations.CreateModel(
            name="TermStats",
            fields=[
                (
                    "pk",
                    models.CompositePrimaryKey(
                        "tenant", "term", blank=True, editable=False, primary_key=True, serialize=False
                    ),
                ),
                (
                    "tenant",
                    models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to="tenants.tenant",
                    ),
                ),
                ("term", models.CharField(max_length=200)),
                ("df", models.PositiveIntegerField()),
            ],
            options={"verbose_name_plural": "term stats"},
        ),
        migrations.RemoveIndex(model_name="chunkterm", name="chunkterm_term"),
        migrations.AddField(
            model_name="chunkterm", name="impact", field=knowledge.models.RealField(db_default=0)
        ),
        migrations.RunPython(backfill, migrations.RunPython.noop, elidable=True),
        migrations.AddIndex(
            model_name="chunkterm",
            index=models.Index(
                fields=["tenant", "term", "-impact"], include=("chunk", "tf", "doc_len"), name="chunkterm_impact"
            ),
        ),
    ]
