"""Should a newly trained bundle replace the shipped one? One written rule, applied the same way every time.

    python -m train.robustness --model model/shipped/melanoma_efficientnet.keras \
        --model runs/NEW/melanoma_efficientnet.keras --data ../shared/data/isic2017 --out runs/robustness_NEW
    python -m train.shipcheck --baseline model/shipped/melanoma_efficientnet.keras \
        --candidate runs/NEW/melanoma_efficientnet.keras --robustness runs/robustness_NEW/robustness.json

It reads both model cards (validation AUC, test calibration error and AUC, training time, and the data the
test metrics ran on) and the robustness report that scored both bundles on the same images, prints one row
per condition with both values and the limit, writes `shipcheck.json` beside the report, and exits with 1
when any condition fails. Fix the limits before the candidate trains: limits chosen after seeing its test
numbers are a choice made on the test split.

With `--data DIR` it also scores both bundles on the validation and test splits (test without its duplicates)
and compares their ROC AUC image by image: the condition is then that the candidate is not detectably worse,
the upper end of the paired bootstrap 95% interval of (candidate - baseline) at least -`--paired-margin`. This
replaces the validation condition read from the cards, whose point difference on 30 validation melanomas moves
by about 0.03 between seeds of one recipe, and adds the same check on the test split.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from model.bundle import load_card
from train.cli import resamples
from train.metrics import paired_auc_difference


SHIFT_RULES = ("change", "level")


@dataclass(frozen=True)
class Limits:
    val_auc_margin: float = 0.005     # candidate's validation AUC at least the baseline's minus this
    max_ece: float = 0.05             # the calibration target of issue #2
    max_train_minutes: float = 60.0   # the training budget of issue #2
    shift_margin: float = 0.01        # no shift may cost the candidate more AUC than the baseline plus this
    held_shifts: tuple[str, ...] = ("dermoscope_ring",)  # shifts under which the verdicts must hold
    held_spec_margin: float = 0.05    # ... specificity within this of the unshifted images
    held_max_refused: float = 0.10    # ... and the gate refusing less than this share
    min_test_auc_gain: float | None = None  # optional: test AUC at least the baseline's plus this
    paired_margin: float = 0.0        # paired AUC comparisons: upper end of the 95% interval at least -this
    min_test_sensitivity: float | None = None  # optional: test sensitivity at the candidate's own threshold
    min_test_specificity: float | None = None  # optional: test specificity at the candidate's own threshold
    shift_rule: str = "change"        # shifts compared by AUC change from each model's own clean AUC, or "level":
                                      # by the AUC under the shift (candidate at least the baseline's minus the margin)


@dataclass(frozen=True)
class Condition:
    name: str
    baseline: float | None
    candidate: float | None
    limit: str
    passed: bool
    detail: str = ""


def _model_results(report: dict, model_path: str | Path) -> dict:
    """The report's rows for one bundle; the report is keyed by the paths given to train.robustness."""
    wanted = Path(model_path).resolve()
    for key, rows in report["results"].items():
        if Path(key).resolve() == wanted:
            return rows
    raise ValueError(f"{model_path} is not in the robustness report; it holds: {', '.join(report['results'])}. "
                     "Run python -m train.robustness with --model for both bundles.")


def _test_data_hash(card: dict) -> str | None:
    """The data the card's test metrics ran on: set by train.evaluate, else the training run's own data."""
    return card["test"].get("data_hash") or card.get("data", {}).get("hash")


def _paired_condition(name: str, paired: dict, margin: float) -> Condition:
    low, high = paired["difference_ci95"]
    detail = (f"difference {paired['difference']:+.3f}, 95% interval [{low:+.3f}, {high:+.3f}], "
              f"{paired['n']} images ({paired['n_malignant']} malignant)")
    return Condition(name, paired["baseline"], paired["candidate"], f"hi >= {-margin:+.3f}", high >= -margin, detail)


