import json
from pathlib import Path

import numpy as np
import pytest

from model.bundle import load_bundle, save_bundle
from model.inference import Predictor, calibrated_malignant_probability, dihedral_views
from model.preprocessing import PreprocessSpec
from tests.conftest import lite0_with_batch_statistics, synthetic_lesion


def tiny_card(**overrides):
    card = {"name": "tiny", "version": "test", "class_names": ["benign", "malignant"], "backbone": "efficientnet_lite0",
            "preprocessing": PreprocessSpec(64).to_dict(), "threshold": 0.33, "temperature": 1.5, "tta_views": 1}
    card.update(overrides)
    return card


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    """An untrained 64-px network whose outputs differ from image to image (see lite0_with_batch_statistics)."""
    model = lite0_with_batch_statistics(64)
    path = save_bundle(model, tiny_card(), tmp_path_factory.mktemp("bundle") / "tiny.keras")
    return model, path


def test_saved_then_loaded_bundle_gives_the_same_outputs(tiny_bundle):
    """Golden output: the reloaded .keras model matches the one in memory."""
    model, path = tiny_bundle
    x = np.random.default_rng(0).uniform(0, 255, (4, 64, 64, 3)).astype("float32")
    expected = model(x, training=False).numpy()
    bundle = load_bundle(path)
    np.testing.assert_allclose(bundle.model(x, training=False).numpy(), expected, atol=1e-6)
    assert bundle.card["threshold"] == 0.33 and json.loads(path.with_suffix(".json").read_text())["name"] == "tiny"


def test_predictor_uses_the_card(tiny_bundle):
    """Probability, label and confidence as the card's temperature (1.5) and threshold (0.33) make them, worked out
    here from the Keras network's softmax apart from the Predictor's code."""
    model, path = tiny_bundle
    predictor = Predictor(load_bundle(path))
    batch = np.stack([np.asarray(synthetic_lesion(64, 50 + i, dark=0.1 + 0.8 * (i % 2))) for i in range(8)])
    results = predictor.predict(batch)
    probs = model(batch.astype("float32"), training=False).numpy().astype(np.float64)
    expected = 1 / (1 + np.exp(-np.log(probs[:, 1] / probs[:, 0]) / 1.5))
    assert probs[:, 1].std() > 0.01  # the images score differently
    np.testing.assert_allclose([r["probability_malignant"] for r in results], expected, atol=1e-4)
    labels = [r["label"] for r in results]
    assert set(labels) == {"benign", "malignant"}  # both sides of the threshold are checked
    for r in results:
        pm = r["probability_malignant"]
        assert r["threshold"] == 0.33 and r["label"] == ("malignant" if pm >= 0.33 else "benign")
        assert r["confidence"] == (pm if r["label"] == "malignant" else 1.0 - pm)


def test_a_large_batch_goes_through_the_network_in_bounded_passes(tiny_bundle, monkeypatch):
    """A whole split at once (train.gate's validation pass) must not be one forward pass: at 320 px that held
    every activation of 433 images and the training command was killed for memory. Chunking changes nothing."""
    _, path = tiny_bundle
    predictor = Predictor(load_bundle(path))
    batch = np.random.default_rng(3).integers(0, 255, (11, 64, 64, 3), dtype=np.uint8)
    whole_probs, whole_feats = predictor.raw_outputs(batch, tta_views=2)
    assert whole_probs[:, 1].std() > 0.01  # else a pass that shuffled or dropped images could not be told
    sizes, forward = [], predictor._forward
    monkeypatch.setattr(predictor, "_forward", lambda x: sizes.append(len(x)) or forward(x))
    monkeypatch.setattr("model.inference.MAX_FORWARD_IMAGES", 6)
    probs, feats = predictor.raw_outputs(batch, tta_views=2)
    assert sizes == [6, 6, 6, 4]  # 3 images x 2 views per pass, the last 2 images x 2 views
    np.testing.assert_allclose(probs, whole_probs, atol=1e-6)
    np.testing.assert_allclose(feats, whole_feats, atol=1e-5)
    assert probs.shape == (11, 2) and feats.shape[0] == 11


def test_temperature_softens_without_reordering():
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.5, 0.5]])
    hot = calibrated_malignant_probability(probs, 2.0)
    np.testing.assert_allclose(calibrated_malignant_probability(probs, 1.0), probs[:, 1], rtol=1e-6)
    assert hot[0] > 0.1 and hot[1] < 0.7 and abs(hot[2] - 0.5) < 1e-9
    assert list(np.argsort(hot)) == list(np.argsort(probs[:, 1]))


