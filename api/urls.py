from django.urls import path, re_path

from api import account_views, views

app_name = "api"

urlpatterns = [
    path("api/v1/images", views.images, name="images"),
    re_path(r"^api/v1/images/(?P<image_id>[^/]+)$", views.image, name="image"),
    re_path(r"^api/v1/images/(?P<image_id>[^/]+)/recommendations$", views.image_recommendations,
            name="image_recommendations"),
    path("api/v1/recommendations", views.user_recommendations, name="user_recommendations"),
    path("api/v1/clusters", views.clusters_list, name="clusters"),
    re_path(r"^api/v1/clusters/(?P<cluster_id>[^/]+)/images$", views.cluster_images, name="cluster_images"),
    path("api/v1/search", views.search, name="search"),
    path("api/v1/openapi.json", views.openapi, name="openapi"),
    path("api/v1/docs/", views.docs, name="docs"),
    # Anything else under the API is answered in JSON too, never with the site's HTML pages.
    re_path(r"^api/(?P<rest>.*)$", views.not_found),
    path("account/", account_views.account, name="account"),
    path("account/tokens/", account_views.token_create, name="token_create"),
    path("account/tokens/<int:token_id>/revoke/", account_views.token_revoke, name="token_revoke"),
]
