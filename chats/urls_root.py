"""The chats app's routes outside `/chats/`."""

from django.urls import path

from chats import views

urlpatterns = [
    path("accounts/<id:user_id>/chats/", views.UserChatsView.as_view(), name="user-chats"),
    path("media/<str:token>/", views.SignedMediaView.as_view(), name="signed-media"),
    path("search/messages/", views.MessageSearchView.as_view(), name="message-search"),
]