def test_calibration_keeps_float32_scores_a_few_ulps_apart_in_order():
    # a barely trained network gives float32 softmax scores one or two ulps apart; float32 arithmetic in the
    # calibration rounded some into ties (or apart), so a Platt bias moved the validation AUC (a flaky CI failure)
    m = np.float32(0.4137) + np.arange(12, dtype=np.float32) * np.spacing(np.float32(0.4137))
    probs = np.stack([np.float32(1) - m, m], axis=1).astype(np.float32)
    log_odds = np.log(probs[:, 1].astype(np.float64)) - np.log(probs[:, 0].astype(np.float64))
    for temperature, bias in ((1.0, 0.0), (1.0, -0.002), (0.94, 0.3), (2.5, -1.0)):
        p = calibrated_malignant_probability(probs, temperature, bias)
        assert p.dtype == np.float64 and len(np.unique(p)) == len(np.unique(log_odds))
        assert list(np.argsort(p, kind="stable")) == list(np.argsort(log_odds, kind="stable"))


def test_a_logit_bias_shifts_the_log_odds_after_the_temperature(tiny_bundle):
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.5, 0.5]])
    log_odds = np.log(probs[:, 1] / probs[:, 0])
    np.testing.assert_allclose(calibrated_malignant_probability(probs, 2.0, -0.5),
                               1 / (1 + np.exp(-(log_odds / 2.0 - 0.5))), rtol=1e-6)
    _, path = tiny_bundle
    batch = np.random.default_rng(2).integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
    plain, biased = Predictor(load_bundle(path)), Predictor(load_bundle(path))
    assert plain.logit_bias == 0.0  # a card without the field, as every bundle before it
    biased.logit_bias = 1.0
    raw = plain.raw_probabilities(batch)
    np.testing.assert_allclose(biased.probability(batch), calibrated_malignant_probability(raw, 1.5, 1.0), rtol=1e-5)
    assert (biased.probability(batch) > plain.probability(batch)).all()
    assert [r["probability_malignant"] for r in biased.predict(batch)] == pytest.approx(
        biased.probability(batch).tolist(), rel=1e-5)


def test_dihedral_views_are_distinct_flips_and_turns():
    """Every view of every image in the batch is that image flipped or turned, view-major, and the eight differ."""
    x = np.arange(3 * 4 * 4 * 3).reshape(3, 4, 4, 3)
    views = dihedral_views(x, 8).reshape(8, 3, 4, 4, 3)
    for i, image in enumerate(x):
        square = [np.rot90(image, k) for k in range(4)] + [np.rot90(image[:, ::-1], k) for k in range(4)]
        for view in views[:, i]:
            assert sum(np.array_equal(view, s) for s in square) == 1
        assert len({view.tobytes() for view in views[:, i]}) == 8
    np.testing.assert_array_equal(views[0], x)  # the first view is the upright image
    np.testing.assert_array_equal(dihedral_views(x, 2).reshape(2, 3, 4, 4, 3)[1], x[:, :, ::-1])  # then its mirror


def test_missing_bundle_and_wrong_classes(tmp_path, tiny_bundle):
    with pytest.raises(FileNotFoundError):
        load_bundle(tmp_path / "nothing.keras")
    model, _ = tiny_bundle
    path = save_bundle(model, tiny_card(class_names=["cat", "dog"]), tmp_path / "wrong.keras")
    with pytest.raises(ValueError, match="class_names"):
        load_bundle(path)


def test_a_network_replaced_without_its_card_is_refused(tmp_path, tiny_bundle):
    """The card's threshold and calibration belong to one network: a .keras file copied over a bundle's without its
    card (a new training run's, by hand) was served with the old card's threshold without a word."""
    import shutil

    from model.bundle import BundleError, card_path, weights_digest

    model, path = tiny_bundle
    card = json.loads(card_path(path).read_text())
    assert card["weights_sha256"] == weights_digest(model) and len(card["weights_sha256"]) == 64
    bundle = tmp_path / "tiny.keras"
    shutil.copyfile(path, bundle)
    shutil.copyfile(card_path(path), card_path(bundle))
    other = load_bundle(bundle).model
    kernel = other.get_layer("top_conv").get_weights()
    kernel[0][0, 0, 0, 0] += 0.001  # one weight of 600,000 changed
    other.get_layer("top_conv").set_weights(kernel)
    other.save(bundle)  # saved over it, the card left as it was
    with pytest.raises(BundleError, match=r"tiny\.keras is not the network its model card tiny\.json was written "
                                          r"for \(the card's weights_sha256 differs from the file's weights\): its "
                                          r"threshold and calibration belong to another network"):
        load_bundle(bundle)
    card["weights_sha256"] = "not a digest"
    card_path(bundle).write_text(json.dumps(card))
    with pytest.raises(BundleError, match="weights_sha256 must be 64 hexadecimal digits"):
        load_bundle(bundle)


