from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("", include("api.urls")),
    path("", include("search.urls")),
    path("", include("gallery.urls")),
]

# Errors raised before any view (a disallowed Host header, say) are answered in JSON under /api/.
handler400 = "api.views.bad_request"
handler500 = "api.views.server_error"
