"""`path("tickwire/", include("tickwire.django.urls"))` gives /tickwire/token/."""

from django.urls import path

from tickwire.django import views

app_name = "tickwire"
urlpatterns = [
    path("token/", views.token, name="token"),
]