def test_seal_records_the_weights_of_a_bundle_saved_before_cards_carried_them(tmp_path, tiny_bundle, capsys):
    """`python -m model.bundle --seal`: the shipped bundle was sealed so; an older card without the digest loads as
    before, and sealing it once makes the check above apply."""
    import shutil

    from model.bundle import DEFAULT_BUNDLE, card_path, main as bundle_main, weights_digest

    shipped = load_bundle(DEFAULT_BUNDLE)
    assert shipped.card["weights_sha256"] == weights_digest(shipped.model)
    model, path = tiny_bundle
    bundle = tmp_path / "old.keras"
    shutil.copyfile(path, bundle)
    card = json.loads(card_path(path).read_text())
    del card["weights_sha256"]
    card_path(bundle).write_text(json.dumps(card))
    assert load_bundle(bundle).card.get("weights_sha256") is None  # loads as before
    assert bundle_main(["--seal", str(bundle)]) == 0
    assert json.loads(card_path(bundle).read_text()) == {**card, "weights_sha256": weights_digest(model)}
    assert "now records the weights of old.keras" in capsys.readouterr().out
    assert bundle_main(["--seal", str(bundle)]) == 0 and "already records its weights" in capsys.readouterr().out
    assert bundle_main(["--seal", str(tmp_path / "none.keras")]) == 2
    assert capsys.readouterr().err.startswith("error: Model bundle not found")


def files_at_most(size: int):
    """A subprocess's `preexec_fn`: files it writes stop at `size` bytes, as on a full disk (a write past the limit
    fails with EFBIG instead of killing the process)."""
    import resource
    import signal

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    return limit


def test_a_card_rewrite_cut_short_leaves_the_card_as_it_was(tmp_path, tiny_bundle):
    """A full disk in the middle of rewriting a card (here a limit of 100 bytes on a file's size): written in place,
    the card was emptied first and cut at the limit, and the bundle could no longer be loaded. Now it is written
    beside and renamed over the old one when whole."""
    import shutil
    import subprocess
    import sys

    from model.bundle import card_path

    _, path = tiny_bundle
    bundle = tmp_path / "old.keras"
    shutil.copyfile(path, bundle)
    card = json.loads(card_path(path).read_text())
    del card["weights_sha256"]
    card_path(bundle).write_text(json.dumps(card, indent=2) + "\n")
    before = card_path(bundle).read_bytes()

    done = subprocess.run([sys.executable, "-m", "model.bundle", "--seal", str(bundle)], capture_output=True, text=True,
                          preexec_fn=files_at_most(100), timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"error: cannot write the model card {card_path(bundle)} (File too large); it is left as it was" in \
        done.stderr and "Traceback" not in done.stderr
    assert card_path(bundle).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.json", "old.keras"]  # no draft left behind


@pytest.mark.parametrize("how", ["copy_bundle", "save_bundle"])
def test_a_bundle_written_over_another_is_written_whole_or_not_at_all(tmp_path, tiny_bundle, how):
    """A full disk in the middle (here a limit of 1 MB on a file's size) of writing a bundle over another cut the old
    .keras file short: `copy_bundle` (`python -m train --output model/shipped/NAME.keras`) copied each file in turn,
    `save_bundle` (`python -m train` into the --run-dir of an earlier run) saved the .keras file in place. Now every
    file is written beside its old one and all are renamed once complete, and the command stops with a sentence."""
    import shutil
    import subprocess
    import sys

    _, path = tiny_bundle
    there = tmp_path / "there" / "tiny.keras"
    there.parent.mkdir()
    for suffix in (".keras", ".json"):
        shutil.copyfile(path.with_suffix(suffix), there.with_suffix(suffix))
    before = {p.name: p.read_bytes() for p in there.parent.iterdir()}
    assert len(before[there.name]) > 2**20
    write = {"copy_bundle": "copy_bundle(sys.argv[1], sys.argv[2])",
             "save_bundle": "bundle = load_bundle(sys.argv[1]); save_bundle(bundle.model, bundle.card, sys.argv[2])"}
    code = ("import sys; from model.bundle import BundleError, copy_bundle, load_bundle, save_bundle\n"
            f"try: {write[how]}\n"
            "except BundleError as exc: sys.exit(f'error: {exc}')")
    done = subprocess.run([sys.executable, "-c", code, str(path), str(there)], capture_output=True, text=True,
                          preexec_fn=files_at_most(2**20), timeout=120)
    assert done.returncode == 1 and f"error: cannot write the bundle {there} (File too large); it is left as it was" \
        in done.stderr, done.stderr[-2000:]
    assert {p.name: p.read_bytes() for p in there.parent.iterdir()} == before  # no draft left, nothing cut


def test_a_gate_fit_that_stops_leaves_the_bundle_as_it_was(tmp_path, tiny_data, capsys):
    """`python -m train.gate --fit` wrote the new gate file first and the card last: a mistake in between (here an
    unreadable validation image) left the new gate file beside the old card, and the bundle was refused from then on
    ("belongs to another bundle"). Now the gate file and the card are replaced together, once both are complete."""
    import shutil

    from model.bundle import DEFAULT_BUNDLE, load_card
    from train import gate

    bundle = tmp_path / "bundle" / DEFAULT_BUNDLE.name
    shutil.copytree(DEFAULT_BUNDLE.parent, bundle.parent)
    for p in bundle.parent.iterdir():
        p.chmod(0o640)  # kept by what replaces them
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    (data / "val" / "benign" / "img_zzz.png").write_bytes(b"not a png")
    before = {p.name: p.read_bytes() for p in bundle.parent.iterdir()}
    with pytest.raises(SystemExit) as info:
        gate.main(["--model", str(bundle), "--data", str(data), "--fit"])
    assert info.value.code == 2 and "error: Unreadable image" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in bundle.parent.iterdir()} == before  # nothing new, no draft left

    (data / "val" / "benign" / "img_zzz.png").unlink()
    gate.main(["--model", str(bundle), "--data", str(data), "--fit"])
    after = {p.name: p.read_bytes() for p in bundle.parent.iterdir()}
    assert after.keys() == before.keys() and after != before and load_card(bundle)["gate"]["bank_images"] == 24
    load_bundle(bundle)  # the new gate file and card belong together
    assert {p.stat().st_mode & 0o777 for p in bundle.parent.iterdir()} == {0o640}


