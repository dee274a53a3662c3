"""Meta webhook bodies in their wire format (see ../shared/meta-formats.md), for the tests and the
benchmarks: one builder per shape, so a format change is made once."""

from __future__ import annotations

import time
from typing import Any


def whatsapp_payload(
    *, phone_number_id: str, sender: str, text: str, wamid: str, name: str = "Alice"
) -> dict[str, Any]:
    """A WhatsApp Cloud API notification carrying one text message from ``sender``."""
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "102290129340398",
                "changes": [
                    {
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {"display_phone_number": "15550001111", "phone_number_id": phone_number_id},
                            "contacts": [{"profile": {"name": name}, "wa_id": sender}],
                            "messages": [
                                {
                                    "from": sender,
                                    "id": wamid,
                                    "timestamp": str(int(time.time())),
                                    "text": {"body": text},
                                    "type": "text",
                                }
                            ],
                        },
                        "field": "messages",
                    }
                ],
            }
        ],
    }
