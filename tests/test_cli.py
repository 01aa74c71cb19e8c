"""Every command, and the server, answers a mistake a person can fix with one sentence, never a traceback."""
import importlib
import json
import re
from pathlib import Path

import pytest

from model.bundle import DEFAULT_BUNDLE, BundleError, BundleNotFound, check_card, load_bundle, load_card
from train.cli import command
from train.data import DataError

COMMANDS = ["train.evaluate", "train.calibrate", "train.robustness", "train.gate", "train.views", "train.ensemble",
            "train.thresholds"]


@pytest.mark.parametrize("name", COMMANDS)
def test_a_missing_bundle_is_one_sentence_and_status_2(name, tiny_data, tmp_path, capsys):
    missing = tmp_path / "no_model.keras"
    with pytest.raises(SystemExit) as refused:
        importlib.import_module(name).main(["--model", str(missing), "--data", str(tiny_data)])
    assert refused.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(missing) in err and "Traceback" not in err


@pytest.mark.parametrize("name", COMMANDS)
def test_data_without_splits_of_its_own_is_split_with_the_bundles_seed(name, tmp_path, monkeypatch, capsys):
    """Class folders, or a label CSV without a split column, are split 70/10/20 by training's --seed; the commands
    after it split them with 42 whatever the bundle's (--like the shipped model trains with seed 2), so they scored
    and refitted on images the bundle had trained on. Now each takes the bundle's seed from its card, or --seed."""
    import shutil

    from train import data as data_mod

    bundle = tmp_path / "bundle" / DEFAULT_BUNDLE.name
    shutil.copytree(DEFAULT_BUNDLE.parent, bundle.parent)
    card = json.loads(bundle.with_suffix(".json").read_text())
    card["training"]["arguments"]["seed"] = 7
    bundle.with_suffix(".json").write_text(json.dumps(card))
    seeds = []

    def discover(source, images=None, seed=42, **kwargs):  # the seed noted, then stopped before any work
        seeds.append(seed)
        raise DataError("stopped here by the test")

    monkeypatch.setattr(data_mod, "discover", discover)
    args = ["--model", str(bundle), "--data", str(tmp_path)]
    if name != "train.calibrate":  # which rewrites the card in place
        args += ["--out", str(tmp_path / ("views.json" if name == "train.views" else "out"))]
    for extra in ([], ["--seed", "3"]):
        with pytest.raises(SystemExit) as stopped:
            importlib.import_module(name).main(args + extra)
        assert stopped.value.code == 2 and "stopped here by the test" in capsys.readouterr().err
    assert seeds == [7, 3]


def test_bundle_seed_is_the_one_given_or_the_first_cards():
    from train.data import bundle_seed
    card = {"training": {"arguments": {"seed": 2}}}
    assert bundle_seed(5, card) == 5 and bundle_seed(None, card) == 2 and bundle_seed(None, {}) == 42
    assert bundle_seed(None, {}, card, {"training": {"arguments": {"seed": 9}}}) == 2
    assert bundle_seed(0, card) == 0  # a seed of 0 is a seed


def test_missing_data_with_a_real_bundle_is_one_sentence_and_status_2(tmp_path, capsys):
    from train import evaluate
    with pytest.raises(SystemExit) as refused:
        evaluate.main(["--model", str(DEFAULT_BUNDLE), "--data", str(tmp_path / "no_data")])
    assert refused.value.code == 2
    assert capsys.readouterr().err == f"error: The data path does not exist: {tmp_path / 'no_data'}\n"


def test_a_bundle_without_its_card_or_not_a_model_says_which_file(tmp_path):
    (tmp_path / "alone.keras").write_bytes(DEFAULT_BUNDLE.read_bytes())
    with pytest.raises(BundleNotFound, match=r"The model card .*alone\.json is missing"):
        load_bundle(tmp_path / "alone.keras")
    (tmp_path / "text.keras").write_text("not a model")
    (tmp_path / "text.json").write_text(DEFAULT_BUNDLE.with_suffix(".json").read_text())
    (tmp_path / DEFAULT_BUNDLE.with_suffix(".gate.npz").name).write_bytes(b"")  # the gate's file the card names
    with pytest.raises(BundleError, match=r"text\.keras is damaged or not a \.keras file \(a \.keras file is a zip "):
        load_bundle(tmp_path / "text.keras")
    (tmp_path / "text.json").write_text("{not json")
    with pytest.raises(BundleError, match=r"text\.json is not valid JSON"):
        load_card(tmp_path / "text.keras")
    with pytest.raises(BundleNotFound, match="Model bundle not found"):
        load_card(tmp_path / "nothing.keras")


