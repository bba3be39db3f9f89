from django.urls import path

from accounts import views

urlpatterns = [
    path("", views.UserSearchView.as_view(), name="user-search"),
    path("signup/", views.SignupView.as_view(), name="signup"),
    path("login/", views.LoginView.as_view(), name="login"),
    path("logout/", views.LogoutView.as_view(), name="logout"),
    path("me/", views.MeView.as_view(), name="me"),
    path("me/push/", views.PushTokenView.as_view(), name="push-token"),
    path("me/password/", views.PasswordView.as_view(), name="password"),
    path("me/avatar/", views.MyAvatarView.as_view(), name="my-avatar"),
    path("me/devices/", views.DevicesView.as_view(), name="devices"),
    path("me/devices/<id:device_id>/", views.DeviceView.as_view(), name="device"),
    path("<id:user_id>/avatar/", views.AvatarView.as_view(), name="avatar"),
    path("<id:user_id>/avatar/thumbnail/", views.AvatarThumbnailView.as_view(), name="avatar-thumbnail"),
    path("<id:user_id>/", views.UserDetailView.as_view(), name="user-detail"),
    path("<id:user_id>/friends/", views.FriendsView.as_view(), name="friends"),
    path("<id:user_id>/friends/requests/", views.FriendRequestsView.as_view(), name="friend-requests"),
    path("<id:user_id>/friends/<id:friend_id>/", views.FriendView.as_view(), name="friend"),
    path("<id:user_id>/blocks/", views.BlocksView.as_view(), name="blocks"),
    path("<id:user_id>/blocks/<id:blocked_id>/", views.BlockView.as_view(), name="block"),
]
