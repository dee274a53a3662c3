"""Turns of one conversation run one at a time and in order across worker threads; bursts coalesce."""

from __future__ import annotations

import threading
import time

from channels_app.models import InboundEvent
from conversations import pipeline
from conversations.models import Message
from tests.conftest import wait_until
from tests.conversations.conftest import deliver


def user_contents(body):
    return [m["content"] for m in body["messages"] if m["role"] == "user"]


def test_one_conversation_hammered_by_concurrent_workers_is_answered_in_order_one_turn_at_a_time(
    live_worker, whatsapp, graph, openai_server
):
    # The live worker runs 4 threads, so the 8 tasks below are picked up concurrently.
    openai_server.default = lambda body: {"content": "ok: " + user_contents(body)[-1], "delay": 0.15}
    sent = [f"message {i}" for i in range(8)]
    for text in sent:
        deliver(whatsapp, text=text)

    # One query: "none unprocessed" then "eight in all" as two reads could see the first burst answered
    # and the second burst stored but not yet answered.
    wait_until(lambda: Message.objects.filter(sender="user", status="processed").count() == 8, timeout=30)

    assert openai_server.max_in_flight == 1  # never two turns of this conversation at once
    # Every message answered exactly once, in arrival order, across however many turns it took.
    replies = list(Message.objects.filter(sender="assistant").order_by("id"))
    answered = [pk for reply in replies for pk in reply.payload["in_reply_to"]]
    user_ids = list(Message.objects.filter(sender="user").order_by("id").values_list("id", flat=True))
    assert answered == user_ids
    assert list(Message.objects.filter(sender="user").order_by("id").values_list("content", flat=True)) == sent
    assert user_contents(openai_server.requests[-1]) == sent  # the last turn saw the whole history in order
    assert len(graph.texts) == len(replies) == len(openai_server.requests)
    assert set(InboundEvent.objects.values_list("status", flat=True)) == {"processed"}


