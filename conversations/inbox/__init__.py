"""The agent inbox: a live, shared place where a tenant's agents pick conversations up.

- ``services``: assign, read marks, private notes, canned replies, resolve with the satisfaction
  question, ratings, typing (every write scoped by tenant, every change pushed live);
- ``selectors``: the list (waiting first, unread per agent) and one conversation with its contact;
- ``live``: the tenant's channel-layer group, and the event-bus subscriber that pushes messages and
  state changes to it;
- ``consumer``: the staff WebSocket (``/ws/inbox/``, the Django session, one tenant per socket);
- ``views`` / ``urls``: the pages under ``/inbox/`` and their JSON endpoints.
"""