@pytest.mark.parametrize("unreadable", [".json", ".keras", ".gate.npz"])
def test_a_bundle_file_this_user_may_not_read_is_one_sentence(tmp_path, monkeypatch, unreadable):
    """A bundle copied by root with mode 600 and served by a service account (checked as uid 65534): the card was a
    PermissionError traceback, and the .keras and gate files were called damaged, with "copy the bundle again". Here
    the operating system's refusal is stood in for by the one `open` that model.bundle calls to find it out."""
    import shutil

    import model.bundle as bundle_module
    from model.bundle import DEFAULT_BUNDLE, BundleError

    bundle = tmp_path / DEFAULT_BUNDLE.name
    for p in DEFAULT_BUNDLE.parent.iterdir():
        shutil.copyfile(p, tmp_path / p.name)
    refused = bundle.with_name(bundle.name.replace(".keras", unreadable))

    def open_as_another_user(file, *args, **kwargs):
        if Path(file) == refused:
            raise PermissionError(13, "Permission denied", str(file))
        return open(file, *args, **kwargs)

    monkeypatch.setattr(bundle_module, "open", open_as_another_user, raising=False)
    with pytest.raises(BundleError) as info:
        load_bundle(bundle)
    sentence = (f"{refused} cannot be read by this user (Permission denied): give the user who runs this read access "
                f"to the bundle's files (for example chmod a+r on them).")
    assert str(info.value) == sentence
    from app import create_app
    with pytest.raises(SystemExit) as stopped:  # the server said to set MELANOMA_MODEL_PATH to another bundle too
        create_app({"MODEL_PATH": str(bundle)})
    assert str(stopped.value) == f"error: {sentence}"


def test_a_card_whose_input_size_is_not_the_networks_is_one_sentence(tmp_path):
    """A card edited by hand (or sealed over another network) saying 128 px for a 256-px network loaded, and the
    first image judged was a Keras traceback."""
    import json
    import shutil

    from model.bundle import DEFAULT_BUNDLE, BundleError

    for p in DEFAULT_BUNDLE.parent.iterdir():
        shutil.copyfile(p, tmp_path / p.name)
    bundle = tmp_path / DEFAULT_BUNDLE.name
    card = json.loads(bundle.with_suffix(".json").read_text())
    card["preprocessing"]["image_size"] = 128
    bundle.with_suffix(".json").write_text(json.dumps(card))
    with pytest.raises(BundleError, match=r"takes 256x256-pixel inputs, but its model card melanoma_efficientnet\.json "
                                          r"says 128x128: the two files are not a bundle"):
        load_bundle(bundle)