def test_lock_holder_picks_up_events_whose_task_found_the_lock_taken(transactional_db, whatsapp, graph, settings):
    """Without a worker: two threads call the task body at once for two messages of one contact."""
    settings.TURN_DEBOUNCE_SECONDS = 0
    from django.db import transaction

    from channels_app.adapters.base import NormalizedMessage
    from channels_app.inbound import record_inbound

    ids = []
    for n in range(2):
        message = NormalizedMessage(
            platform="whatsapp", channel_external_id=whatsapp.external_id, message_id=f"wamid.lock{n}",
            sender_id="15550009999", timestamp=time.time(), type="text", text=f"question {n}",
        )  # fmt: skip
        with transaction.atomic():
            ids += record_inbound(channel=whatsapp, messages=[message])
    barrier = threading.Barrier(2)
    results: dict[int, int] = {}

    def work(inbound_id: int) -> None:
        from django.db import connection

        barrier.wait()
        try:
            results[inbound_id] = pipeline.process_inbound(inbound_event_id=inbound_id)
        finally:
            connection.close()

    threads = [threading.Thread(target=work, args=(i,)) for i in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert set(InboundEvent.objects.filter(pk__in=ids).values_list("status", flat=True)) == {"processed"}
    assert sum(results.values()) >= 1
    assert Message.objects.filter(sender="user", status="processed").count() == 2
    assert graph.text_bodies()[-1].startswith("I couldn't find anything about that")


def test_a_burst_of_messages_is_answered_once_with_all_of_them(live_worker, whatsapp, graph, openai_server, settings):
    settings.TURN_DEBOUNCE_SECONDS = 0.7
    openai_server.default = lambda body: {"content": "One answer to everything."}

    deliver(whatsapp, text="Hi")
    deliver(whatsapp, text="I ordered a lamp")
    deliver(whatsapp, text="it arrived broken")

    wait_until(lambda: graph.texts)
    # A later message: its turn runs after any other turn of the burst (one contact, one turn at a time).
    deliver(whatsapp, text="thanks")
    wait_until(lambda: len(graph.texts) >= 2)
    assert graph.text_bodies() == ["One answer to everything."] * 2
    assert len(openai_server.requests) == 2
    assert user_contents(openai_server.requests[0]) == ["Hi", "I ordered a lamp", "it arrived broken"]

    def sent_replies() -> list[Message] | None:
        replies = list(Message.objects.filter(sender="assistant", status="sent").order_by("id"))
        return replies if len(replies) == 2 else None

    assert [len(reply.payload["in_reply_to"]) for reply in wait_until(sent_replies)] == [3, 1]


def test_a_contact_still_writing_holds_no_worker_thread_while_their_burst_is_awaited(
    live_worker, whatsapp, graph, openai_server, settings
):
    from channels_app.adapters.base import NormalizedMessage
    from channels_app.inbound import record_inbound

    settings.TURN_DEBOUNCE_SECONDS = 1.0
    openai_server.default = lambda body: {"content": "Both answered."}
    message = NormalizedMessage(
        platform="whatsapp", channel_external_id=whatsapp.external_id, message_id=f"wamid.typing{time.time_ns()}",
        sender_id="15551234567", timestamp=time.time(), type="text", text="I have a question",
    )  # fmt: skip
    (first,) = record_inbound(channel=whatsapp, messages=[message])

    # The task body for a message that has just arrived: it does not wait for the burst to end...
    assert pipeline.process_inbound(inbound_event_id=first) == 0
    assert InboundEvent.objects.get(pk=first).status == "pending"
    assert graph.texts == []
    # ...it asks again once the burst may be over, and the worker answers it with what came meanwhile.
    deliver(whatsapp, text="about my order")
    wait_until(lambda: graph.texts, timeout=15)
    assert graph.text_bodies() == ["Both answered."]
    assert user_contents(openai_server.requests[0]) == ["I have a question", "about my order"]


def _record(whatsapp, text: str, sender: str = "15557654321") -> int:
    """A message stored as the webhook stores it (its own task is published when it commits)."""
    from channels_app.adapters.base import NormalizedMessage
    from channels_app.inbound import record_inbound

    message = NormalizedMessage(
        platform="whatsapp", channel_external_id=whatsapp.external_id, message_id=f"wamid.{time.time_ns()}",
        sender_id=sender, timestamp=time.time(), type="text", text=text,
    )  # fmt: skip
    (inbound_id,) = record_inbound(channel=whatsapp, messages=[message])
    return inbound_id


def _turn_with_a_message_written_during_it(whatsapp, openai_server, before_second=None, when_written=None) -> list[int]:
    """Runs the task body for a first message in this thread (the worker's threads are busy, so this call
    takes the message before its own task does); a second one arrives while its LLM call is in flight
    (``when_written`` is called with its id then). Returns what the task body returned (how many turns
    it ran)."""
    asked = threading.Event()

    def answer(body):
        text = user_contents(body)[-1]
        if "question" not in text:  # another contact's turn holds a thread: the first frees at 1.5 s
            return {"content": "answer to " + text, "delay": 1.5 if text.endswith("0000") else 3}
        asked.set()
        return {"content": "answer to " + text, "delay": 0.4}

    openai_server.default = answer
    if before_second is not None:
        before_second()
    first = _record(whatsapp, "first question")
    returned: list[int] = []

    def task_body() -> None:
        from django.db import connection

        try:
            returned.append(pipeline.process_inbound(inbound_event_id=first))
        finally:
            connection.close()

    thread = threading.Thread(target=task_body)
    thread.start()
    assert asked.wait(10)
    second = _record(whatsapp, "second question")  # written while the first turn waits for the LLM
    if when_written is not None:
        when_written(second)
    thread.join(30)
    return returned


def test_a_message_written_during_a_turn_goes_behind_other_contacts_waiting_in_the_queue(
    live_worker, whatsapp, graph, openai_server, settings
):
    """Other contacts' turns wait in the queue (the worker's 4 threads are busy with 4 others): what the
    contact wrote meanwhile gets a task at the back of the queue instead of being answered by the same
    task, so a contact who keeps writing cannot keep a thread while others wait (with fewer threads than
    writing contacts, serving them inline made the others wait up to 4 s in bench.turn)."""
    settings.TURN_DEBOUNCE_SECONDS = 0
    others = [f"1555000{n:04d}" for n in range(5)]

    def fill_the_worker() -> None:
        for sender in others:
            deliver(whatsapp, text=f"hello from {sender}", sender=sender)
        wait_until(lambda: len(openai_server.requests) >= 4)  # 4 threads busy, the fifth task queued

    returned = _turn_with_a_message_written_during_it(whatsapp, openai_server, before_second=fill_the_worker)

    assert returned == [1]  # its own burst only
    wait_until(lambda: len(graph.texts) == 7, timeout=30)
    # The fifth contact, queued before the second message was written, has its turn first (the first
    # thread to free up takes it); the second message's turn starts when the next one frees up.
    asked = [user_contents(request)[-1] for request in openai_server.requests]
    assert asked.index(f"hello from {others[4]}") < asked.index("second question")
    replies = graph.text_bodies()
    assert replies.index("answer to first question") < replies.index("answer to second question")


def test_a_message_whose_task_finds_the_turn_running_is_answered_next_by_that_turn(
    transactional_db, whatsapp, graph, openai_server, settings
):
    """The second message's task came while the first turn ran: it has had its place in the queue, so
    it gives up and the running turn answers the message next, instead of queueing it again."""
    settings.TURN_DEBOUNCE_SECONDS = 0
    its_task = []

    def its_task_comes(second: int) -> None:
        its_task.append(pipeline.process_inbound(inbound_event_id=second))
        its_task.append(InboundEvent.objects.get(pk=second).turn_busy_at)

    returned = _turn_with_a_message_written_during_it(whatsapp, openai_server, when_written=its_task_comes)

    turns, marked = its_task
    assert turns == 0 and marked is not None  # the turn was running: the task left the message to it
    assert returned == [2]  # the first message's turn, then the second's, in the same call
    assert graph.text_bodies() == ["answer to first question", "answer to second question"]
    assert set(InboundEvent.objects.values_list("status", flat=True)) == {"processed"}
