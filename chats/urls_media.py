"""The signed media links (`/media/<token>/`), outside `/chats/`: included by the root
URLconf, which imports no app itself."""

from django.urls import path

from chats.views import SignedMediaView

urlpatterns = [
    path("<str:token>/", SignedMediaView.as_view(), name="signed-media"),
]
