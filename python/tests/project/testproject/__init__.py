"""A tiny Django project as a Channels deployment would have it after the
switch: session login, the tickwire app and middleware, a dashboard page
using the browser client's unchanged calls. Used by the pytest suite and by
tests/browser/django.test.mjs."""