def check(baseline: dict, candidate: dict, base_rows: dict, cand_rows: dict, limits: Limits = Limits(),
          paired: dict[str, dict] | None = None) -> list[Condition]:
    """Every condition of the rule, in order. `baseline`/`candidate` are model cards, `*_rows` robustness rows,
    `paired` the optional image-by-image AUC comparisons per split (`metrics.paired_auc_difference`)."""
    if _test_data_hash(baseline) != _test_data_hash(candidate):
        raise ValueError("the two cards' test metrics ran on different data (data_hash differs); "
                         "evaluate both on the same data first (python -m train.evaluate --update-card)")
    paired = paired or {}
    conditions = []
    if "val" in paired:
        conditions.append(_paired_condition("validation AUC, paired", paired["val"], limits.paired_margin))
    else:
        if any((card.get("data") or {}).get("val_from_train") for card in (baseline, candidate)):
            raise ValueError("the cards' validation AUCs ran on different images (a bundle trained with "
                             "--val-from-train validated on training images moved there); give --data to compare "
                             "both on the data's own validation split, image by image")
        base_val, cand_val = baseline["validation"]["roc_auc"], candidate["validation"]["roc_auc"]
        floor = base_val - limits.val_auc_margin
        conditions.append(Condition("validation AUC", base_val, cand_val, f">= {floor:.3f}", cand_val >= floor))
    if "test" in paired:
        conditions.append(_paired_condition("test AUC, paired", paired["test"], limits.paired_margin))
    ece = candidate["test"]["ece"]
    conditions.append(Condition("test ECE", baseline["test"]["ece"], ece, f"<= {limits.max_ece:.3f}",
                                ece <= limits.max_ece))
    if limits.min_test_auc_gain is not None:
        base_auc, cand_auc = baseline["test"]["roc_auc"], candidate["test"]["roc_auc"]
        floor = base_auc + limits.min_test_auc_gain
        conditions.append(Condition("test AUC", base_auc, cand_auc, f">= {floor:.3f}", cand_auc >= floor))
    for name, floor in (("sensitivity", limits.min_test_sensitivity), ("specificity", limits.min_test_specificity)):
        if floor is not None:  # the operating point: where each bundle's validation threshold lands on test
            value = candidate["test"][name]
            conditions.append(Condition(f"test {name} at its threshold", baseline["test"].get(name), value,
                                        f">= {floor:.3f}", value >= floor))
    minutes = candidate["training"]["seconds"] / 60.0
    conditions.append(Condition("training minutes", baseline["training"]["seconds"] / 60.0, minutes,
                                f"<= {limits.max_train_minutes:g}", minutes <= limits.max_train_minutes))
    if limits.shift_rule not in SHIFT_RULES:
        raise ValueError(f"shift_rule must be one of {SHIFT_RULES}, not {limits.shift_rule!r}")
    key, label = ("auc_change", "AUC change") if limits.shift_rule == "change" else ("roc_auc", "AUC under it")
    for shift, cand in cand_rows.items():
        if shift == "none" or shift not in base_rows:
            continue
        floor = base_rows[shift][key] - limits.shift_margin
        conditions.append(Condition(f"{shift}: {label}", base_rows[shift][key], cand[key],
                                    f">= {floor:+.3f}" if key == "auc_change" else f">= {floor:.3f}",
                                    cand[key] >= floor))
    for shift in limits.held_shifts:
        if shift not in cand_rows:  # a shift the verdicts must hold under, not measured: the rule cannot pass
            conditions.append(Condition(f"{shift}: measured", None, None, "in the report", False,
                                        f"the robustness report has no {shift} row for the candidate; rerun "
                                        "python -m train.robustness with it"))
            continue
        drop = cand_rows["none"]["specificity"] - cand_rows[shift]["specificity"]
        base_drop = base_rows["none"]["specificity"] - base_rows[shift]["specificity"] if shift in base_rows else None
        conditions.append(Condition(f"{shift}: specificity lost", base_drop, drop,
                                    f"<= {limits.held_spec_margin:.3f}", drop <= limits.held_spec_margin))
        refused = cand_rows[shift]["refused_by_gate"]
        base_refused = base_rows[shift]["refused_by_gate"] if shift in base_rows else None
        conditions.append(Condition(f"{shift}: refused by the gate", base_refused, refused,
                                    f"< {limits.held_max_refused:.3f}", refused < limits.held_max_refused))
    return conditions


