from django.urls import path

from chats import views

urlpatterns = [
    path("", views.ChatsView.as_view(), name="chats"),
    path("<id:chat_id>/", views.ChatDetailView.as_view(), name="chat-detail"),
    path("sync/", views.SyncView.as_view(), name="sync"),
    path("<id:chat_id>/messages/", views.ChatMessagesView.as_view(), name="chat-messages"),
    path("<id:chat_id>/messages/<id:message_id>/", views.MessageDetailView.as_view(), name="message"),
    path(
        "<id:chat_id>/messages/<id:message_id>/attachment/",
        views.AttachmentView.as_view(),
        name="attachment",
    ),
    path(
        "<id:chat_id>/messages/<id:message_id>/attachment/thumbnail/",
        views.ThumbnailView.as_view(),
        name="attachment-thumbnail",
    ),
    path(
        "<id:chat_id>/messages/<id:message_id>/attachment/link/",
        views.AttachmentLinkView.as_view(),
        name="attachment-link",
    ),
    path(
        "<id:chat_id>/messages/<id:message_id>/reactions/<str:emoji>/",
        views.ReactionView.as_view(),
        name="reaction",
    ),
    path("<id:chat_id>/typing/", views.TypingView.as_view(), name="typing"),
    # pins, forwards, invitations
    path("<id:chat_id>/pins/", views.ChatPinsView.as_view(), name="chat-pins"),
    path("<id:chat_id>/messages/<id:message_id>/pin/", views.MessagePinView.as_view(), name="message-pin"),
    path("<id:chat_id>/messages/<id:message_id>/answer/", views.InviteAnswerView.as_view(), name="invite-answer"),
    path("<id:chat_id>/users/", views.ChatMembersView.as_view(), name="chat-members"),
    path("<id:chat_id>/users/<id:user_id>/", views.ChatMemberView.as_view(), name="chat-member"),
    path(
        "<id:chat_id>/users/<id:user_id>/messages/<id:message_id>/",
        views.PointerView.as_view(),
        name="read-pointer",
    ),
    path(
        "<id:chat_id>/users/<id:user_id>/delivered/<id:message_id>/",
        views.DeliveredPointerView.as_view(),
        name="delivered-pointer",
    ),
]
