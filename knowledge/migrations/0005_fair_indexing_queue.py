"""The fair indexing queue (knowledge.indexing.claim_next) and empty files never deduplicated.

Documents already waiting keep their place (queued when uploaded); a run in progress counts as
claimed at its last update, so one whose worker is gone is failed after the stall timeout.
"""

import django.utils.timezone
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("knowledge", "0004_covering_posting_key"),
        ("tenants", "0001_initial"),
    ]

    operations = [
        migrations.RemoveConstraint(
            model_name="document",
            name="document_unique_tenant_sha256",
        ),
        migrations.AddField(
            model_name="document",
            name="claimed_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="document",
            name="index_attempts",
            field=models.PositiveSmallIntegerField(default=0),
        ),
        migrations.AddField(
            model_name="document",
            name="queued_at",
            field=models.DateTimeField(default=django.utils.timezone.now),
        ),
        migrations.AddIndex(
            model_name="document",
            index=models.Index(
                condition=models.Q(("status", "pending")), fields=["tenant", "queued_at"], name="document_pending_queue"
            ),
        ),
        migrations.AddIndex(
            model_name="document",
            index=models.Index(fields=["tenant", "claimed_at"], name="document_tenant_claimed"),
        ),
        migrations.AddIndex(
            model_name="document",
            index=models.Index(
                condition=models.Q(("status", "processing")),
                fields=["tenant", "claimed_at"],
                name="document_processing",
            ),
        ),
        migrations.AddConstraint(
            model_name="document",
            constraint=models.UniqueConstraint(
                condition=models.Q(("size_bytes__gt", 0)),
                fields=("tenant", "sha256"),
                name="document_unique_tenant_sha256",
            ),
        ),
        migrations.RunSQL(
            "UPDATE knowledge_document SET queued_at = created_at;"
            "UPDATE knowledge_document SET claimed_at = updated_at WHERE status = 'processing';",
            reverse_sql=migrations.RunSQL.noop,
        ),
    ]
