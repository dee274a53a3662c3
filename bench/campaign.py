"""Campaign sending: does the runner hold the configured throughput, and what does a message cost?

Creates a throw-away database, a WhatsApp channel pointed at a local Graph API server (templates and
messages, answered at once), --contacts opted-in contacts and a campaign at --rate messages/s, then
runs ``channels_app.services.campaigns.run_campaign`` in this process (as the Celery task does) and
prints the messages/s reached against the limit, and this process's CPU per message (the Graph server
runs in its own thread of this process: its CPU is included, an upper bound).

    python -m bench.campaign                        # 2,000 contacts at 80/s (Meta's default throughput)
    python -m bench.campaign --rate 1000            # how fast one runner can go at the upgraded limit
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from bench._http import send_json
from bench._knowledge_setup import setup_django

WABA = "2233445566778"
PNID = "1122334455667"
TEMPLATE = {
    "id": "1",
    "name": "spring_offer",
    "language": "en_US",
    "category": "MARKETING",
    "status": "APPROVED",
    "components": [{"type": "BODY", "text": "Hi {{1}}, 20% off until Sunday."}],
}


class GraphHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    sent = 0
    lock = threading.Lock()

    def log_message(self, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _answer(self, body: dict[str, Any]) -> None:
        send_json(self, body)

    def do_GET(self) -> None:
        self._answer({"data": [TEMPLATE], "paging": {"cursors": {"after": "1"}}})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        with GraphHandler.lock:
            GraphHandler.sent += 1
            n = GraphHandler.sent
        self._answer({"messaging_product": "whatsapp", "contacts": [{"input": body.get("to")}],
                      "messages": [{"id": f"wamid.{n}"}]})  # fmt: skip


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.campaign", description=__doc__.split("\n")[0])
    parser.add_argument("--contacts", type=int, default=2000, help="opted-in contacts (default 2000)")
    parser.add_argument("--rate", type=float, default=80.0, help="the campaign's messages/s limit (default 80)")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    setup_django(f"benchcampaign{os.getpid()}")

    from django.conf import settings
    from django.db import connection

    server = ThreadingHTTPServer(("127.0.0.1", 0), GraphHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    settings.GRAPH_API_BASE_URL = f"http://127.0.0.1:{server.server_address[1]}"
    db_name = f"bench_campaign_{os.getpid()}"
    connection.settings_dict["TEST"]["NAME"] = db_name
    original_name = connection.settings_dict["NAME"]
    connection.creation.create_test_db(verbosity=0, autoclobber=True, keepdb=False)
    try:
        from channels_app import services
        from channels_app.models import MessageTemplate
        from channels_app.services import campaigns, templates
        from tenants.services import tenant_create

        tenant = tenant_create(name="Bench campaign")
        channel = services.channel_create(
            tenant=tenant, type="whatsapp", name="Bench", external_id=PNID, config={"waba_id": WABA},
            credentials={"access_token": "EAAbench", "app_secret": "bench-secret"},
        )  # fmt: skip
        templates.templates_sync(channel=channel)
        csv_text = "contact,first_name\n" + "".join(f"1555{i:07d},Name{i}\n" for i in range(args.contacts))
        campaigns.consent_import_csv(channel=channel, text=csv_text)
        campaign = campaigns.campaign_create(
            channel=channel, name="Bench", template=MessageTemplate.objects.get(), variables={"body": ["{first_name}"]},
            rate_per_second=args.rate, daily_limit=args.contacts * 2,
        )  # fmt: skip
        campaigns.campaign_start(campaign=campaign)
        print(f"campaign bench: {args.contacts} opted-in contacts, limit {args.rate:g} messages/s", flush=True)
        wall, cpu = time.perf_counter(), time.process_time()
        outcome = "continue"
        while outcome == "continue":
            outcome, _wait = campaigns.run_campaign(campaign_id=campaign.pk, budget_seconds=3600)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        totals = campaigns.campaign_totals(campaign)
        print(f"outcome {outcome}: sent {totals['sent']}, failed {totals['failed']}, Graph calls {GraphHandler.sent}")
        print(f"throughput: {totals['sent'] / wall:.1f} messages/s against a limit of {args.rate:g}/s ({wall:.1f} s)")
        print(f"CPU per message: {cpu / max(1, totals['sent']) * 1000:.2f} ms (this process, Graph server included)")
    finally:
        server.shutdown()
        connection.creation.destroy_test_db(original_name, verbosity=0)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
