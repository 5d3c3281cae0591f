from decimal import Decimal

from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import include, path
from django.views.decorators.http import require_POST

import tickwire
from tickwire.services import market_broadcaster, notification_broadcaster


@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    return render(request, "dashboard.html", {"symbol": request.GET.get("symbol", "BTC-USD")})


def home(request: HttpRequest) -> HttpResponse:
    return HttpResponse("home")


@login_required
@require_POST
def trade(request: HttpRequest) -> HttpResponse:
    """A view as an app has them: it books a trade and tells the trader."""
    symbol = request.POST.get("symbol", "BTC-USD")
    price = Decimal(request.POST.get("price", "45000.00"))
    with tickwire.batch():
        market_broadcaster.broadcast_market_update(symbol, price)
        notification_broadcaster.send_notification(
            request.user, "Trade Executed", f"BUY 1 {symbol} @ ${price}", "trade", "high"
        )
    return HttpResponse("booked", status=201)


urlpatterns = [
    path("", home),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("dashboard/", dashboard, name="dashboard"),
    path("trade/", trade, name="trade"),
    path("tickwire/", include("tickwire.django.urls")),
]
