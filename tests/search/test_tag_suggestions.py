"""Tag suggestions: the vote of the nearest tagged images, the classifier's words before anything is
tagged, what curators decide, and that no image lends its tags to someone who may not see it."""
import pytest

from gallery.models import Image, Tag, TagSuggestion
from search import tag_suggestions
from tests import images
from tests.conftest import store_indexed


def bench(category: str, number: int, owner=None) -> Image:
    return store_indexed(images.bench_image(category, number).read_bytes(), f"{category}-{number}.jpg", owner)


def tagged(image: Image, *names: str) -> Image:
    image.tags.add(*[Tag.objects.get_or_create(name=name)[0] for name in names])
    return image


def open_for(image: Image) -> dict[str, TagSuggestion]:
    return {s.tag.name: s for s in tag_suggestions.tag_suggestions_open().filter(image=image).select_related("tag")}


@pytest.fixture
def tagged_gallery(db, clean_index):
    for n in (1, 2, 3, 4):
        tagged(bench("cat", n), "cat")
        tagged(bench("dog", n), "dog")


def test_an_image_gets_the_tag_of_its_nearest_tagged_images(tagged_gallery):
    cat, dog = bench("cat", 10), bench("dog", 10)

    tag_suggestions.tag_suggestions_make(image_ids=[cat.pk, dog.pk])

    assert list(open_for(cat)) == ["cat"]
    assert list(open_for(dog)) == ["dog"]
    suggestion = open_for(cat)["cat"]
    assert suggestion.source == TagSuggestion.Source.NEIGHBOURS
    assert 0.5 <= suggestion.confidence <= 1.0


def test_a_rejected_suggestion_is_never_made_again_and_an_accepted_one_becomes_a_tag(tagged_gallery):
    cat, dog = bench("cat", 10), bench("dog", 10)
    tag_suggestions.tag_suggestions_make(image_ids=[cat.pk, dog.pk])

    assert tag_suggestions.tag_suggestions_reject(suggestions=TagSuggestion.objects.filter(image=cat)) == 1
    assert tag_suggestions.tag_suggestions_accept(suggestions=TagSuggestion.objects.filter(image=dog)) == 1
    tag_suggestions.tag_suggestions_make(image_ids=[cat.pk, dog.pk])

    assert open_for(cat) == {}
    assert TagSuggestion.objects.get(image=cat).rejected
    assert [t.name for t in dog.tags.all()] == ["dog"]
    assert not TagSuggestion.objects.filter(image=dog).exists()


def test_a_suggestion_above_the_auto_apply_setting_becomes_a_tag_at_once(tagged_gallery, settings):
    settings.LOOKALIKE_TAG_SUGGESTION_AUTO_APPLY = 0.5
    cat = bench("cat", 10)

    suggested, applied = tag_suggestions.tag_suggestions_make(image_ids=[cat.pk])

    assert (suggested, applied) == (0, 1)
    assert [t.name for t in cat.tags.all()] == ["cat"]
    assert not TagSuggestion.objects.filter(image=cat).exists()


@pytest.mark.parametrize("hidden", [True, False])
def test_a_copy_hidden_from_the_owner_lends_it_no_tag(db, clean_index, user, other_user, hidden):
    for n in (1, 2, 3):
        tagged(bench("cat", n), "cat")
    # Bob's close copy of Alice's picture carries a tag of its own; hidden, Alice may not see it.
    copy = tagged(store_indexed(images.bench_crop("dog", 20), "copy.jpg", owner=other_user), "bobs-secret-dog")
    Image.objects.filter(pk=copy.pk).update(hidden=hidden)
    alices = bench("dog", 20, owner=user)

    tag_suggestions.tag_suggestions_make(image_ids=[alices.pk])

    assert ("bobs-secret-dog" in open_for(alices)) is not hidden


def test_with_nothing_tagged_the_classifier_offers_broad_words(db, clean_index):
    cat, skirt = bench("cat", 11), bench("apparel", 10)

    tag_suggestions.tag_suggestions_make(image_ids=[cat.pk, skirt.pk])

    cat_words = open_for(cat)
    assert "cat" in cat_words
    assert cat_words["cat"].source == TagSuggestion.Source.CLASSIFIER
    assert {"clothing", "skirt"} <= set(open_for(skirt))


def test_images_suggested_together_share_each_new_tag_and_each_gets_its_own_suggestion(db, clean_index, settings):
    settings.LOOKALIKE_TAG_SUGGESTION_AUTO_APPLY = 0.99
    cats = [bench("cat", n) for n in (11, 12, 13)]

    tag_suggestions.tag_suggestions_make(image_ids=[cat.pk for cat in cats])

    assert Tag.objects.filter(name="cat").count() == 1
    for cat in cats:
        offered = open_for(cat)
        assert "cat" in offered or "cat" in {tag.name for tag in cat.tags.all()}, offered
        assert not set(offered) & {tag.name for tag in cat.tags.all()}


def test_the_classifier_words_are_those_stored_with_the_vector_at_the_confidence_set_now(db, clean_index, settings):
    from search.models import Embedding

    cat = bench("cat", 11)
    stored = Embedding.objects.get(image=cat).classifier_words
    assert len(stored) == tag_suggestions.MOST_SUGGESTIONS and stored[0][0] == "cat"
    # What is stored is what is suggested: the network does not run again.
    Embedding.objects.filter(image=cat).update(classifier_words=[["teapot", 0.9], ["kettle", 0.3]])

    tag_suggestions.tag_suggestions_make(image_ids=[cat.pk])
    assert set(open_for(cat)) == {"teapot"}

    settings.LOOKALIKE_TAG_SUGGESTION_MIN_CONFIDENCE = 0.2
    tag_suggestions.tag_suggestions_make(image_ids=[cat.pk])
    assert set(open_for(cat)) == {"teapot", "kettle"}


def test_an_image_embedded_before_words_were_stored_gets_them_from_its_feature_map(db, clean_index):
    from search.models import Embedding

    cat = bench("cat", 11)
    Embedding.objects.filter(image=cat).update(classifier_words=[])

    tag_suggestions.tag_suggestions_make(image_ids=[cat.pk])

    assert "cat" in open_for(cat)
    assert open_for(cat)["cat"].source == TagSuggestion.Source.CLASSIFIER


def test_the_job_suggests_for_every_untagged_image_and_resumes_after_its_checkpoint(tagged_gallery):
    from jobs.models import Job
    from jobs.services import job_claim

    cats = [bench("cat", n) for n in (10, 11, 12)]
    job = tag_suggestions.tag_suggestions_start()
    Job.objects.filter(pk=job.pk).update(checkpoint={"after": cats[0].pk})
    run = job_claim(job_id=job.pk, token=job.claim_token)
    assert run is not None

    summary = tag_suggestions.tag_suggestions_run(run)

    assert "for 2 untagged images" in summary
    assert open_for(cats[0]) == {}
    assert all(list(open_for(cat)) == ["cat"] for cat in cats[1:])
    run.job.refresh_from_db()
    assert (run.job.done, run.job.total) == (3, 3)