CARD_MISTAKES = [
    # (id, how the shipped card is damaged, the words that name it); each was a KeyError, ValueError or
    # AttributeError traceback in the app, model.predict and the evaluation commands, or a threshold above 1 taken
    ("no threshold", lambda c: c.pop("threshold"),
     r"threshold must be a probability between 0 and 1 \(received None\)"),
    ("a threshold of 2", lambda c: c.update(threshold=2.0), r"threshold must be .* \(received 2\.0\)"),
    ("a threshold in words", lambda c: c.update(threshold="high"), r"threshold must be .* \(received 'high'\)"),
    ("no preprocessing", lambda c: c.pop("preprocessing"),
     r"preprocessing must hold image_size.* \(received None\)"),
    ("an image size in words", lambda c: c["preprocessing"].update(image_size="big"),
     r"image_size, the input side in pixels, .* \(received 'big'\)"),
    ("no backbone", lambda c: c.pop("backbone"), r"backbone must name the network"),
    ("a zero temperature", lambda c: c.update(temperature=0), r"temperature must be a positive number"),
    ("three views", lambda c: c.update(tta_views=3), r"tta_views must be 1, 2, 4 or 8 \(received 3\)"),
    ("a band upside down", lambda c: c.update(indeterminate_band=[0.4, 0.1]), r"indeterminate_band must be two "),
    ("the gate's file elsewhere", lambda c: c["gate"].update(features_file="elsewhere.npz"),
     r"gate\.features_file 'elsewhere\.npz' is not beside the \.keras file"),
    ("two mistakes at once", lambda c: (c.pop("threshold"), c.update(tta_views=0)),
     r"threshold must be .*; tta_views must be 1, 2, 4 or 8 \(received 0\)\.$"),
]


@pytest.mark.parametrize("damage, words", [m[1:] for m in CARD_MISTAKES], ids=[m[0] for m in CARD_MISTAKES])
def test_a_card_that_serving_cannot_use_is_named_with_its_field(tmp_path, damage, words):
    card = json.loads(DEFAULT_BUNDLE.with_suffix(".json").read_text())
    damage(card)
    (tmp_path / "b.json").write_text(json.dumps(card))
    (tmp_path / "b.keras").write_bytes(b"checked after the card")
    (tmp_path / DEFAULT_BUNDLE.with_suffix(".gate.npz").name).write_bytes(b"")  # present unless the card moves it
    with pytest.raises(BundleError, match=rf"^The model card .*b\.json cannot be used: .*{words}"):
        load_bundle(tmp_path / "b.keras")


def test_the_shipped_card_passes_and_a_list_is_no_card(tmp_path):
    check_card(json.loads(DEFAULT_BUNDLE.with_suffix(".json").read_text()), DEFAULT_BUNDLE)
    with pytest.raises(BundleError, match=r"b\.json is not a JSON object"):
        check_card([], tmp_path / "b.keras")


