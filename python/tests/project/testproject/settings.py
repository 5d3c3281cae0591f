"""Settings of the test project. tickwire's URL, API key and JWT secret
come from TICKWIRE_URL, TICKWIRE_API_KEY and TICKWIRE_JWT_SECRET (the tests
start a tickwire and set them); the database is an sqlite file at
$TESTPROJECT_DB."""

import os
import tempfile
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent

SECRET_KEY = "tests-only-not-a-secret"
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "tickwire.django",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "tickwire.django.middleware.AccessTokenMiddleware",
]

ROOT_URLCONF = "testproject.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": False,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
            ],
        },
    }
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get(
            "TESTPROJECT_DB", str(Path(tempfile.gettempdir()) / "tickwire-testproject.sqlite3")
        ),
    }
}
# Fast password checks: these are test users.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = True
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/dashboard/"

TICKWIRE = {
    "TOKEN_TTL": 3600,
    "SYMBOLS": "testproject.hooks.symbols",
    "RETRY_FOR": 3,
    "TIMEOUT": 3,
}
