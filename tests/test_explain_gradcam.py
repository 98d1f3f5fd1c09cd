"""Tests of busi_study.explain.gradcam: known-answer models, nested backbones, randomisation.

The known-answer model has fixed conv filters, then a fixed spatial mask that zeroes everything
outside the top-right quadrant, then global average pooling and a Dense softmax: the class
score can only depend on that quadrant, and Grad-CAM has a closed form (CAM, Zhou et al. 2016)
we compute with numpy. The quadrant is off the diagonal so a transposed map would be caught.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import layers

from busi_study.explain.gradcam import (
    find_layer,
    gradcam,
    last_conv_layer_name,
    randomise_top_layers,
    sanity_check,
    top_weighted_layers,
    upsample,
)
from busi_study.explain.localisation import pointing_game

SIZE = 32
ROWS, COLS = (0, 16), (16, 32)  # the quadrant the score can see: top right
BLOB = (6, 24)  # inside it
DISTRACTOR = (25, 7)  # bottom left: the transpose of BLOB's quadrant, invisible to the score


class SpatialMask(layers.Layer):
    """Multiply by a fixed 0/1 mask that is 1 on rows [r0, r1) × cols [c0, c1)."""

    def __init__(self, rows=ROWS, cols=COLS, **kwargs):
        super().__init__(**kwargs)
        self.rows, self.cols = tuple(rows), tuple(cols)

    def call(self, x):
        h, w = x.shape[1], x.shape[2]
        m = np.zeros((1, h, w, 1), np.float32)
        m[:, self.rows[0] : self.rows[1], self.cols[0] : self.cols[1]] = 1.0
        return x * keras.ops.convert_to_tensor(m)

    def get_config(self):
        return {**super().get_config(), "rows": list(self.rows), "cols": list(self.cols)}


def _filters() -> np.ndarray:
    """Four fixed 3×3 filters on the grey level: box mean (blob detector), horizontal and
    vertical gradients, centre-surround."""
    box = np.full((3, 3), 1 / 9)
    dx = np.array([[-1, 0, 1]] * 3) / 6
    dy = dx.T
    lap = -np.full((3, 3), 1 / 8)
    lap[1, 1] = 1.0
    k = np.stack([box, dx, dy, lap], axis=-1)  # (3, 3, 4)
    return np.repeat(k[:, :, None, :] / 3, 3, axis=2).astype(np.float32)  # (3, 3, 3 in, 4 out)


def known_model(dense_kernel: np.ndarray, activation: str = "softmax") -> keras.Model:
    inp = keras.Input((SIZE, SIZE, 3), name="image")
    x = layers.Rescaling(1 / 255, name="rescale")(inp)
    conv = layers.Conv2D(4, 3, padding="same", activation="relu", name="features")
    x = conv(x)
    x = SpatialMask(name="region")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    dense = layers.Dense(3, activation=activation, name="probs")
    out = dense(x)
    model = keras.Model(inp, out, name="known")
    conv.set_weights([_filters(), np.zeros(4, np.float32)])
    dense.set_weights([dense_kernel.astype(np.float32), np.zeros(3, np.float32)])
    return model


# class 2 looks at the box-mean channel only; class 0 at its negative (its map must be all zero)
BLOB_KERNEL = np.array([[-1.0, 0.0, 5.0], [0.0, 0.3, 0.0], [0.0, -0.3, 0.0], [0.0, 0.0, 0.0]])


def blob_images(n: int, distractor: bool, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    imgs = 20 + rng.normal(0, 3, (n, SIZE, SIZE))
    for centre in [BLOB] + ([DISTRACTOR] if distractor else []):
        imgs += 200 * np.exp(-((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) / (2 * 2.0**2))
    return np.clip(np.repeat(imgs[..., None], 3, axis=-1), 0, 255).astype(np.float32)


def disk(shape, centre, radius) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


@pytest.fixture(scope="module")
def blob_model():
    return known_model(BLOB_KERNEL)


# --------------------------------------------------------------------------------------------
# known answers
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
@pytest.mark.parametrize("layer_name", ["region", "features"])
def test_map_points_at_the_only_region_the_score_sees(blob_model, method, layer_name):
    # after the mask ("region") a distractor in the other quadrant must be ignored; before it
    # ("features") Grad-CAM also paints whatever the filters respond to, so no distractor there
    imgs = blob_images(3, distractor=layer_name == "region")
    cams = gradcam(blob_model, imgs, class_index=2, layer_name=layer_name, method=method)
    assert cams.shape == (3, SIZE, SIZE) and cams.dtype == np.float32
    assert cams.min() >= 0 and np.allclose(cams.max(axis=(1, 2)), 1.0)
    for cam in cams:
        r, c = np.unravel_index(np.argmax(cam), cam.shape)
        assert ROWS[0] <= r < ROWS[1] and COLS[0] <= c < COLS[1]
        assert abs(r - BLOB[0]) <= 1 and abs(c - BLOB[1]) <= 1
    # at image size (here 2× the map): a hit on the blob's mask, a miss on the opposite corner
    big = upsample(cams, (2 * SIZE, 2 * SIZE))
    blob_mask = disk(big.shape[1:], (2 * BLOB[0] + 0.5, 2 * BLOB[1] + 0.5), 6)
    far_mask = disk(big.shape[1:], (2 * DISTRACTOR[0] + 0.5, 2 * DISTRACTOR[1] + 0.5), 6)
    for cam in big:
        assert pointing_game(cam, blob_mask) is True
        assert pointing_game(cam, far_mask) is False


def test_no_positive_evidence_gives_all_zero_map(blob_model):
    # class 0 weighs the only active channel negatively: ReLU leaves nothing, and no 0/0
    cams = gradcam(blob_model, blob_images(2, distractor=False), class_index=0, layer_name="region")
    assert np.all(cams == 0) and np.isfinite(cams).all()


def _analytic_maps(model, imgs, c, method, score):
    """Grad-CAM / Grad-CAM++ from the analytic gradient of GAP(mask · A) → Dense."""
    feats = keras.Model(model.inputs, model.get_layer("features").output).predict(imgs, verbose=0).astype(np.float64)
    kernel = model.get_layer("probs").get_weights()[0].astype(np.float64)  # (4 channels, 3 classes)
    n, h, w, _ = feats.shape
    m = np.zeros((h, w))
    m[ROWS[0] : ROWS[1], COLS[0] : COLS[1]] = 1
    if score == "logit":
        wk = np.repeat(kernel[:, c][None], n, axis=0)  # dz_c / d(pooled_k)
    else:  # dp_c/dz_j = p_c (δ_cj − p_j)
        p = model.predict(imgs, verbose=0).astype(np.float64)
        wk = p[:, c : c + 1] * (kernel[:, c][None] - p @ kernel.T)
    g = wk[:, None, None, :] * m[None, :, :, None] / (h * w)  # (n, h, w, k)
    if method == "gradcam":
        weights = g.mean(axis=(1, 2))
    else:
        s = feats.sum(axis=(1, 2), keepdims=True)
        den = 2 * g**2 + s * g**3
        alpha = np.divide(g**2, den, out=np.zeros_like(g), where=den != 0)
        weights = (alpha * np.maximum(g, 0)).sum(axis=(1, 2))
    cam = np.maximum(np.einsum("nhwk,nk->nhw", feats, weights), 0)
    peak = cam.max(axis=(1, 2), keepdims=True)
    return np.divide(cam, peak, out=np.zeros_like(cam), where=peak > 0)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
@pytest.mark.parametrize("score", ["logit", "output"])
def test_matches_closed_form(method, score):
    rng = np.random.default_rng(3)
    model = known_model(rng.normal(0, 2, (4, 3)))
    imgs = np.clip(rng.normal(100, 60, (4, SIZE, SIZE, 3)), 0, 255).astype(np.float32)
    classes = np.array([0, 1, 2, 1])
    got = gradcam(model, imgs, classes, "features", method=method, score=score, batch_size=3)  # 2 batches
    for i, c in enumerate(classes):
        want = _analytic_maps(model, imgs[i : i + 1], c, method, score)[0]
        np.testing.assert_allclose(got[i], want, atol=2e-4)
    # softmax output: "auto" is the logit; it is not the same as the probability's gradient
    auto = gradcam(model, imgs, classes, "features", method=method)
    np.testing.assert_allclose(auto, gradcam(model, imgs, classes, "features", method=method, score="logit"))


def test_linear_output_and_predicted_class():
    rng = np.random.default_rng(4)
    kernel = rng.normal(0, 2, (4, 3))
    soft, lin = known_model(kernel), known_model(kernel, activation=None)
    imgs = np.clip(rng.normal(100, 60, (3, SIZE, SIZE, 3)), 0, 255).astype(np.float32)
    pred = soft.predict(imgs, verbose=0).argmax(axis=1)
    # the logit model's output is the logit: same maps as the softmax model's "auto" score
    np.testing.assert_allclose(gradcam(lin, imgs, pred, "features"), gradcam(soft, imgs, None, "features"), atol=1e-6)
    # a single image (H, W, 3) is accepted
    assert gradcam(soft, imgs[0], 1, "features").shape == (1, SIZE, SIZE)


def test_bad_arguments(blob_model):
    imgs = blob_images(2, distractor=False)
    with pytest.raises(ValueError, match="features"):  # the message lists candidate layers
        gradcam(blob_model, imgs, 1, "no_such_layer")
    with pytest.raises(ValueError, match="method"):
        gradcam(blob_model, imgs, 1, "features", method="lime")
    with pytest.raises(ValueError, match="class_index"):
        gradcam(blob_model, imgs, [0, 1, 2], "features")
    with pytest.raises(ValueError, match="4-D|shape"):
        gradcam(blob_model, imgs, 1, "gap")


def test_non_chain_model_is_refused():
    inp = keras.Input((SIZE, SIZE, 3), name="image")
    a = layers.Conv2D(4, 3, padding="same", name="a")(inp)
    b = layers.Conv2D(4, 3, padding="same", name="b")(a)
    x = layers.Add(name="skip")([a, b])
    out = layers.Dense(3, activation="softmax", name="probs")(layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inp, out)
    with pytest.raises(ValueError, match="simple chain"):
        gradcam(model, blob_images(1, distractor=False), 0, "b")
    # a layer called twice runs without error when replayed once: caught by the output check
    shared = layers.Conv2D(3, 3, padding="same", name="shared")
    inp = keras.Input((SIZE, SIZE, 3), name="image")
    out = layers.Dense(3, name="logits")(layers.GlobalAveragePooling2D()(shared(shared(inp))))
    with pytest.raises(ValueError, match="does not reproduce"):
        gradcam(keras.Model(inp, out), blob_images(1, distractor=False), 0, "shared")


def test_upsample_shapes_and_range():
    maps = np.random.default_rng(0).random((2, 7, 7)).astype(np.float32)
    up = upsample(maps, (50, 60))
    assert up.shape == (2, 50, 60) and up.min() >= maps.min() - 1e-6 and up.max() <= maps.max() + 1e-6
    assert upsample(maps[0], (14, 14)).shape == (14, 14)
    # a constant map stays constant; per-image sizes give a list
    assert np.allclose(upsample(np.ones((1, 3, 3)), (9, 12)), 1.0)
    sizes = upsample(maps, [(20, 30), (31, 17)])
    assert [s.shape for s in sizes] == [(20, 30), (31, 17)]


# --------------------------------------------------------------------------------------------
# the study's architectures: nested backbone, from-scratch CNN
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nested_model():
    backbone = keras.applications.MobileNetV2(include_top=False, weights=None, alpha=0.35, input_shape=(64, 64, 3))
    backbone.name = "backbone"
    inp = keras.Input((64, 64, 3), name="image")
    x = layers.Rescaling(1 / 127.5, offset=-1, name="rescale")(inp)
    x = backbone(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    out = layers.Dense(3, activation="softmax", name="probs")(x)
    return keras.Model(inp, out, name="nested")


def test_nested_backbone(nested_model):
    imgs = np.random.default_rng(0).uniform(0, 255, (3, 64, 64, 3)).astype(np.float32)
    path, layer = find_layer(nested_model, "out_relu")
    assert [m.name for m in path] == ["nested", "backbone"] and layer.name == "out_relu"
    assert last_conv_layer_name(nested_model) == "out_relu"
    for method in ("gradcam", "gradcam++"):
        cams = gradcam(nested_model, imgs, np.array([0, 1, 2]), "out_relu", method=method)
        assert cams.shape == (3, 2, 2) and np.isfinite(cams).all() and cams.min() >= 0 and cams.max() <= 1
    # out_relu is the backbone's output: the nested path (two-output inner model) must agree
    # with taking the whole backbone as a top-level target
    np.testing.assert_allclose(gradcam(nested_model, imgs, None, "out_relu"), gradcam(nested_model, imgs, None, "backbone"), atol=1e-5)
    # a deeper layer inside the backbone works too, at its own resolution
    assert gradcam(nested_model, imgs[:1], 0, "block_13_expand_relu").shape == (1, 4, 4)


def test_compiled_gradcam_matches_gradcam(nested_model):
    from busi_study.explain import GradCAM

    rng = np.random.default_rng(5)
    imgs = rng.uniform(0, 255, (3, 64, 64, 3)).astype(np.float32)
    for method in ("gradcam", "gradcam++"):
        cam = GradCAM(nested_model, "block_13_expand_relu", method=method)
        for classes in (np.array([0, 1, 2]), None, 1):  # repeated calls reuse the compiled pass
            np.testing.assert_allclose(cam(imgs, classes, batch_size=2),
                                       gradcam(nested_model, imgs, classes, "block_13_expand_relu", method=method), atol=1e-5)
        np.testing.assert_allclose(cam(imgs[0], 2), gradcam(nested_model, imgs[:1], 2, "block_13_expand_relu", method=method), atol=1e-5)
    # a model that is not a chain is refused on the first call, as gradcam() refuses it
    shared = layers.Conv2D(3, 3, padding="same", name="shared")
    inp = keras.Input((SIZE, SIZE, 3), name="image")
    out = layers.Dense(3, name="logits")(layers.GlobalAveragePooling2D()(shared(shared(inp))))
    with pytest.raises(ValueError, match="does not reproduce"):
        GradCAM(keras.Model(inp, out), "shared")(blob_images(1, distractor=False), 0)


def test_study_builders():
    from busi_study.models.builders import assemble, backbone_with_preprocessing, gap_head, s2_cnn

    cnn = s2_cnn(input_size=32)
    assert last_conv_layer_name(cnn) == "conv3"
    imgs = blob_images(2, distractor=False)
    assert gradcam(cnn, imgs, None, "conv3").shape == (2, 8, 8)
    # the study's assembled classifier: preprocessing layer, nested backbone, head layers shared
    # with a separate head model (so they have two call sites)
    pre, bb = backbone_with_preprocessing("mobilenet_v2", 32, None, alpha=0.35)
    model = assemble(pre, bb, gap_head(tuple(bb.output.shape[1:]), dropout=0.2), 32, "clf")
    assert last_conv_layer_name(model) == "out_relu"
    cams = gradcam(model, imgs, [1, 2], method="gradcam++")
    assert cams.shape == (2, 1, 1)


# --------------------------------------------------------------------------------------------
# randomisation sanity check
# --------------------------------------------------------------------------------------------


def test_randomise_top_layers_known_model(blob_model):
    before = [w.copy() for w in blob_model.get_weights()]
    assert top_weighted_layers(blob_model, 5) == ["probs", "features"]
    rnd = randomise_top_layers(blob_model, 1, seed=0)
    assert rnd is not blob_model
    for w0, w1 in zip(before, blob_model.get_weights()):  # original untouched
        np.testing.assert_array_equal(w0, w1)
    assert not np.allclose(rnd.get_layer("probs").get_weights()[0], blob_model.get_layer("probs").get_weights()[0])
    for w0, w1 in zip(blob_model.get_layer("features").get_weights(), rnd.get_layer("features").get_weights()):
        np.testing.assert_array_equal(w0, w1)
    # reproducible given the seed, different for another seed
    again = randomise_top_layers(blob_model, 1, seed=0)
    np.testing.assert_array_equal(again.get_layer("probs").get_weights()[0], rnd.get_layer("probs").get_weights()[0])
    other = randomise_top_layers(blob_model, 1, seed=1)
    assert not np.allclose(other.get_layer("probs").get_weights()[0], rnd.get_layer("probs").get_weights()[0])


def test_randomise_descends_into_nested_model(nested_model):
    names = top_weighted_layers(nested_model, 3)
    assert names == ["probs", "backbone/Conv_1_bn", "backbone/Conv_1"]
    rnd = randomise_top_layers(nested_model, 3, seed=0)
    ob, rb = nested_model.get_layer("backbone"), rnd.get_layer("backbone")
    assert not np.allclose(ob.get_layer("Conv_1").get_weights()[0], rb.get_layer("Conv_1").get_weights()[0])
    for name in ("block_16_project", "block_16_project_BN", "Conv1"):
        for w0, w1 in zip(ob.get_layer(name).get_weights(), rb.get_layer(name).get_weights()):
            np.testing.assert_array_equal(w0, w1)


def test_sanity_check_maps_change(blob_model):
    imgs = blob_images(4, distractor=False, seed=5)
    res = sanity_check(blob_model, imgs, class_index=2, layer_name="features", n_layers=2, seed=0)
    assert list(res["per_image"].columns) == ["image", "spearman"] and len(res["per_image"]) == 4
    assert res["layers"] == ["probs", "features"]
    assert res["mean"] < 0.5 and res["median"] < 0.5
    # zero layers randomised: identical maps, correlation 1 (the check can fail)
    same = sanity_check(blob_model, imgs, class_index=2, layer_name="features", n_layers=0, seed=0)
    assert same["mean"] == pytest.approx(1.0)