def test_a_folder_is_read_as_the_one_bundle_in_it(tmp_path):
    """MELANOMA_MODEL_PATH, --model and --like take a folder: its one .keras file with a card beside it. Before, the
    first .keras file by name was taken, a checkpoint or copy without a card as soon as the bundle."""
    import shutil
    folder = tmp_path / "run"
    folder.mkdir()
    for suffix in (".keras", ".json", ".gate.npz"):
        shutil.copyfile(DEFAULT_BUNDLE.with_suffix(suffix), folder / f"melanoma_efficientnet{suffix}")
    shutil.copyfile(DEFAULT_BUNDLE, folder / "a_checkpoint.keras")  # no card: not a bundle
    assert load_bundle(folder).path == folder / "melanoma_efficientnet.keras"
    assert load_card(folder) == load_card(DEFAULT_BUNDLE)
    shutil.copyfile(DEFAULT_BUNDLE.with_suffix(".json"), folder / "a_checkpoint.json")
    for load in (load_bundle, load_card):
        with pytest.raises(BundleError, match=r"^2 bundles in .*run \(a_checkpoint\.keras, melanoma_efficientnet\."
                                              r"keras\): give the \.keras file of the one meant\.$"):
            load(folder)
        with pytest.raises(BundleNotFound, match=r"^No bundle in .*: a bundle is a \.keras file with its model card"):
            load(tmp_path)


def test_the_server_with_a_damaged_bundle_stops_with_one_sentence(tmp_path):
    from app import create_app
    card = json.loads(DEFAULT_BUNDLE.with_suffix(".json").read_text())
    (tmp_path / "b.json").write_text(json.dumps({**card, "threshold": None}))
    (tmp_path / DEFAULT_BUNDLE.with_suffix(".gate.npz").name).write_bytes(b"")
    (tmp_path / "b.keras").write_bytes(DEFAULT_BUNDLE.read_bytes()[:100_000])  # cut short in a copy
    with pytest.raises(SystemExit) as stopped:
        create_app({"MODEL_PATH": str(tmp_path / "b.keras")})
    assert re.fullmatch(r"error: The model card .*b\.json cannot be used: threshold must be a probability between 0 "
                        r"and 1 \(received None\)\. Set MELANOMA_MODEL_PATH to .*\)\.", str(stopped.value))
    (tmp_path / "b.json").write_text(json.dumps(card))
    with pytest.raises(SystemExit) as stopped:
        create_app({"MODEL_PATH": str(tmp_path / "b.keras")})
    assert re.fullmatch(r"error: .*b\.keras is damaged or not a \.keras file \(a \.keras file is a zip archive\): "
                        r"copy the bundle again\. Set MELANOMA_MODEL_PATH to .*\)\.", str(stopped.value))


def test_command_passes_results_and_other_errors_through(capsys):
    assert command(lambda argv: argv)(["x"]) == ["x"]
    with pytest.raises(SystemExit) as refused:
        command(lambda argv: (_ for _ in ()).throw(DataError("The data folder is empty: /d")))()
    assert refused.value.code == 2 and capsys.readouterr().err == "error: The data folder is empty: /d\n"
    with pytest.raises(SystemExit) as stopped:  # Ctrl-C: one line and the shell's status for it
        command(lambda argv: (_ for _ in ()).throw(KeyboardInterrupt()))()
    assert stopped.value.code == 130 and capsys.readouterr().err == "stopped (Ctrl-C) before the end.\n"
    with pytest.raises(ZeroDivisionError):  # a bug stays a traceback, for whoever fixes it
        command(lambda argv: 1 / 0)()


def test_the_server_without_its_bundle_stops_with_one_sentence(tmp_path):
    from app import create_app
    with pytest.raises(SystemExit) as stopped:
        create_app({"MODEL_PATH": str(tmp_path / "gone.keras")})
    assert str(stopped.value) == (f"error: Model bundle not found: {tmp_path / 'gone.keras'}. Set MELANOMA_MODEL_PATH "
                                  f"to a bundle's .keras file, with its model card beside it (default: the shipped "
                                  f"model, {DEFAULT_BUNDLE}).")


def test_the_learning_curve_names_a_bundle_whose_card_is_missing_or_broken(tmp_path, capsys):
    from train import learning_curve
    (tmp_path / "broken.json").write_text("{")
    for model, sentence in ((tmp_path / "gone.keras", "Model bundle not found"),
                            (tmp_path / "broken.keras", "is not valid JSON")):
        with pytest.raises(SystemExit) as refused:
            learning_curve.main(["--model", str(model), "--out", str(tmp_path / "lc")])
        assert refused.value.code == 2 and sentence in capsys.readouterr().err


