"""report.md: the evaluation in words, each number the metrics' own, with the figures and tables that are there."""
import numpy as np
import pytest

from train.metrics import classification_metrics
from train.report import in_words, write_report


@pytest.fixture
def metrics():
    # 10 melanomas and 30 benign lesions: 8 melanomas and 12 benign lesions at or above the threshold 0.5
    y = np.array([1] * 10 + [0] * 30)
    p = np.array([0.9] * 8 + [0.2] * 2 + [0.6] * 12 + [0.1] * 18)
    return classification_metrics(p, y, threshold=0.5, bootstrap=50)


def test_the_sentences_give_the_confusion_matrix_counts_and_the_shares_they_make(metrics):
    ranking, threshold, calibration, accuracy = in_words(metrics)
    assert f"ROC AUC {metrics['roc_auc']:.3f}" in ranking
    assert ("8 of 10 melanomas flagged (sensitivity 0.800) and 18 of 30 benign lesions cleared (specificity 0.600)"
            in threshold)
    assert "Of the 20 images flagged, 8 (40%) were melanomas; of the 20 cleared, 2 (10%) were." in threshold
    assert "melanoma rate (25%)" in threshold
    assert f"Expected calibration error {metrics['ece']:.3f}" in calibration
    assert f"by {100 * metrics['ece']:.1f} percentage points" in calibration
    assert accuracy.startswith("**Accuracy.** 0.650, where calling every image benign would score 75%")


def test_a_threshold_that_flags_nothing_still_reads(metrics):
    y = np.array([1] * 10 + [0] * 30)
    m = classification_metrics(np.linspace(0.1, 0.4, 40), y, threshold=0.9, bootstrap=50)
    threshold = in_words(m)[1]
    assert "0 of 10 melanomas flagged" in threshold and "Of the 0 images flagged, 0 (none) were melanomas" in threshold


def test_the_report_holds_the_command_the_table_the_tables_and_only_the_figures_that_exist(metrics, tmp_path):
    (tmp_path / "roc.png").write_bytes(b"png")
    (tmp_path / "metrics.json").write_text("{}")
    path = write_report(tmp_path, metrics, "tiny on test", "python -m train.evaluate --model m.keras",
                        about={"model": "`m.keras`"}, tables={"By diagnosis": "nevus  0.5"})
    text = path.read_text()
    assert path == tmp_path / "report.md" and text.startswith("# tiny on test\n")
    assert "```bash\npython -m train.evaluate --model m.keras\n```" in text
    assert "- model: `m.keras`" in text and "- written: " in text
    assert "confusion [[TN, FP], [FN, TP]]     [[18, 12], [2, 8]]" in text
    assert "## By diagnosis\n\n```text\nnevus  0.5\n```" in text
    assert "](roc.png)" in text and "pr.png" not in text and "reliability.png" not in text
    assert "`metrics.json`" in text and "predictions.csv" not in text
