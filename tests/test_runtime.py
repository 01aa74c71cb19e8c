"""The OpenVINO runtime gives the TensorFlow forward pass's outputs (within 1e-4) on the shipped model."""
import importlib.util
import logging
import sys
import threading

import numpy as np
import pytest

from model.bundle import DEFAULT_BUNDLE, load_bundle
from model.inference import Predictor
from model.runtime import resolve
from tests.conftest import lesion_fixtures

pytestmark = pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino not installed")


@pytest.fixture(scope="module")
def predictors():
    bundle = load_bundle(DEFAULT_BUNDLE)
    return (Predictor(bundle, runtime="tensorflow"), Predictor(bundle, runtime="openvino", threads=1),
            Predictor(bundle, runtime="openvino", streams=2))


@pytest.fixture(scope="module")
def batch(predictors):
    tf_pred = predictors[0]
    paths = lesion_fixtures("malignant") + lesion_fixtures("benign") + lesion_fixtures("cam")
    return np.stack([tf_pred.preprocess(p.read_bytes()) for p in paths])


def test_runtimes_are_what_was_asked(predictors):
    assert [p.runtime for p in predictors] == ["tensorflow", "openvino", "openvino"]
    assert resolve("auto") == "openvino"


def test_unknown_runtime_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="auto, openvino, tensorflow"):
        resolve("tflite")


@pytest.mark.parametrize("size", [1, 8])
def test_openvino_matches_tensorflow(predictors, batch, size):
    tf_pred, ov_pred, _ = predictors
    (p_tf, f_tf), (p_ov, f_ov) = tf_pred.raw_outputs(batch[:size]), ov_pred.raw_outputs(batch[:size])
    assert p_ov.shape == p_tf.shape == (size, 2)
    assert f_ov.shape == f_tf.shape
    np.testing.assert_allclose(p_ov, p_tf, atol=1e-4, rtol=0)
    np.testing.assert_allclose(f_ov, f_tf, atol=1e-4, rtol=0)
    assert [v["label"] for v in ov_pred.predict(batch[:size])] == [v["label"] for v in tf_pred.predict(batch[:size])]


@pytest.mark.parametrize("which", [1, 2], ids=["one stream", "two streams"])
def test_openvino_is_safe_across_threads(predictors, batch, which):
    """Each thread gets its own infer requests: concurrent calls return their own image's result, on
    the all-threads model and on the streams alike."""
    ov_pred = predictors[which]
    expected = predictors[0].raw_outputs(batch)[0]
    results, errors = {}, []

    def work(i):
        try:
            for _ in range(5):
                results[i] = ov_pred.raw_outputs(batch[i:i + 1])[0][0]
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(batch))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i in range(len(batch)):
        np.testing.assert_allclose(results[i], expected[i], atol=1e-4)


def test_a_request_that_arrives_while_another_runs_goes_to_the_streams(predictors, batch):
    """The routing the two compiled models exist for: a lone request on the all-threads (latency) model, one that
    arrives while another is running on the throughput model's streams; both give the same answer."""
    forward, expected = predictors[2]._forward, predictors[0].raw_outputs(batch[:1])[0]
    assert forward.throughput is not None and forward.streams == 2
    for busy, used in ((0, "latency"), (1, "throughput")):
        holder = {}

        def work():  # a fresh thread: no infer request of its own yet
            with forward._lock:
                forward._running += busy  # as if another request were running
            try:
                holder["probs"] = predictors[2].raw_outputs(batch[:1])[0]
                holder["made"] = [k for k in ("latency", "throughput") if getattr(forward._local, k, None)]
            finally:
                with forward._lock:
                    forward._running -= busy

        thread = threading.Thread(target=work)
        thread.start()
        thread.join()
        assert holder["made"] == [used]
        np.testing.assert_allclose(holder["probs"], expected, atol=1e-4)


def test_the_converter_sends_no_telemetry(predictors):
    """OpenVINO's converter reports usage over the network unless its telemetry module is missing."""
    import openvino.tools.ovc.convert_impl as convert_impl

    assert convert_impl.tm.__name__ == "openvino.tools.ovc.telemetry_stub"


def tiny_forward():
    """A traced tf.function with the runtimes' signature: a float32 batch in, (probabilities, features) out."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec((None, 4, 4, 3), tf.float32)])
    def forward(x):
        pooled = tf.reduce_mean(x, axis=(1, 2))
        return tf.nn.softmax(pooled[:, :2]), pooled

    return forward


def test_the_converter_is_mended_where_openvinos_environment_check_fails_as_on_python_3_13(monkeypatch):
    """On Python 3.13 OpenVINO's get_environment_setup raises NameError (PEP 667), and every in-memory TensorFlow
    model failed to convert: the app could not start. `convert` swaps in a copy that reads the same versions."""
    import openvino as ov
    from openvino.frontend.tensorflow import utils

    from model import runtime

    if sys.version_info < (3, 13):  # the mended copy answers as the original does where the original works
        assert runtime._environment_setup("tf") == utils.get_environment_setup("tf")

    def as_on_python_3_13(framework):
        raise NameError("name 'tensorflow' is not defined")

    monkeypatch.setattr(utils, "get_environment_setup", as_on_python_3_13)
    level = logging.getLogger().level
    with pytest.raises(NameError):
        ov.convert_model(tiny_forward())
    logging.getLogger().setLevel(level)  # which OpenVINO's failed conversion leaves at ERROR
    model = runtime.convert(tiny_forward())
    assert isinstance(model, ov.Model) and utils.get_environment_setup is runtime._environment_setup
    x = np.random.default_rng(0).uniform(0, 255, (2, 4, 4, 3)).astype(np.float32)
    probs = ov.Core().compile_model(model, "CPU")(x)[0]
    np.testing.assert_allclose(probs, tiny_forward()(x)[0].numpy(), atol=1e-5)


def test_auto_serves_with_tensorflow_when_openvino_cannot_convert_and_says_so(caplog):
    """A model OpenVINO cannot convert: `auto` serves it with TensorFlow and logs why (the root logger's level kept,
    which OpenVINO's failed conversion leaves at ERROR); `openvino` asked for by name raises instead."""
    from model import runtime

    caplog.set_level(logging.WARNING)  # the root logger's level, as a server's would be
    not_a_model = object()
    forward = runtime.make_forward(not_a_model, "auto")
    assert forward.name == "tensorflow" and logging.getLogger().level == logging.WARNING
    assert "serving with TensorFlow instead" in caplog.text and "Unknown model type" in caplog.text
    with pytest.raises(Exception, match="Unknown model type"):
        runtime.make_forward(not_a_model, "openvino")
