"""Django: AccessGuardMiddleware binds each request's employee; raw SQL and ORM are guarded.

A one-file Django project (settings, a view, a URL) driven by Django's test
client, so it runs without a server. The employee comes from a resolver that
reads ``X-User`` / ``X-Ticket`` headers: trust such headers only behind your
SSO proxy; the default resolver uses ``request.user`` and ``X-Ticket``.

Needs a PostgreSQL server; the scenario's tables are (re)created in the
database named by ACCESSGUARD_DSN (created if missing):

    ACCESSGUARD_DSN=postgresql://postgres@127.0.0.1:5432/accessguard_example \\
        python examples/django_app/shop.py
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import django
import psycopg
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.test import Client
from django.urls import path
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from accessguard import AccessGuardError, scenario

DSN = os.environ.get("ACCESSGUARD_DSN", "postgresql://postgres@127.0.0.1:5432/accessguard_example")
AUDIT = Path(tempfile.gettempdir()) / "accessguard-example-audit.jsonl"


def sso_headers(request: HttpRequest) -> tuple[str, str | None] | None:
    """The employee and ticket an SSO proxy in front of the app vouches for."""
    user = request.headers.get("X-User")
    return (user, request.headers.get("X-Ticket")) if user else None


def customer(_request: HttpRequest, customer_id: int) -> JsonResponse:
    try:
        with connection.cursor() as cur:
            cur.execute("SELECT name, email FROM customers WHERE id = %s", [customer_id])
            return JsonResponse({"rows": cur.fetchall()})
    except AccessGuardError as exc:
        return JsonResponse({"refused": exc.message, "reason": str(exc.reason)}, status=403)


urlpatterns = [path("customers/<int:customer_id>/", customer)]


def prepare(dsn: str) -> None:
    """Create the database if missing and load the reference scenario into it."""
    name = str(conninfo_to_dict(dsn)["dbname"])
    with psycopg.connect(make_conninfo(dsn, dbname="postgres"), autocommit=True) as admin:
        if admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is None:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    with psycopg.connect(dsn) as conn:
        scenario.load_postgres(conn)


def main() -> None:
    prepare(DSN)
    info = conninfo_to_dict(DSN)
    settings.configure(
        ROOT_URLCONF=__name__,
        ALLOWED_HOSTS=["testserver"],
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": info["dbname"],
                "USER": info.get("user", ""),
                "HOST": info.get("host", ""),
                "PORT": str(info.get("port", "")),
            }
        },
        MIDDLEWARE=["accessguard.adapters.django.AccessGuardMiddleware"],
        ACCESSGUARD={
            "POLICIES": str(scenario.policies_dir()),
            "TICKETS": str(scenario.tickets_file()),
            "AUDIT": str(AUDIT),
            "RESOLVER": sso_headers,
        },
    )
    django.setup()
    client = Client()
    for headers in ({"X-User": "alice", "X-Ticket": "T-100"}, {"X-User": "bob"}, {}):
        for customer_id in (42, 7):
            response = client.get(f"/customers/{customer_id}/", headers=headers)
            print(headers or "anonymous", customer_id, response.status_code, response.json())
    print("audit trail:", AUDIT)


if __name__ == "__main__":
    main()
