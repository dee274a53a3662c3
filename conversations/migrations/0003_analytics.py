"""The analytics page (conversations.analytics): daily rollups of closed days, and the indexes its
queries read (built concurrently: messages keep being written while they build)."""

import django.contrib.postgres.fields
import django.db.models.deletion
from django.conf import settings
from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ('channels_app', '0002_unrouted_webhook_bounds'),
        ('conversations', '0002_handoff_reason_and_functions'),
        ('tenants', '0001_initial'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name='AnalyticsChannelDay',
            fields=[
                ('id', models.BigAutoField(primary_key=True, serialize=False)),
                ('day', models.DateField()),
                ('messages', models.PositiveIntegerField(default=0)),
                ('prompt_tokens', models.BigIntegerField(default=0)),
                ('completion_tokens', models.BigIntegerField(default=0)),
                ('cost_usd', models.DecimalField(decimal_places=6, default=0, max_digits=16)),
            ],
        ),
        migrations.CreateModel(
            name='AnalyticsDay',
            fields=[
                ('id', models.BigAutoField(primary_key=True, serialize=False)),
                ('day', models.DateField()),
                ('new', models.PositiveIntegerField(default=0)),
                ('resolved', models.PositiveIntegerField(default=0)),
                ('handoffs', models.PositiveIntegerField(default=0)),
                ('unanswered', models.PositiveIntegerField(default=0)),
                ('bot_seconds', django.contrib.postgres.fields.ArrayField(base_field=models.FloatField(), default=list, size=None)),
                ('human_seconds', django.contrib.postgres.fields.ArrayField(base_field=models.FloatField(), default=list, size=None)),
                ('resolution_seconds', django.contrib.postgres.fields.ArrayField(base_field=models.FloatField(), default=list, size=None)),
                ('pending', models.JSONField(default=list)),
                ('computed_at', models.DateTimeField(auto_now_add=True)),
            ],
        ),
        migrations.CreateModel(
            name='AnalyticsDocumentDay',
            fields=[
                ('id', models.BigAutoField(primary_key=True, serialize=False)),
                ('day', models.DateField()),
                ('document_id', models.CharField(max_length=64)),
                ('title', models.CharField(blank=True, default='', max_length=300)),
                ('replies', models.PositiveIntegerField(default=0)),
            ],
        ),
        AddIndexConcurrently(
            model_name='conversation',
            index=models.Index(fields=['tenant', 'created_at'], name='conv_tenant_created'),
        ),
        AddIndexConcurrently(
            model_name='message',
            index=models.Index(fields=['tenant', 'created_at'], include=('channel', 'sender', 'conversation', 'prompt_tokens', 'completion_tokens', 'cost_usd'), name='msg_tenant_created'),
        ),
        AddIndexConcurrently(
            model_name='message',
            index=models.Index(condition=models.Q(('payload__sources', []), ('sender', 'assistant')), fields=['tenant', 'created_at'], name='msg_tenant_uncited'),
        ),
        migrations.AddField(
            model_name='analyticschannelday',
            name='channel',
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='+', to='channels_app.channel'),
        ),
        migrations.AddField(
            model_name='analyticschannelday',
            name='tenant',
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='+', to='tenants.tenant'),
        ),
        migrations.AddField(
            model_name='analyticsday',
            name='tenant',
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='+', to='tenants.tenant'),
        ),
        migrations.AddField(
            model_name='analyticsdocumentday',
            name='tenant',
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='+', to='tenants.tenant'),
        ),
        migrations.AddConstraint(
            model_name='analyticschannelday',
            constraint=models.UniqueConstraint(fields=('tenant', 'day', 'channel'), name='analyticschannelday_unique'),
        ),
        migrations.AddConstraint(
            model_name='analyticsday',
            constraint=models.UniqueConstraint(fields=('tenant', 'day'), name='analyticsday_unique'),
        ),
        migrations.AddConstraint(
            model_name='analyticsdocumentday',
            constraint=models.UniqueConstraint(fields=('tenant', 'day', 'document_id'), name='analyticsdocumentday_unique'),
        ),
    ]
