"""Finding 15: 30 wrong admin passwords in 17 s, then the right one still worked. Driven as the attacker
did: form POSTs to /admin/login/ (with the CSRF token the page hands out), from chosen addresses."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.test import Client

pytestmark = pytest.mark.django_db

URL = "/admin/login/"
PASSWORD = "the-right-password-4711"


@pytest.fixture
def staff(settings: Any) -> Any:
    # Failures are counted in fixed windows: a year-long one keeps a window's end out of every test.
    settings.ADMIN_LOGIN_WINDOW_SECONDS = 365 * 86400
    return get_user_model().objects.create_superuser("ops", "", PASSWORD)


def login(address: str, username: str, password: str) -> Any:
    """A fresh browser: fetch the page for its CSRF token, then post the form."""
    browser = Client(enforce_csrf_checks=True, REMOTE_ADDR=address)
    page = browser.get(URL).content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    return browser.post(
        URL, {"csrfmiddlewaretoken": token, "username": username, "password": password, "next": "/admin/"}
    )


def logged_in(response: Any) -> bool:
    return response.status_code == 302 and response["Location"] == "/admin/"


def test_right_password_is_refused_after_five_failures_from_one_address(staff):
    failures = [login("203.0.113.40", "ops", f"guess-{n}") for n in range(5)]

    refused = login("203.0.113.40", "ops", PASSWORD)

    assert [r.status_code for r in failures] == [200] * 5
    assert "Please enter the correct username and password" in failures[-1].content.decode()
    assert refused.status_code == 429
    assert not logged_in(refused)
    assert 1 <= int(refused["Retry-After"]) <= django_settings.ADMIN_LOGIN_WINDOW_SECONDS
    assert "Too many failed logins; this login is locked for" in refused.content.decode()


def test_the_lockout_of_one_address_does_not_lock_the_staff_member_out_elsewhere(staff):
    for n in range(5):
        login("203.0.113.41", "ops", f"guess-{n}")

    assert logged_in(login("198.51.100.41", "ops", PASSWORD))


def test_a_spray_over_many_usernames_locks_the_address(staff, settings):
    settings.ADMIN_LOGIN_FAILURES_PER_ADDRESS = 6
    for n in range(6):
        login("203.0.113.42", f"user{n}", "password")

    refused = login("203.0.113.42", "ops", PASSWORD)

    assert refused.status_code == 429
    assert not logged_in(refused)
