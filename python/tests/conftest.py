"""Fixtures: one tickwire for the session (the Django project's settings
point at it through TICKWIRE_URL, TICKWIRE_API_KEY and TICKWIRE_JWT_SECRET,
as a deployment's environment would), the test project set up on an sqlite
file in a temporary directory, its users, and the project served over HTTP.
Tests that stop a server start their own (`own_tickwire`)."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import PASSWORD, PROJECT, Tickwire, serve_django

USERS = ("alice", "bob", "carol")


@pytest.fixture(scope="session")
def tickwire_server() -> Iterator[Tickwire]:
    server = Tickwire().start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def project_env(tickwire_server: Tickwire) -> Iterator[dict[str, str]]:
    """The environment the project runs in; also set in os.environ, so that
    this process's Django reads the same."""
    scratch = Path(tempfile.mkdtemp(prefix="tickwire-django-"))
    env = {
        "TICKWIRE_URL": tickwire_server.url,
        "TICKWIRE_API_KEY": tickwire_server.api_key,
        "TICKWIRE_JWT_SECRET": tickwire_server.jwt_secret,
        "TESTPROJECT_DB": str(scratch / "db.sqlite3"),
        "DJANGO_SETTINGS_MODULE": "testproject.settings",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield {**os.environ, **env, "PYTHONPATH": str(PROJECT)}
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    shutil.rmtree(scratch, ignore_errors=True)


@pytest.fixture(scope="session")
def django_project(project_env: dict[str, str]) -> dict[str, Any]:
    """Django set up on the test project, migrated, with its users."""
    sys.path.insert(0, str(PROJECT))
    import django
    from django.core.management import call_command

    import tickwire

    django.setup()
    tickwire.config.reset()
    call_command("migrate", verbosity=0, interactive=False)
    from django.contrib.auth import get_user_model

    model = get_user_model()
    users = {}
    for name in USERS:
        user = model.objects.filter(username=name).first()
        if user is None:
            user = model.objects.create_user(name, password=PASSWORD)
        users[name] = user
    return users


@pytest.fixture(scope="session")
def live_django(django_project: dict[str, Any]) -> Iterator[str]:
    with serve_django() as url:
        yield url


@pytest.fixture
def users(django_project: dict[str, Any]) -> dict[str, Any]:
    return django_project


@pytest.fixture
def own_tickwire() -> Iterator[Tickwire]:
    """A server of the test's own, which it may stop."""
    server = Tickwire().start()
    yield server
    server.kill()
    server.close()


@pytest.fixture(autouse=True)
def _fresh_connections() -> Iterator[None]:
    """Each test starts without a kept connection of an earlier one."""
    yield
    import tickwire

    tickwire.default_publisher().close()
