"""A/B tests of the assistant (conversations.experiments): sticky assignment, a turn answering with the
contact's variant, results with a confidence interval and a significance test, promote, stop, isolation,
the API's validation and the admin."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from channels_app.models import Channel
from conversations import experiments, queries
from conversations.models import Contact, Conversation, Experiment, Message, SatisfactionRating
from conversations.pipeline.turn import Turn
from events.models import Event
from events.types import EventType
from tenants.models import Tenant
from tenants.services import staff_user_create
from tests.conftest import wait_until
from tests.conversations.conftest import deliver

WARM = {"tone": "warm and playful", "promptAddition": "Always end with 'Cheers!'", "llm": {"model": "gpt-4o"}}


def two_variants(overrides: dict[str, Any] | None = None, shares: tuple[int, int] = (50, 50)) -> list[dict[str, Any]]:
    return [
        {"name": "control", "share": shares[0], "overrides": {}},
        {"name": "warm", "share": shares[1], "overrides": overrides if overrides is not None else WARM},
    ]


def running(tenant: Tenant, goal: str = "resolved_without_human", **kwargs: Any) -> Experiment:
    return experiments.experiment_create(
        tenant=tenant, name="Tone test", goal=goal, variants=kwargs.pop("variants", two_variants()), start=True
    )


# --- assignment ---------------------------------------------------------------------------------------------


def test_assignment_is_deterministic_sticky_and_follows_the_shares(tenant):
    experiment = experiments.experiment_create(
        tenant=tenant,
        name="Three ways",
        goal="cost",
        variants=[
            {"name": "control", "share": 20, "overrides": {}},
            {"name": "brief", "share": 30, "overrides": {"tone": "brief"}},
            {"name": "chatty", "share": 50, "overrides": {"tone": "chatty"}},
        ],
    )
    contacts = [uuid.uuid4() for _ in range(6000)]

    first = [experiments.assign(experiment, c)["name"] for c in contacts]
    again = [experiments.assign(Experiment.objects.get(pk=experiment.pk), c)["name"] for c in contacts]

    assert first == again  # sticky: the same contact, the same variant, whenever asked
    shares = {name: count / len(contacts) for name, count in Counter(first).items()}
    assert shares == pytest.approx({"control": 0.20, "brief": 0.30, "chatty": 0.50}, abs=0.025)
    # Another experiment shuffles the contacts anew (the bucket hashes the experiment's id too).
    other = experiments.experiment_create(tenant=tenant, name="Other", goal="cost", variants=experiment.variants)
    assert [experiments.assign(other, c)["name"] for c in contacts] != first


def test_the_turns_sql_computes_the_same_bucket_as_python(tenant):
    experiment_id = uuid.uuid4()
    contacts = [str(uuid.uuid4()) for _ in range(300)]
    sql = queries.BUCKET_SQL.format(experiment="%s::text", contact="c")
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT c, {sql} FROM unnest(%s::text[]) AS c", [str(experiment_id), contacts])
        from_sql = dict(cursor.fetchall())
    assert from_sql == {c: experiments.bucket(experiment_id, c) for c in contacts}


# --- the turn -----------------------------------------------------------------------------------------------


def contact_in(experiment: Experiment, channel: Channel, variant: str) -> Contact:
    """A contact of the channel whose bucket falls in ``variant`` (contacts are made until one does)."""
    for n in range(200):
        contact = Contact.objects.create(
            tenant_id=experiment.tenant_id, channel=channel, external_id=f"1555000{n:04d}{variant[:1]}"
        )
        if experiments.assign(experiment, contact.pk)["name"] == variant:
            return contact
        contact.delete()
    raise AssertionError("no contact in the variant")


def system_prompts(openai_server: Any) -> list[str]:
    return [r["messages"][0]["content"] for r in openai_server.requests]


def test_a_turn_answers_with_the_contacts_variant_until_the_experiment_stops(
    live_worker, tenant, whatsapp, graph, openai_server
):
    experiment = running(tenant)
    warm = contact_in(experiment, whatsapp, "warm")
    plain = contact_in(experiment, whatsapp, "control")

    deliver(whatsapp, text="Do you ship to Spain?", sender=warm.external_id)
    wait_until(lambda: len(openai_server.requests) == 1)
    deliver(whatsapp, text="Do you ship to Spain?", sender=plain.external_id)
    wait_until(lambda: len(openai_server.requests) == 2)

    warm_prompt, plain_prompt = system_prompts(openai_server)
    assert "Tone: warm and playful." in warm_prompt
    assert "Always end with 'Cheers!'" in warm_prompt
    assert openai_server.requests[0]["model"] == "gpt-4o"
    assert "Tone: friendly." in plain_prompt
    assert "Cheers" not in plain_prompt
    assert openai_server.requests[1]["model"] != "gpt-4o"
    recorded = wait_until(
        lambda: (
            dict(
                Conversation.objects.filter(experiment=experiment).values_list(
                    "contact__external_id", "experiment_variant"
                )
            )
            if Conversation.objects.filter(experiment=experiment).count() == 2
            else None
        )
    )
    assert recorded == {warm.external_id: "warm", plain.external_id: "control"}

    # The contact stays in its variant on its next turn.
    deliver(whatsapp, text="And to Portugal?", sender=warm.external_id)
    wait_until(lambda: len(openai_server.requests) == 3)
    assert "Tone: warm and playful." in system_prompts(openai_server)[2]

    # Stopped: the tenant settings answer again.
    experiments.experiment_stop(tenant=tenant, experiment=experiment)
    deliver(whatsapp, text="And to France?", sender=warm.external_id)
    wait_until(lambda: len(openai_server.requests) == 4)
    assert "Tone: friendly." in system_prompts(openai_server)[3]
    assert "Cheers" not in system_prompts(openai_server)[3]


def test_another_tenants_running_experiment_never_applies(
    live_worker, tenant, other_tenant, whatsapp, graph, openai_server
):
    running(other_tenant, variants=two_variants({"tone": "pirate"}, shares=(1, 99)))

    deliver(whatsapp, text="Hello?")
    wait_until(lambda: len(openai_server.requests) == 1)

    assert "Tone: friendly." in system_prompts(openai_server)[0]
    conversation = wait_until(lambda: Conversation.objects.filter(tenant=tenant).first())
    assert conversation.experiment_id is None and conversation.experiment_variant == ""


def test_the_hook_is_one_statement_with_or_without_an_experiment(tenant, whatsapp):
    contact = Contact.objects.create(tenant=tenant, channel=whatsapp, external_id="15550009999")
    conversation = Conversation.objects.create(tenant=tenant, channel=whatsapp, contact=contact)
    turn = Turn(tenant=tenant, channel=whatsapp, sender_external_id=contact.external_id)
    turn.contact, turn.conversation = contact, conversation

    with CaptureQueriesContext(connection) as none_running:
        experiments.apply(turn)
    assert len(none_running.captured_queries) == 1
    assert turn.config.tone == "friendly"

    experiment = running(tenant, variants=two_variants({"tone": "calm"}, shares=(1, 99)))
    variant = experiments.assign(experiment, contact.pk)["name"]
    turn.tenant = Tenant.objects.get(pk=tenant.pk)
    with CaptureQueriesContext(connection) as applied:
        experiments.apply(turn)
    assert len(applied.captured_queries) == 1  # the read, the assignment and the record in one
    conversation.refresh_from_db()
    assert (conversation.experiment_id, conversation.experiment_variant) == (experiment.pk, variant)
    assert turn.config.tone == ("calm" if variant == "warm" else "friendly")


# --- results -------------------------------------------------------------------------------------------------


def seed_conversations(tenant: Tenant, experiment: Experiment, variant: str, count: int, channel: Channel) -> list:
    made = []
    for _ in range(count):
        contact = Contact.objects.create(tenant=tenant, channel=channel, external_id=uuid.uuid4().hex)
        made.append(
            Conversation.objects.create(
                tenant=tenant, channel=channel, contact=contact, experiment=experiment, experiment_variant=variant
            )
        )
    return made


def needed_a_human(tenant: Tenant, conversations: list, *, by_agent: bool) -> None:
    for conversation in conversations:
        if by_agent:
            Message.objects.create(
                tenant=tenant, conversation=conversation, channel_id=conversation.channel_id, direction="out",
                sender="agent", content="Hi, Ana here",
            )  # fmt: skip
        else:
            Event.objects.create(
                tenant=tenant, type=EventType.HUMAN_HANDOFF_REQUESTED, payload={"conversation_id": str(conversation.pk)}
            )


def by_name(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in results["variants"]}


def test_resolved_without_a_human_gives_the_better_variant_as_significant_winner(tenant, whatsapp):
    experiment = running(tenant)
    control = seed_conversations(tenant, experiment, "control", 100, whatsapp)
    warm = seed_conversations(tenant, experiment, "warm", 100, whatsapp)
    needed_a_human(tenant, control[:25], by_agent=False)  # 40 of the control's reached a human
    needed_a_human(tenant, control[25:40], by_agent=True)
    needed_a_human(tenant, warm[:20], by_agent=False)  # 20 of the warm variant's
    # Another tenant's handoff naming a conversation of ours counts for nothing.
    Event.objects.create(
        tenant=Tenant.objects.create(name="Other", slug="other-x"),
        type=EventType.HUMAN_HANDOFF_REQUESTED,
        payload={"conversation_id": str(warm[50].pk)},
    )

    results = experiments.experiment_results(tenant=tenant, experiment=experiment)

    variants = by_name(results)
    assert variants["control"]["value"] == pytest.approx(0.6)
    assert variants["warm"]["value"] == pytest.approx(0.8)
    assert variants["warm"]["conversations"] == 100
    # Wilson's 95 % interval for 80/100, and the pooled two-proportion z-test (scipy's figures).
    assert (variants["warm"]["ci_low"], variants["warm"]["ci_high"]) == pytest.approx((0.711171, 0.866633), abs=1e-5)
    assert variants["warm"]["p_value"] == pytest.approx(0.0020282, rel=1e-4)
    assert variants["warm"]["significant"] and variants["warm"]["better"]
    assert results["winner"] == "warm"


def test_a_tie_is_not_significant_and_has_no_winner(tenant, whatsapp):
    experiment = running(tenant)
    control = seed_conversations(tenant, experiment, "control", 50, whatsapp)
    warm = seed_conversations(tenant, experiment, "warm", 50, whatsapp)
    needed_a_human(tenant, control[:15], by_agent=False)
    needed_a_human(tenant, warm[:15], by_agent=True)

    results = experiments.experiment_results(tenant=tenant, experiment=experiment)

    assert by_name(results)["warm"]["p_value"] == pytest.approx(1.0)
    assert not by_name(results)["warm"]["significant"]
    assert results["winner"] is None
    with pytest.raises(experiments.ExperimentConflict, match="no variant is significantly better"):
        experiments.experiment_promote(tenant=tenant, experiment=experiment)


def test_satisfaction_uses_welchs_t_test_on_the_ratings(tenant, whatsapp):
    experiment = running(tenant, goal="satisfaction")
    scores = {"control": [3] * 10 + [4] * 10 + [2] * 5, "warm": [4] * 10 + [5] * 10 + [3] * 5}
    for variant, values in scores.items():
        for conversation, score in zip(
            seed_conversations(tenant, experiment, variant, 25, whatsapp), values, strict=True
        ):
            SatisfactionRating.objects.create(tenant=tenant, conversation=conversation, score=score)

    results = experiments.experiment_results(tenant=tenant, experiment=experiment)

    variants = by_name(results)
    assert variants["control"]["value"] == pytest.approx(3.2)
    assert (variants["control"]["ci_low"], variants["control"]["ci_high"]) == pytest.approx((2.884734, 3.515266))
    assert variants["warm"]["value"] == pytest.approx(4.2)
    assert variants["warm"]["p_value"] == pytest.approx(2.8150895e-05, rel=1e-4)  # scipy's ttest_ind(equal_var=False)
    assert results["winner"] == "warm"


def test_cost_is_better_when_lower(tenant, whatsapp):
    experiment = running(tenant, goal="cost")
    for variant, costs in {"control": ["0.002", "0.004"], "warm": ["0.001", "0.002"]}.items():
        for n, conversation in enumerate(seed_conversations(tenant, experiment, variant, 20, whatsapp)):
            Conversation.objects.filter(pk=conversation.pk).update(cost_usd=Decimal(costs[n % 2]))

    results = experiments.experiment_results(tenant=tenant, experiment=experiment)

    variants = by_name(results)
    assert variants["warm"]["difference"] == pytest.approx(-0.0015)
    assert variants["warm"]["p_value"] == pytest.approx(2.7781e-06, rel=1e-3)
    assert results["winner"] == "warm"


def test_the_statistics_match_scipys_figures_and_a_tie_of_means_is_not_significant():
    # Reference values computed with scipy 1.17 (stats.t.ppf, stats.ttest_ind(equal_var=False)).
    assert experiments.t_critical(1) == pytest.approx(12.706205, rel=1e-6)
    assert experiments.t_critical(5) == pytest.approx(2.570582, rel=1e-6)
    assert experiments.t_critical(200) == pytest.approx(1.971896, rel=1e-6)
    assert experiments.welch_t([1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 8.0, 10.0]) == pytest.approx(0.0691336, rel=1e-4)
    ratings = [3.0, 4.0, 5.0, 4.0, 2.0]
    assert experiments.welch_t(ratings, list(reversed(ratings))) == pytest.approx(1.0)
    assert experiments.two_proportion_z(10, 50, 10, 50) == pytest.approx(1.0)


# --- API ---------------------------------------------------------------------------------------------------


def test_api_defines_starts_reads_and_promotes_the_winner(tenant, tenant_api, whatsapp):
    base = f"/api/tenants/{tenant.pk}/experiments/"
    created = tenant_api.post(
        base, {"name": "Tone", "goal": "resolved_without_human", "variants": two_variants()}, format="json"
    )
    assert created.status_code == 201, created.json()
    body = created.json()
    assert body["status"] == "draft"
    assert [v["name"] for v in body["results"]["variants"]] == ["control", "warm"]
    started = tenant_api.post(f"{base}{body['id']}/start/")
    assert started.json()["status"] == "running"
    experiment = Experiment.objects.get(pk=body["id"])
    control = seed_conversations(tenant, experiment, "control", 60, whatsapp)
    seed_conversations(tenant, experiment, "warm", 60, whatsapp)
    needed_a_human(tenant, control[:30], by_agent=False)

    read = tenant_api.get(f"{base}{body['id']}/").json()
    assert read["results"]["winner"] == "warm"
    assert tenant_api.get(base).json()["results"][0]["id"] == body["id"]

    promoted = tenant_api.post(f"{base}{body['id']}/promote/", {}, format="json")

    assert promoted.status_code == 200, promoted.json()
    assert (promoted.json()["status"], promoted.json()["promoted_variant"]) == ("stopped", "warm")
    tenant.refresh_from_db()
    assert tenant.settings["tone"] == "warm and playful"
    assert tenant.settings["promptAddition"] == "Always end with 'Cheers!'"
    assert tenant.settings["llm"]["model"] == "gpt-4o"
    assert tenant.settings["llm"]["temperature"] == 0.3  # the rest of llm kept
    assert tenant_api.post(f"{base}{body['id']}/stop/").status_code == 409


def test_api_refuses_bad_definitions_with_field_errors(tenant, tenant_api):
    base = f"/api/tenants/{tenant.pk}/experiments/"

    def errors(variants: Any, goal: str = "cost") -> dict[str, Any]:
        response = tenant_api.post(base, {"name": "X", "goal": goal, "variants": variants}, format="json")
        assert response.status_code == 400, response.json()
        return response.json()["error"]["details"]

    assert errors(two_variants(shares=(50, 40))) == {"variants": ["the shares must sum to 100 (they sum to 90)"]}
    assert "variants.1.overrides.tone" in errors(two_variants({"tone": "x" * 61}))
    assert "variants.1.overrides.ragConfig.topK" in errors(two_variants({"ragConfig": {"topK": 0}}))
    assert errors(two_variants({"brandName": "Other"})) == {
        "variants.1.overrides": ["only tone, promptAddition, ragConfig, llm can vary; not brandName"]
    }
    assert "variants.1.overrides.llm" in errors(two_variants({"llm": {"provider": "openai"}}))
    assert "variants.1.name" in errors([{"name": "a", "share": 50}, {"name": "a", "share": 50}])
    assert "variants" in errors([{"name": "only", "share": 100}])
    response = tenant_api.post(base, {"name": "X", "goal": "happiness", "variants": two_variants()}, format="json")
    assert response.status_code == 400 and "goal" in response.json()["error"]["details"]
    assert Experiment.objects.count() == 0


def test_one_running_experiment_per_tenant(tenant, other_tenant, tenant_api):
    base = f"/api/tenants/{tenant.pk}/experiments/"
    first = {"name": "A", "goal": "cost", "variants": two_variants(), "start": True}
    assert tenant_api.post(base, first, format="json").status_code == 201
    running(other_tenant)  # another tenant's running experiment is no obstacle

    second = tenant_api.post(base, {**first, "name": "B"}, format="json")

    assert second.status_code == 409
    assert second.json()["error"]["code"] == "experiment_conflict"


def test_another_tenants_experiment_answers_404(tenant, other_tenant, api_for):
    theirs = running(other_tenant)
    client = api_for(tenant)
    base = f"/api/tenants/{tenant.pk}/experiments/{theirs.pk}/"

    assert client.get(base).status_code == 404
    assert client.post(base + "stop/").status_code == 404
    assert client.post(base + "promote/", {"variant": "warm"}, format="json").status_code == 404
    assert client.get(f"/api/tenants/{other_tenant.pk}/experiments/").status_code == 404
    assert client.get(f"/api/tenants/{tenant.pk}/experiments/").json()["results"] == []
    theirs.refresh_from_db()
    assert theirs.status == "running"
    other_tenant.refresh_from_db()
    assert other_tenant.settings["tone"] == "friendly"


# --- admin ---------------------------------------------------------------------------------------------------


def test_admin_shows_the_tenants_results_and_promotes(client, tenant, other_tenant, whatsapp):
    ours = running(tenant)
    control = seed_conversations(tenant, ours, "control", 60, whatsapp)
    seed_conversations(tenant, ours, "warm", 60, whatsapp)
    needed_a_human(tenant, control[:30], by_agent=True)
    theirs = running(other_tenant)
    owner, _ = staff_user_create(tenant=tenant, username="olga", role="owner", password="pw-olga-123456")
    client.force_login(owner)

    listing = client.get("/admin/conversations/experiment/")
    assert listing.status_code == 200
    assert list(listing.context["cl"].queryset) == [ours]
    assert client.get(f"/admin/conversations/experiment/{theirs.pk}/change/").status_code in (302, 404)
    page = client.get(f"/admin/conversations/experiment/{ours.pk}/change/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "Winner: <strong>warm</strong>" in html
    assert "warm and playful" in html

    response = client.post(
        "/admin/conversations/experiment/",
        {"action": "promote_winners", "_selected_action": [str(ours.pk), str(theirs.pk)]},
    )

    assert response.status_code == 302
    tenant.refresh_from_db()
    other_tenant.refresh_from_db()
    assert tenant.settings["tone"] == "warm and playful"
    assert other_tenant.settings["tone"] == "friendly"
    assert Experiment.objects.get(pk=theirs.pk).status == "running"


def test_admin_form_validates_the_variants(client, tenant):
    owner, _ = staff_user_create(tenant=tenant, username="olga", role="owner", password="pw-olga-123456")
    client.force_login(owner)

    bad = client.post(
        "/admin/conversations/experiment/add/",
        {"name": "X", "goal": "cost", "variants": json.dumps(two_variants(shares=(50, 60)))},
    )
    assert bad.status_code == 200
    assert "the shares must sum to 100" in bad.content.decode()
    good = client.post(
        "/admin/conversations/experiment/add/",
        {"name": "X", "goal": "cost", "variants": json.dumps(two_variants())},
    )
    assert good.status_code == 302
    assert Experiment.objects.get().tenant_id == tenant.pk
