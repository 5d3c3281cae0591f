"""The Django app of tickwire: add "tickwire.django" to INSTALLED_APPS.

- `tickwire.django.middleware.AccessTokenMiddleware` gives a logged-in
  browser the `access_token` cookie tickwire accepts, so pages open their
  sockets with no token function;
- `tickwire.django.views.token` (or `include("tickwire.django.urls")`)
  answers `{"token": ...}` for clients that want one;
- `manage.py test_websockets` publishes realistic test messages.

Publishing itself is `tickwire.services` (and `tickwire.aio`), which works
with or without this app.
"""
