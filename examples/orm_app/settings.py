"""Django settings in code for the support desk (no project scaffold): ``configure(dsn)``."""

from __future__ import annotations

import sys
from pathlib import Path

import django
from django.conf import settings
from psycopg.conninfo import conninfo_to_dict


def configure(dsn: str, **extra: object) -> None:
    """Point Django's default alias at ``dsn``, install the ``desk`` app, and set Django up."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # makes ``desk`` importable
    info = conninfo_to_dict(dsn)
    settings.configure(
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": info["dbname"],
                "USER": info.get("user", ""),
                "HOST": info.get("host", ""),
                "PORT": str(info.get("port", "")),
            }
        },
        INSTALLED_APPS=["desk"],
        USE_TZ=True,
        TIME_ZONE="UTC",
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        **extra,
    )
    django.setup()
