from django.urls import path

from search import views

app_name = "search"

urlpatterns = [
    path("search/", views.search, name="search"),
    path("images/<int:image_id>/similar/", views.similar, name="similar"),
]