def test_evaluating_images_of_one_class_is_one_sentence(tmp_path, capsys):
    import shutil

    from tests.conftest import lesion_fixtures
    from train import evaluate
    (tmp_path / "clinic" / "benign").mkdir(parents=True)
    for path in lesion_fixtures("benign"):
        shutil.copy(path, tmp_path / "clinic" / "benign" / path.name)
    with pytest.raises(SystemExit) as refused:
        evaluate.main(["--model", str(DEFAULT_BUNDLE), "--data", str(tmp_path / "clinic"), "--split", "all"])
    assert refused.value.code == 2
    assert capsys.readouterr().err == (f"error: The images of {tmp_path / 'clinic'} need both classes for ROC AUC, "
                                       f"sensitivity and specificity; they are {{'benign': 2, 'malignant': 0}}.\n")


def test_like_repeats_the_shipped_models_recipe_from_its_card():
    """`--like BUNDLE` resolves to exactly the options of the command its card records, on your own data."""
    import shlex

    from train.train import parse_args
    card = load_card(DEFAULT_BUNDLE)
    recorded = vars(parse_args(shlex.split(card["training"]["command"])[3:]))  # after "python -m train"
    like = vars(parse_args(["--data", recorded["data"], "--run-dir", recorded["run_dir"],
                            "--like", str(DEFAULT_BUNDLE)]))
    assert like.pop("like") == str(DEFAULT_BUNDLE) and recorded.pop("like") is None
    assert like == recorded
    assert like["ring_augment"] == 0.5 and like["frame_fill"]  # not the parser's defaults: the card's recipe


def test_like_lets_options_override_and_keeps_the_data_and_outputs_its_own(tmp_path, caplog):
    import json

    from train.train import parse_args
    bundle = tmp_path / "theirs.keras"
    bundle.write_bytes(b"")  # --like reads only the card
    arguments = {"data": "/their/data", "aux_diagnosis": "/their/diagnosis.csv", "run_dir": "runs/theirs",
                 "output": "model/theirs.keras", "distribute": "mirrored", "cpu_devices": 2,
                 "lr": 1e-4, "epochs": 9, "seed": 5, "blur_augment": 0.2, "view_turns": [0.0, 45.0],
                 "an_option_since_removed": 1}
    (tmp_path / "theirs.json").write_text(json.dumps({"training": {"arguments": arguments}}))
    with caplog.at_level("INFO"):
        args = parse_args(["--data", "mine", "--like", str(bundle), "--seed", "1"])
    assert (args.lr, args.epochs, args.blur_augment, args.view_turns) == (1e-4, 9, 0.2, (0.0, 45.0))
    assert args.seed == 1  # given here: it overrides the card
    # the log says what the run took, not the card's seed 5 that the command line replaced (it said seed=5)
    assert (f"--like {bundle}: lr=0.0001, epochs=9, blur_augment=0.2, view_turns=(0.0, 45.0); from the command line "
            f"instead: seed=1") in caplog.text
    assert (args.data, args.aux_diagnosis, args.run_dir, args.output, args.distribute, args.cpu_devices) == (
        "mine", None, None, None, "none", 0)
    assert not hasattr(args, "an_option_since_removed")


def test_like_a_missing_bundle_or_a_card_without_a_recipe_is_one_sentence(tmp_path, capsys):
    from train.train import parse_args
    with pytest.raises(SystemExit) as refused:
        parse_args(["--data", "d", "--like", str(tmp_path / "none.keras")])
    assert refused.value.code == 2 and f"--like: Model bundle not found: {tmp_path / 'none.keras'}" in (
        capsys.readouterr().err)
    (tmp_path / "old.keras").write_bytes(b"")
    (tmp_path / "old.json").write_text('{"training": {"command": "python -m train --data d"}}')
    with pytest.raises(SystemExit) as refused:
        parse_args(["--data", "d", "--like", str(tmp_path / "old.keras")])
    assert refused.value.code == 2 and "records no training arguments" in capsys.readouterr().err


