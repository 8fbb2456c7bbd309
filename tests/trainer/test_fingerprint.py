import json
import os

import numpy as np
import pytest

from edgefp import data, metrics, shifts
from edgefp.errors import EdgefpError
from edgefp.trainer import NeuralFingerprint, fingerprint_model, taps
from edgefp.trainer.baselines import BASELINES
from tests.conftest import arrow_head_split

pytestmark = pytest.mark.heavy  # trains


def test_save_load_round_trip_gives_identical_scores(digits_run):
    fingerprint, run_dir = digits_run
    x = data.load("digits:test").x[:50]
    loaded = NeuralFingerprint.load(run_dir)
    before, after = fingerprint.score(x), loaded.score(x)
    for name in ("pred", "probs", "ood_score", "is_ood", "layer_errors"):
        np.testing.assert_array_equal(getattr(before, name), getattr(after, name))
    assert loaded.threshold_ == fingerprint.threshold_
    assert [layer.name for layer in loaded.layers_] == [layer.name for layer in fingerprint.layers_]


@pytest.mark.parametrize("apart", [False, True])
def test_autoencoders_in_one_block_or_apart_score_as_each_alone(digits_run, apart, monkeypatch):
    """The monitor's block (block-diagonal encoder and decoder, one squared difference), or its
    autoencoders apart on slices of the residual, gives every autoencoder's own error, as its saved
    model computes it."""
    import keras

    from edgefp.trainer import fingerprint as module

    fingerprint, run_dir = digits_run
    if apart:
        monkeypatch.setattr(module, "ZERO_BYTES_PER_OPERATOR", 0)
        fingerprint = NeuralFingerprint.load(run_dir)
    squares = {layer.name for layer in fingerprint.monitor_.layers if layer.name.startswith("fp_square_")}
    assert len(squares) == (len(fingerprint.autoencoder_layers_) if apart else 1)
    x = fingerprint.prepare(data.load("digits:test:0-4").x[:60])
    layers = fingerprint.autoencoder_layers_
    reduced, _, _, probs = fingerprint._reduced_taps([layer.name for layer in layers], [layer.pool for layer in layers])
    *features, p = keras.Model(fingerprint.model_.inputs, [*reduced, probs]).predict(x, verbose=0)
    errors = fingerprint._evidence(x)
    for j, (layer, autoencoder, feats) in enumerate(zip(layers, fingerprint.autoencoders_, features)):
        residual = autoencoder.predict([fingerprint._standardized(feats, layer), p], verbose=0)
        np.testing.assert_allclose(errors[:, j], np.mean(residual.astype(np.float64) ** 2, axis=1), rtol=1e-4)


