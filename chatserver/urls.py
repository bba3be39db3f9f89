from django.contrib import admin
from django.urls import include, path, register_converter
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from chatserver.broker_auth import broker_auth_view
from chatserver.urls_converters import IdConverter
from chatserver.views import HealthView

# Before the includes below: their patterns use <id:...>.
register_converter(IdConverter, "id")

urlpatterns = [
    path("accounts/", include("accounts.urls")),
    path("chats/", include("chats.urls")),
    path("", include("chats.urls_root")),
    path("health/", HealthView.as_view(), name="health"),
    # RabbitMQ's HTTP auth backend; the front server serves it on a loopback listener only.
    path("broker-auth/<str:secret>/<str:kind>", broker_auth_view, name="broker-auth"),
    # The operators' admin (`manage.py createsuperuser` for the first operator).
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    # ReDoc without its Google Fonts link: see the template.
    path("api/redoc/", SpectacularRedocView.as_view(url_name="schema", template_name="chatserver/redoc.html"), name="redoc"),
]

handler400 = "chatserver.exception_handler.handler400"
handler403 = "chatserver.exception_handler.handler403"
handler404 = "chatserver.exception_handler.handler404"
handler500 = "chatserver.exception_handler.handler500"