def test_baselines_name_a_missing_stack_bundle_before_computing_any_feature(tiny_data, tmp_path, capsys, monkeypatch):
    from train import baselines
    monkeypatch.setattr(baselines, "feature_matrix", lambda *a: pytest.fail("features computed before the check"))
    missing = tmp_path / "no_model.keras"
    with pytest.raises(SystemExit) as refused:
        baselines.main(["--data", str(tiny_data), "--stack", str(missing), "--out", str(tmp_path / "out")])
    assert refused.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Model bundle not found") and str(missing) in err


OUTPUT_COMMANDS = [  # (module, its arguments but the output, the output's flag, whether that names a file)
    ("train.evaluate", ["--model", "{bundle}", "--data", "{data}"], "--out", False),
    ("train.robustness", ["--model", "{bundle}", "--data", "{data}"], "--out", False),
    ("train.views", ["--model", "{bundle}", "--data", "{data}"], "--out", True),
    ("train.thresholds", ["--model", "{bundle}", "--data", "{data}"], "--out", False),
    ("train.ensemble", ["--model", "{bundle}", "--data", "{data}"], "--out", False),
    ("train.gate", ["--model", "{bundle}", "--data", "{data}"], "--out", False),
    ("train.audit", ["--data", "{data}"], "--out", False),
    ("train.baselines", ["--data", "{data}"], "--out", False),
    ("train.labelcheck", ["--predictions", "{predictions}"], "--out", False),
    ("train.bundlediff", ["{bundle}", "{bundle}"], "--out", True),
    ("train", ["--data", "{data}", "--weights", "none", "--image-size", "32", "--epochs", "1"], "--run-dir", False),
    ("train", ["--data", "{data}", "--weights", "none", "--image-size", "32", "--epochs", "1",
               "--run-dir", "{tmp}/run"], "--output", True),
    ("train.nonlesion", ["--no-browser"], "--out", False),
    ("bench", ["--skip-usual"], "--out", False),
    ("bench.train_step", [], "--out", False),
]


@pytest.mark.parametrize("name, args, flag, is_file", OUTPUT_COMMANDS,
                         ids=[f"{c[0]} {c[2]}" for c in OUTPUT_COMMANDS])
def test_an_output_that_cannot_be_written_is_one_sentence_before_the_work(name, args, flag, is_file, tiny_data,
                                                                          tmp_path, capsys, caplog,
                                                                          monkeypatch):
    """Each command checks where it writes before it works (robustness, thresholds and training take minutes to
    hours), and a place it cannot write is one sentence and status 2: before, most wrote at the end and raised
    FileNotFoundError or NotADirectoryError there, the work lost."""
    (tmp_path / "a_file").write_text("a file, where the output's folder would be")
    (tmp_path / "predictions.csv").write_text("image,label,probability_malignant\nISIC_1.jpg,benign,0.1\n"
                                              "ISIC_2.jpg,malignant,0.8\n")
    target = tmp_path / "a_file" / ("out.json" if is_file else "out")
    values = {"bundle": DEFAULT_BUNDLE, "data": tiny_data, "predictions": tmp_path / "predictions.csv", "tmp": tmp_path}
    argv = [a.format(**values) for a in args] + [flag, str(target)]
    module = importlib.import_module({"train": "train.train", "bench": "bench.__main__"}.get(name, name))
    monkeypatch.setattr("train.nonlesion.build", lambda *a, **k: pytest.fail("the work began"))
    monkeypatch.setattr("model.inference.Predictor.__init__", lambda *a, **k: pytest.fail("the work began"))
    with pytest.raises(SystemExit) as refused:
        status = module.main(argv)
        raise SystemExit(status)  # train.bundlediff returns its status
    assert refused.value.code == 2
    err = capsys.readouterr().err + caplog.text  # python -m train logs its sentence
    assert f"cannot write {flag} {target}: " in err and "Traceback" not in err


CARD_COMMANDS = [("train.evaluate", ["--update-card"], "--update-card"), ("train.gate", ["--fit"], "--fit"),
                 ("train.calibrate", [], "--model")]


