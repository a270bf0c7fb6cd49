from django.urls import path

from gallery import views

app_name = "gallery"

urlpatterns = [
    path("", views.index, name="index"),
    path("browse/", views.browse, name="browse"),
    path("browse/<int:cluster_id>/", views.browse_cluster, name="browse_cluster"),
    path("upload/", views.upload, name="upload"),
    path("images/states/", views.states, name="states"),
    path("images/<int:image_id>/", views.detail, name="detail"),
    path("images/<int:image_id>/delete/", views.delete, name="delete"),
    path("images/<int:image_id>/original/", views.original, name="original"),
    path("media/<path:path>", views.media, name="media"),
]
