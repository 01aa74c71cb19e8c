"""The benchmark's own arithmetic and argument checks (the measurements themselves are `python -m bench`)."""
import pytest

from bench.__main__ import main, memory_checkpoints


@pytest.mark.parametrize("total, expected", [(2000, [500, 2000]), (500, [500]), (100, [100]), (1, [1])])
def test_memory_is_read_after_500_uploads_and_at_the_end_never_after_an_empty_load(total, expected):
    checkpoints = memory_checkpoints(total)
    assert checkpoints == expected
    loads = [b - a for a, b in zip([0] + checkpoints, checkpoints)]
    assert all(n > 0 for n in loads) and sum(loads) == total


@pytest.mark.parametrize("flag", ["--requests", "--memory-requests"])
def test_a_count_below_one_is_refused_with_a_sentence(flag, capsys):
    with pytest.raises(SystemExit) as exc:
        main([flag, "0"])
    assert exc.value.code == 2
    assert f"{flag} must be at least 1. Received: 0" in capsys.readouterr().err


def test_a_missing_bundle_or_card_is_refused_before_any_server_starts(tmp_path, capsys):
    from model.bundle import DEFAULT_BUNDLE

    (tmp_path / "alone.keras").write_bytes(DEFAULT_BUNDLE.read_bytes())  # without its card
    for model, sentence in ((tmp_path / "gone.keras", "--model: Model bundle not found"),
                            (tmp_path / "alone.keras", "--model: The model card")):
        with pytest.raises(SystemExit) as exc:
            main(["--model", str(model), "--out", str(tmp_path / "bench")])
        assert exc.value.code == 2 and sentence in capsys.readouterr().err
    assert not (tmp_path / "bench").exists()


@pytest.mark.parametrize("argv", [["--steps", "0"], ["--batch-size", "0"]])
def test_train_step_refuses_a_count_below_one_with_a_sentence(argv, capsys):
    from bench.train_step import main as train_step_main

    with pytest.raises(SystemExit) as exc:
        train_step_main(argv)
    assert exc.value.code == 2
    assert "must be at least 1. Received:" in capsys.readouterr().err


def test_the_largest_uploads_benchmark_refuses_a_missing_bundle_before_any_server_starts(tmp_path, capsys):
    from bench.largest import main as largest_main

    with pytest.raises(SystemExit) as exc:
        largest_main(["--model", str(tmp_path / "gone.keras"), "--out", str(tmp_path / "out")])
    assert exc.value.code == 2 and "--model: Model bundle not found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