@pytest.mark.parametrize("name, extra, flag", CARD_COMMANDS, ids=[c[0] for c in CARD_COMMANDS])
def test_a_card_that_cannot_be_rewritten_is_one_sentence_before_the_work(name, extra, flag, tiny_data, tmp_path,
                                                                        capsys, monkeypatch):
    """The commands that rewrite a bundle's card found a folder they could not write (a bundle installed read-only,
    run by another user) only at the end, after minutes of work. The operating system's refusal is stood in for at
    the temporary file `train.cli.writable` tries there (root writes everywhere)."""
    import shutil
    import tempfile

    bundle = tmp_path / "read_only" / DEFAULT_BUNDLE.name
    shutil.copytree(DEFAULT_BUNDLE.parent, bundle.parent)
    real = tempfile.TemporaryFile

    def read_only_there(*args, **kwargs):
        if Path(kwargs.get("dir", "")) == bundle.parent:
            raise PermissionError(13, "Permission denied")
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only_there)
    monkeypatch.setattr("model.inference.Predictor.__init__", lambda *a, **k: pytest.fail("the work began"))
    module = importlib.import_module(name)
    with pytest.raises(SystemExit) as refused:
        module.main(["--model", str(bundle), "--data", str(tiny_data), *extra, "--out", str(tmp_path / "out")]
                    if name != "train.calibrate" else ["--model", str(bundle), "--data", str(tiny_data)])
    assert refused.value.code == 2
    err = capsys.readouterr().err
    assert f"cannot write {flag} {bundle.with_suffix('.json')}: Permission denied" in err and "Traceback" not in err


def test_writable_tries_and_leaves_nothing_behind(tmp_path):
    from train.cli import writable
    assert writable(tmp_path / "x" / "y" / "z") == tmp_path / "x" / "y" / "z"
    assert list(tmp_path.iterdir()) == []  # a command that stops later on a mistake leaves no empty folders
    (tmp_path / "kept").mkdir()
    writable(tmp_path / "kept")
    assert (tmp_path / "kept").is_dir()  # what was there stays


def test_writable_never_removes_a_folder_another_process_made_meanwhile(tmp_path, monkeypatch):
    """The two workers of a multi-worker training share --run-dir and check it at the same time: before, one
    worker's check removed the run folder the other had made between that check's look and its clean-up, and the
    other's args.json had nowhere to go (FileNotFoundError; seen in the full suite)."""
    import tempfile
    from train.cli import writable
    real = tempfile.TemporaryFile

    def meanwhile(*args, **kwargs):  # the other worker, while this one tries its file
        (tmp_path / "run").mkdir(exist_ok=True)
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "TemporaryFile", meanwhile)
    writable(tmp_path / "run", "--run-dir")
    assert (tmp_path / "run").is_dir()