def test_autoencoders_run_apart_only_where_the_blocks_zeros_outweigh_the_operators_added():
    """One block holds zeros that grow as the product of the layers' widths; running apart adds 5 k - 4
    operators. The templates' few narrow layers, and a single layer, stay one block; wide layers do not."""
    from edgefp.trainer.fingerprint import runs_apart

    assert not runs_apart([32, 16], [15, 8])  # digits' two convolutions
    assert not runs_apart([32, 32, 32], [5, 5, 5])  # the sequence template's three
    assert not runs_apart([4096], [2048])  # one autoencoder has no zeros
    assert runs_apart([256, 256, 256], [40, 40, 40])
    for k in (2, 3, 5):  # wider layers never go back to one block
        decisions = [runs_apart([width] * k, [max(width // 8, 1)] * k) for width in range(4, 600, 4)]
        assert decisions == sorted(decisions) and decisions[-1] and not decisions[0], k


def test_fingerprint_json_documents_the_distribution(digits_run):
    fingerprint, run_dir = digits_run
    with open(os.path.join(run_dir, "fingerprint.json")) as handle:
        meta = json.load(handle)
    assert meta["schema"] == "edgefp.fingerprint" and meta["version"] == 3
    assert meta["score"]["target_fpr"] == 0.05 and meta["score"]["n_holdout"] > 0
    assert meta["score"]["combine"] == "mean_positive_z"
    assert [layer["kind"] for layer in meta["layers"]] == ["autoencoder", "autoencoder", "max_logit"]
    assert [layer["name"] for layer in meta["layers"]] == ["conv8", "conv16", "logits"]
    assert [layer["weight"] for layer in meta["layers"]] == [0.25, 0.25, 0.5]  # each kind weighs the same
    for layer in meta["layers"]:
        quantiles = layer["holdout_quantiles"]
        assert len(quantiles) == 101 and quantiles == sorted(quantiles)
        assert layer["transform"] == ("negate" if layer["kind"] == "max_logit" else "log")
        assert layer["file"] is None or os.path.exists(os.path.join(run_dir, layer["file"]))
    assert [label["value"] for label in meta["labels"]] == [0, 1, 2, 3, 4]


def test_autoencoders_stay_within_their_budget(digits_run):
    fingerprint, _ = digits_run
    assert 0 < fingerprint.fingerprint_params() <= fingerprint.budget * fingerprint.model_.count_params()


def test_digits_end_to_end_quality_floors(digits_run):
    """Fixed seed: accuracy, false-positive rate near its target, AUROC floors near and far."""
    fingerprint, _ = digits_run
    held_out = data.load("digits:test:0-4")
    unseen = data.load("digits:test:5-9")
    id_scores = fingerprint.score(held_out.x)
    assert np.mean(id_scores.pred == held_out.y) >= 0.95
    assert id_scores.is_ood.mean() <= 0.12
    assert metrics.auroc(id_scores.ood_score, fingerprint.score(unseen.x).ood_score) >= NEAR_FLOOR
    for kind in ("gaussian", "invert", "blur", "stuck"):
        shifted = fingerprint.score(shifts.apply(held_out.x, kind, seed=1)).ood_score
        assert metrics.auroc(id_scores.ood_score, shifted) >= 0.95, kind


NEAR_FLOOR = 0.92


def test_sensor_set_floors_for_an_unseen_shape_and_a_fault_in_float_and_int8(arrow_head_run, arrow_head_bundle):
    """arrow_head (1-channel sequences) with its first shape unseen, fixed seed: the fingerprint flags the
    unseen shape and noisy signals, as the float RUN and as the int8 bundle."""
    from edgefp.bundle import Bundle

    fingerprint, _ = arrow_head_run
    _, held_out, unseen = arrow_head_split()
    noisy = shifts.apply(held_out, "noise", seed=1)
    bundle = Bundle.load(arrow_head_bundle)
    for name, scorer in (("float", fingerprint), ("int8", bundle)):
        id_scores = scorer.score(held_out).ood_score
        assert metrics.auroc(id_scores, scorer.score(unseen).ood_score) >= 0.8, name
        assert metrics.auroc(id_scores, scorer.score(noisy).ood_score) >= 0.99, name


def test_the_estimator_follows_scikit_learns_sign_conventions(digits_run):
    """score_samples: higher = more normal; decision_function = score_samples - offset_, negative exactly
    where the score file says OOD; predict: +1 inlier, -1 outlier; ood_score: the score files' own."""
    fingerprint, _ = digits_run
    x = np.concatenate([data.load("digits:test:0-4").x[:40], data.load("digits:test:5-9").x[:40]])
    scores = fingerprint.score(x)
    np.testing.assert_allclose(fingerprint.ood_score(x), scores.ood_score, rtol=1e-6)
    normal = fingerprint.score_samples(x)
    np.testing.assert_allclose(normal, -scores.ood_score, rtol=1e-6)
    assert normal[40:].mean() < normal[:40].mean()  # unseen digits are less normal
    decision = fingerprint.decision_function(x)
    assert fingerprint.offset_ == -fingerprint.threshold_
    np.testing.assert_array_equal(decision < 0, scores.is_ood)
    np.testing.assert_array_equal(fingerprint.predict(x), np.where(scores.is_ood, -1, 1))
    assert 0 < scores.is_ood.sum() < len(x)


def test_knn_and_relative_mahalanobis_follow_their_papers(digits_run):
    from edgefp.trainer.baselines import KNN, Mahalanobis, RelativeMahalanobis

    fingerprint, _ = digits_run
    x_fit = fingerprint.prepare(data.load("digits:train:0-4").x, "train")
    knn = KNN().fit(fingerprint.model_, x_fit)
    assert knn.k_ == max(1, round(len(x_fit) / 1000))
    np.testing.assert_allclose(knn.ood_score(x_fit[:20]), 0.0, atol=1e-6)  # each is its own nearest
    assert KNN(k=5).fit(fingerprint.model_, x_fit).ood_score(x_fit[:20]).min() > 0
    plain, relative = Mahalanobis().fit(fingerprint.model_, x_fit), RelativeMahalanobis().fit(fingerprint.model_, x_fit)
    x = fingerprint.prepare(data.load("digits:test").x[:30], "test")
    features = relative._features(x)[0]
    background = np.einsum(
        "nd,de,ne->n",
        features - relative.background_mean_,
        relative.background_precision_,
        features - relative.background_mean_,
    )
    np.testing.assert_allclose(relative.ood_score(x), plain.ood_score(x) - background, rtol=1e-6)


def test_default_taps_leave_the_top_to_its_own_evidence_and_pool_images_square(digits_run):
    import keras

    from edgefp.trainer.models import build_classifier

    fingerprint, _ = digits_run
    assert taps.default_layers(fingerprint.model_) == ["conv8", "conv16"]
    for features, watched in (
        (3, ["input", "dense64"]),
        (63, ["input", "dense64"]),
        (64, ["dense64"]),
        (300, ["dense64"]),
    ):
        assert taps.default_layers(build_classifier((features,), 3)) == watched, features
    inputs = keras.Input((16,))  # a vector made a sequence inside the model: its first watched layer is not a vector
    h = keras.layers.Conv1D(4, 3, name="conv")(keras.layers.Reshape((16, 1))(inputs))
    h = keras.layers.Dense(8, name="hidden")(keras.layers.Flatten()(h))
    assert taps.default_layers(keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(h))) == ["conv"]
    assert taps.pool_sizes((8, 8, 8), 32) == (4, 4) and taps.pool_sizes((4, 4, 16), 32) == (4, 4)
    assert taps.pool_sizes((28, 20, 8), 32) == (14, 14) and taps.pool_sizes((100, 16), 32) == (50,)
    assert taps.pool_sizes((64,), 32) == () and taps.pool_sizes((25, 64), 32) == (25,)


def test_baselines_score_higher_for_unseen_digits(digits_run):
    fingerprint, _ = digits_run
    prepare = fingerprint.prepare
    x_fit = prepare(data.load("digits:train:0-4").x, "train")
    x_id, x_ood = prepare(data.load("digits:test:0-4").x, "id"), prepare(data.load("digits:test:5-9").x, "ood")
    for name, baseline in BASELINES.items():
        detector = baseline().fit(fingerprint.model_, x_fit)
        assert metrics.auroc(detector.ood_score(x_id), detector.ood_score(x_ood)) > 0.75, name


def _sequential_model(path):
    import keras

    model = keras.Sequential(
        [
            keras.Input((12,)),
            keras.layers.Dense(16, activation="relu", name="hidden"),
            keras.layers.Dense(8, activation="relu", name="hidden2"),
            keras.layers.Dense(3, activation="softmax", name="out"),
        ]
    )
    model.save(path)
    return path


def test_fingerprint_a_users_sequential_model_without_labels(tmp_path):
    model_path = _sequential_model(str(tmp_path / "user.keras"))
    x = np.random.default_rng(0).normal(size=(200, 12)).astype(np.float32)
    dataset = data.Dataset(x, None, "unlabelled")
    fp = fingerprint_model(model_path, dataset, epochs=5, progress=False)
    # its input (12 values) is narrower than its first hidden layer: watched, and no max logit beside it
    watched = [(taps.input_name(fp.model_), "autoencoder"), ("hidden", "autoencoder")]
    assert [(layer.name, layer.kind) for layer in fp.layers_] == watched
    fp.save(str(tmp_path / "run"))
    scores = NeuralFingerprint.load(str(tmp_path / "run")).score(x[:10])
    assert scores.layer_errors.shape == (10, 2) and scores.probs.shape == (10, 3)
    np.testing.assert_allclose(scores.probs.sum(axis=1), 1.0, rtol=1e-5)
    hidden_only = fingerprint_model(model_path, dataset, layers=["hidden"], epochs=5, progress=False)
    assert [layer.kind for layer in hidden_only.layers_] == ["autoencoder", "max_logit"]  # input not watched


def test_unknown_layer_and_tiny_data_are_refused(tmp_path):
    model_path = _sequential_model(str(tmp_path / "user.keras"))
    x = np.zeros((40, 12), np.float32)
    with pytest.raises(EdgefpError, match="no layer 'nope'"):
        fingerprint_model(model_path, data.Dataset(x, None, "d"), layers=["nope"], progress=False)
    with pytest.raises(EdgefpError, match="too few samples"):
        fingerprint_model(model_path, data.Dataset(x[:8], None, "d"), progress=False)


def test_modified_or_incomplete_run_is_refused(digits_run, tmp_path):
    import shutil

    _, run_dir = digits_run
    copy = str(tmp_path / "copy")
    shutil.copytree(run_dir, copy)
    with open(os.path.join(copy, "classifier.keras"), "ab") as handle:
        handle.write(b"tampered")
    with pytest.raises(EdgefpError, match="does not match the hash"):
        NeuralFingerprint.load(copy)
    os.remove(os.path.join(copy, "classifier.keras"))
    with pytest.raises(EdgefpError, match="incomplete"):
        NeuralFingerprint.load(copy)


def test_run_of_another_fingerprint_version_is_refused_with_what_to_do(digits_run, tmp_path):
    import shutil

    _, run_dir = digits_run
    copy = str(tmp_path / "copy")
    shutil.copytree(run_dir, copy)
    path = os.path.join(copy, "fingerprint.json")
    with open(path) as handle:
        meta = json.load(handle)
    for version, message in ((2, "older edgefp.*retrain the RUN with 'edgefp train'"), (4, "re-create the RUN")):
        with open(path, "w") as handle:
            json.dump({**meta, "version": version}, handle)
        with pytest.raises(EdgefpError, match=message):
            NeuralFingerprint.load(copy)


def test_same_seed_gives_the_same_fingerprint(tmp_path):
    model_path = _sequential_model(str(tmp_path / "user.keras"))
    x = np.random.default_rng(1).normal(size=(120, 12)).astype(np.float32)
    runs = [
        fingerprint_model(model_path, data.Dataset(x, None, "d"), epochs=5, seed=3, progress=False) for _ in range(2)
    ]
    assert runs[0].threshold_ == runs[1].threshold_
    np.testing.assert_array_equal(runs[0].score(x).ood_score, runs[1].score(x).ood_score)


def test_train_is_deterministic_for_a_seed(tmp_path):
    from edgefp.trainer import train

    subset = data.load("digits:train:0-1")
    runs = [train(subset, epochs=2, autoencoder_epochs=2, seed=7, progress=False) for _ in range(2)]
    for a, b in zip(runs[0].model_.get_weights(), runs[1].model_.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert runs[0].threshold_ == runs[1].threshold_
    np.testing.assert_array_equal(runs[0].score(subset.x).ood_score, runs[1].score(subset.x).ood_score)


def test_swapped_autoencoder_or_holdout_is_refused(digits_run, tmp_path):
    import shutil

    from edgefp.trainer.fingerprint import read_fingerprint_json

    _, run_dir = digits_run
    autoencoder = next(layer["file"] for layer in read_fingerprint_json(run_dir)["layers"] if layer["file"])
    for victim, donor in [(autoencoder, "classifier.keras"), ("holdout.npz", None)]:
        copy = str(tmp_path / victim.replace("/", "_"))
        shutil.copytree(run_dir, copy)
        if donor:
            shutil.copy(os.path.join(copy, donor), os.path.join(copy, victim))
        else:
            np.savez_compressed(os.path.join(copy, victim), x=np.zeros((5, 8, 8, 1), np.float32))
        with pytest.raises(EdgefpError, match=f"{victim} does not match the hash"):
            NeuralFingerprint.load(copy)