def format_table(conditions: list[Condition]) -> str:
    lines = [f"{'condition':<34} {'baseline':>9} {'candidate':>9} {'limit':>10}  verdict", "-" * 74]
    for c in conditions:
        base, cand = ("" if value is None else f"{value:.3f}" for value in (c.baseline, c.candidate))
        lines.append(f"{c.name:<34} {base:>9} {cand:>9} {c.limit:>10}  {'pass' if c.passed else 'FAIL'}")
        if c.detail:
            lines.append(f"    {c.detail}")
    failed = [c.name for c in conditions if not c.passed]
    lines.append("-" * 74)
    lines.append("ships: every condition passes" if not failed else f"does not ship: fails {', '.join(failed)}")
    return "\n".join(lines)


def score_paired(baseline: str, candidate: str, data: str, images: str | None = None,
                 splits: tuple[str, ...] = ("val", "test"), bootstrap: int = 2000) -> dict[str, dict]:
    """Score both bundles through the serving path on each split and compare their AUC image by image."""
    from model.bundle import load_bundle
    from model.inference import Predictor
    from train import data as data_mod
    from train.evaluate import predict_split

    seed = data_mod.bundle_seed(None, load_card(candidate), load_card(baseline))  # data without splits of its own
    dataset = data_mod.discover(data, images, seed=seed)
    dataset.duplicates = data_mod.find_duplicates(dataset, known=Path(data) / "NEAR_DUPLICATES.csv")
    predictors = [Predictor(load_bundle(path)) for path in (baseline, candidate)]
    paired = {}
    for split in splits:
        s = dataset.split(split, drop_duplicates=True)
        p_base, p_cand = (predict_split(predictor, s.paths) for predictor in predictors)
        paired[split] = paired_auc_difference(p_base, p_cand, s.labels, n=bootstrap)
        paired[split]["duplicates_dropped"] = len(dataset.splits[split]) - len(s)
    return paired


