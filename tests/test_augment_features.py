"""models/augment (deterministic views) and models/features (frozen outputs computed once, cached)."""

import numpy as np

from busi_study.models.augment import view, views_batch
from busi_study.models.features import cache_key, frozen_outputs, image_views

from .recipe_helpers import aug_cfg

IMAGES = np.random.default_rng(0).integers(0, 255, (4, 24, 24, 3), dtype=np.uint8)


def test_view_zero_is_the_image_and_views_depend_only_on_seed_index_view():
    cfg = aug_cfg()
    np.testing.assert_array_equal(view(IMAGES, 2, 0, 42, cfg), IMAGES[2])
    a = views_batch(IMAGES, np.array([0, 1, 2, 3]), 1, 42, cfg)
    b = views_batch(IMAGES, np.array([3, 2, 1, 0]), 1, 42, cfg)[::-1]   # order does not matter
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, views_batch(IMAGES, np.arange(4), 1, 43, cfg))  # the seed does
    assert not np.array_equal(a, views_batch(IMAGES, np.arange(4), 2, 42, cfg))  # so does the view
    assert a.dtype == np.uint8 and a.shape == IMAGES.shape


def test_no_augmentation_config_changes_nothing():
    still = aug_cfg(flip=False, rotation_deg=0, zoom=0, shift=0, brightness=0, contrast=0)
    np.testing.assert_allclose(view(IMAGES, 1, 5, 0, still).astype(int), IMAGES[1].astype(int), atol=1)
    assert still.key() != aug_cfg().key()


def test_cache_key_is_stable_and_sensitive():
    assert cache_key("top", "mobilenet_v2", 0.35, 224) == cache_key("top", "mobilenet_v2", 0.35, 224)
    assert cache_key("top", "mobilenet_v2", 0.35, 224) != cache_key("top", "mobilenet_v2", 0.35, 160)
    assert len(cache_key("x")) == 16


class CountingExtractor:
    """A stand-in for a frozen Keras model: mean of each image, counts its calls."""

    class _Out:
        shape = (None, 1)

    output = _Out()

    def __init__(self):
        self.calls = 0

    def __call__(self, x, training=False):
        assert training is False
        self.calls += 1
        return x.reshape(len(x), -1).mean(axis=1, keepdims=True)


def test_frozen_outputs_are_computed_once_then_loaded(tmp_path):
    ex = CountingExtractor()
    path = tmp_path / "f.npy"
    out, info = frozen_outputs(ex, IMAGES, n_views=3, seed=1, augment=aug_cfg(), cache_path=path, batch_size=2, progress=False)
    assert out.shape == (3, 4, 1) and info["cached"] is False and ex.calls == 6 and path.exists()
    np.testing.assert_allclose(out[0, :, 0], IMAGES.reshape(4, -1).mean(axis=1))  # view 0 = the images
    again, info2 = frozen_outputs(ex, IMAGES, n_views=3, seed=1, augment=aug_cfg(), cache_path=path, progress=False)
    assert info2["cached"] is True and ex.calls == 6
    np.testing.assert_array_equal(again, out)
    # a cache of another shape (e.g. fewer views) is recomputed, not trusted
    _, info3 = frozen_outputs(ex, IMAGES, n_views=2, seed=1, augment=aug_cfg(), cache_path=path, progress=False)
    assert info3["cached"] is False


def test_image_views_stack_every_view():
    v = image_views(IMAGES, 3, 0, aug_cfg())
    assert v.shape == (3, *IMAGES.shape)
    np.testing.assert_array_equal(v[0], IMAGES)
    assert not np.array_equal(v[1], IMAGES) and not np.array_equal(v[1], v[2])
