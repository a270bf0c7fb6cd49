"""The worker's copies of an image, with media in a bucket of the gateway that will not do what is asked."""
from gallery import copies
from gallery.models import Image
from tests import images
from tests.conftest import change_media_store, refuse_writes, store


def test_an_original_the_store_will_not_give_fails_this_attempt_only(db, s3_media, settings):
    image = store(images.jpeg(1))
    change_media_store(settings, LOOKALIKE_S3_SECRET_ACCESS_KEY="not-the-key")
    batch = copies.originals_decode([image], min_side=0)
    assert list(batch.failed) == [image.pk] and not batch.damaged and not batch.pictures
    assert batch.failed[image.pk].startswith("The stored original could not be read: ")
    assert copies.images_make_display_copies(image_ids=[image.pk]) == 0
    image.refresh_from_db()
    assert (image.thumbnail.name, image.display.name) == ("", "")


def test_a_thumbnail_the_store_will_not_take_fails_this_attempt_only(db, s3_media):
    taken, refused = store(images.jpeg(2), "taken.jpg"), store(images.jpeg(3), "refused.jpg")
    refused_thumbnail = copies.copy_name(refused.original.name, "thumbs")
    refuse_writes(s3_media, refused_thumbnail)
    batch = copies.originals_decode([taken, refused], min_side=0)
    assert list(batch.pictures) == [taken.pk] and not batch.damaged
    assert batch.failed[refused.pk].startswith("The thumbnail could not be written: ")
    assert Image.objects.get(pk=taken.pk).thumbnail.name == copies.copy_name(taken.original.name, "thumbs")
    assert Image.objects.get(pk=refused.pk).thumbnail.name == ""