def parse_args(argv=None) -> argparse.Namespace:
    d = Limits()
    parser = argparse.ArgumentParser(prog="python -m train.shipcheck", description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", required=True, help="the bundle in use, e.g. model/shipped/melanoma_efficientnet.keras")
    parser.add_argument("--candidate", required=True, help="the newly trained bundle")
    parser.add_argument("--robustness", required=True,
                        help="robustness.json of python -m train.robustness run with both bundles")
    parser.add_argument("--val-auc-margin", type=float, default=d.val_auc_margin,
                        help=f"validation AUC at least the baseline's minus this (default: {d.val_auc_margin})")
    parser.add_argument("--max-ece", type=float, default=d.max_ece, help=f"(default: {d.max_ece})")
    parser.add_argument("--max-train-minutes", type=float, default=d.max_train_minutes,
                        help=f"(default: {d.max_train_minutes:g})")
    parser.add_argument("--shift-margin", type=float, default=d.shift_margin,
                        help=f"largest extra AUC a shift may cost beyond the baseline's loss (default: {d.shift_margin})")
    parser.add_argument("--shift-rule", choices=SHIFT_RULES, default=d.shift_rule,
                        help="change: no shift may cost the candidate more AUC, from its own clean AUC, than it costs "
                             "the baseline plus the margin; level: under each shift the candidate's AUC must be at "
                             "least the baseline's minus the margin (default: change)")
    parser.add_argument("--held-shifts", default=",".join(d.held_shifts),
                        help=f"comma-separated shifts under which specificity and the gate must hold "
                             f"(default: {','.join(d.held_shifts)})")
    parser.add_argument("--held-spec-margin", type=float, default=d.held_spec_margin,
                        help=f"largest specificity lost under a held shift (default: {d.held_spec_margin})")
    parser.add_argument("--held-max-refused", type=float, default=d.held_max_refused,
                        help=f"share refused under a held shift must stay below this (default: {d.held_max_refused})")
    parser.add_argument("--min-test-auc-gain", type=float, default=None,
                        help="also require test AUC at least the baseline's plus this (default: not checked)")
    parser.add_argument("--min-test-sensitivity", type=float, default=None,
                        help="optional: test sensitivity at the candidate's own threshold at least this (e.g. 0.85)")
    parser.add_argument("--min-test-specificity", type=float, default=None,
                        help="optional: test specificity at the candidate's own threshold at least this")
    parser.add_argument("--data", default=None,
                        help="score both bundles on this data's val and test splits and compare their AUC image by "
                             "image (replaces the validation AUC condition read from the cards)")
    parser.add_argument("--images", default=None, help="image folder for a CSV given as --data")
    parser.add_argument("--paired-margin", type=float, default=d.paired_margin,
                        help="with --data: the upper end of the 95%% interval of candidate minus baseline AUC must "
                             f"be at least minus this (default: {d.paired_margin})")
    parser.add_argument("--bootstrap", type=resamples, default=2000,
                        help="with --data: bootstrap resamples (default: 2000)")
    return parser.parse_args(argv)


def _operating_point(card: dict) -> str:
    test = card["test"]
    return f"{test.get('sensitivity', float('nan')):.3f} / {test.get('specificity', float('nan')):.3f}"


def main(argv=None) -> int:
    args = parse_args(argv)
    limits = Limits(args.val_auc_margin, args.max_ece, args.max_train_minutes, args.shift_margin,
                    tuple(s.strip() for s in args.held_shifts.split(",") if s.strip()),
                    args.held_spec_margin, args.held_max_refused, args.min_test_auc_gain, args.paired_margin,
                    args.min_test_sensitivity, args.min_test_specificity, args.shift_rule)
    try:
        report = json.loads(Path(args.robustness).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not JSON"
        print(f"python -m train.shipcheck: cannot read --robustness {args.robustness} ({reason}): give the "
              f"robustness.json that python -m train.robustness writes for the two bundles", file=sys.stderr)
        return 2
    try:
        cards = {"baseline": load_card(args.baseline), "candidate": load_card(args.candidate)}
        base_rows, cand_rows = _model_results(report, args.baseline), _model_results(report, args.candidate)
        paired = (score_paired(args.baseline, args.candidate, args.data, args.images, bootstrap=args.bootstrap)
                  if args.data else None)
        conditions = check(cards["baseline"], cards["candidate"], base_rows, cand_rows, limits, paired)
    except (OSError, ValueError, KeyError) as exc:
        detail = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
        print(f"python -m train.shipcheck: cannot compare the bundles: {detail}", file=sys.stderr)
        return 2
    ships = all(c.passed for c in conditions)
    machines = {role: card["training"].get("cpu", "not recorded") for role, card in cards.items()}
    print(format_table(conditions))
    print(f"test sensitivity / specificity, each at its own threshold: baseline {_operating_point(cards['baseline'])}, "
          f"candidate {_operating_point(cards['candidate'])}")
    print("trained on: " + "; ".join(f"{role} {cpu}" for role, cpu in machines.items())
          + " (training minutes compare only on the same machine)")
    out = Path(args.robustness).parent / "shipcheck.json"
    out.write_text(json.dumps({"baseline": args.baseline, "candidate": args.candidate, "limits": asdict(limits),
                               "trained_on": machines, "ships": ships, "paired": paired,
                               "conditions": [asdict(c) for c in conditions]}, indent=2) + "\n")
    print(f"written: {out}")
    return 0 if ships else 1


if __name__ == "__main__":
    sys.exit(main())
