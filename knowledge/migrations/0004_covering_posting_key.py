"""The postings' primary key carries tf and doc_len (INCLUDE): the keyword leg's exact re-scoring of a
chunk (one probe (tenant, chunk, term = ANY(...)) per candidate) then reads index pages only, not the
table as well: about half the page reads of a search on a tenant whose postings do not fit in memory
(docs/knowledge.md). Django's state is unchanged: the key's columns are the same."""

from django.db import migrations

FORWARD = """
ALTER TABLE knowledge_chunkterm
    DROP CONSTRAINT knowledge_chunkterm_pkey,
    ADD CONSTRAINT knowledge_chunkterm_pkey PRIMARY KEY (tenant_id, chunk_id, term) INCLUDE (tf, doc_len)
"""

BACKWARD = """
ALTER TABLE knowledge_chunkterm
    DROP CONSTRAINT knowledge_chunkterm_pkey,
    ADD CONSTRAINT knowledge_chunkterm_pkey PRIMARY KEY (tenant_id, chunk_id, term)
"""


class Migration(migrations.Migration):
    dependencies = [("knowledge", "0003_embedded_chunk_index")]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