def test_an_input_file_read_after_the_work_is_checked_before_it(tiny_data, tmp_path, capsys, monkeypatch):
    """train.gate's --nonlesion folder, train.baselines' --network-metrics and train.shipcheck's --robustness: a wrong
    one was a FileNotFoundError traceback (the first two after minutes of work) or "Expecting value: line 1 column
    1"."""
    from train import baselines, gate, shipcheck
    monkeypatch.setattr("model.inference.Predictor.__init__", lambda *a, **k: pytest.fail("the work began"))
    monkeypatch.setattr(baselines, "run", lambda args: pytest.fail("the features were computed"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.json").write_text("not json")
    with pytest.raises(SystemExit) as refused:
        gate.main(["--model", str(DEFAULT_BUNDLE), "--data", str(tiny_data), "--nonlesion", str(tmp_path / "empty")])
    assert refused.value.code == 2
    assert f"--nonlesion {tmp_path / 'empty'} has no MANIFEST.csv: make the folder with python -m train.nonlesion" \
           in capsys.readouterr().err
    for metrics in (tmp_path / "missing.json", tmp_path / "notes.json"):
        with pytest.raises(SystemExit) as refused:
            baselines.main(["--data", str(tiny_data), "--network-metrics", str(metrics), "--out", str(tmp_path / "b")])
        assert refused.value.code == 2
        assert f"--network-metrics {metrics} is not a metrics.json" in capsys.readouterr().err
    for report, reason in ((tmp_path / "missing.json", "No such file or directory"),
                           (tmp_path / "notes.json", "not JSON")):
        assert shipcheck.main(["--baseline", str(DEFAULT_BUNDLE), "--candidate", str(DEFAULT_BUNDLE),
                               "--robustness", str(report)]) == 2
        assert f"cannot read --robustness {report} ({reason}): give the robustness.json" in capsys.readouterr().err


@pytest.mark.parametrize("name, flag, value", [
    ("train.robustness", "--bootstrap", "0"), ("train.views", "--bootstrap", "-5"),
    ("train.shipcheck", "--bootstrap", "x"),
    ("train.thresholds", "--target-sensitivity", "1.5"), ("train.baselines", "--target-sensitivity", "0"),
    ("train.ensemble", "--target-sensitivity", "90"), ("train.gate", "--k", "0"), ("train.gate", "--percentile", "150"),
    ("train.gate", "--band-fraction", "1.5"), ("train.gate", "--percentile", "nan"), ("train.audit", "--alpha", "5"),
    ("train.baselines", "--image-size", "8"), ("train.learning_curve", "--target-auc", "90"),
    ("train.calibrate", "--target-sensitivity", "1.5"),
    # a seed NumPy refuses (or, past 2**31 - 1, one that training offsets) was its ValueError traceback
    ("train.train", "--seed", "99999999999999999999"), ("train.train", "--seed", "2147483648"),
    ("train.evaluate", "--seed", "-1"), ("train.nonlesion", "--seed", "4294967296"), ("train.audit", "--seed", "x")])
def test_numbers_outside_their_range_are_refused_by_the_parser(name, flag, value, capsys):
    """Before, --bootstrap 0 wrote NaN intervals and --target-sensitivity 1.5 a threshold study for an impossible
    target, without a word."""
    args = {"train.shipcheck": ["--baseline", "b.keras", "--candidate", "c.keras", "--robustness", "r.json"],
            "train.baselines": ["--data", "d"], "train.audit": ["--data", "d"], "train.train": ["--data", "d"],
            "train.nonlesion": [],
            "train.learning_curve": ["--model", "m.keras"]}.get(name, ["--model", "m.keras", "--data", "d"])
    with pytest.raises(SystemExit) as refused:
        importlib.import_module(name).main(args + [flag, value])
    assert refused.value.code == 2
    assert f"argument {flag}: " in capsys.readouterr().err


def test_a_gate_file_damaged_or_from_another_bundle_is_named(tmp_path):
    """The gate file beside the .keras file and card: an empty one was numpy's EOFError traceback when the app or a
    command started; another bundle's (left there when a .keras file and card were copied over) judged uploads with
    another network's features and threshold, without a word."""
    import shutil

    import numpy as np
    from app import create_app

    for suffix in (".keras", ".json"):
        shutil.copyfile(DEFAULT_BUNDLE.with_suffix(suffix), tmp_path / f"melanoma_efficientnet{suffix}")
    gate = tmp_path / "melanoma_efficientnet.gate.npz"
    gate.write_bytes(b"")
    with pytest.raises(BundleError, match=r"^The gate file .*melanoma_efficientnet\.gate\.npz is damaged or not a gate "
                                          r"file \(.*\): copy the bundle again, its three files together\.$"):
        load_bundle(tmp_path / "melanoma_efficientnet.keras")
    with np.load(DEFAULT_BUNDLE.with_suffix(".gate.npz")) as shipped:
        np.savez_compressed(gate, features=shipped["features"], k=shipped["k"], threshold=0.2)  # another fit's
    with pytest.raises(SystemExit) as stopped:
        create_app({"MODEL_PATH": str(tmp_path / "melanoma_efficientnet.keras")})
    assert re.match(r"error: The gate file .*melanoma_efficientnet\.gate\.npz is not the one the model card "
                    r"melanoma_efficientnet\.json was written for \(k 10 and distance threshold 0\.2; the card's: 10 "
                    r"and 0\.166984\d*\): it belongs to another bundle\.", str(stopped.value)), str(stopped.value)
