"""Run descriptions (modeldiff.views.describe): each term said in words with its interval, as DESIGN §2 defines it
(a count of one side's likely inputs per input both models find likely), verdicts naming copy and parent, coverage of
Z, precision and recall, and links that open inside the MLflow UI."""

import copy

from modeldiff.views import describe

# DESIGN §4's example ratio.json, with the effective sizes normalize adds
RATIO = {
    "lambda": 0.0,
    "terms": {"PD_AB": 0.61, "PA_AB": 0.42, "PA_BA": 0.30, "PD_BA": 0.83},
    "ratio": [1.0, 0.69, 0.49, 1.36],
    "counts": {
        "n_A": 4000,
        "n_A_in_B": 3100,
        "n_B": 4000,
        "n_B_in_A": 2900,
        "ess_inputs_A": 812.4,
        "ess_inputs_B": 640.6,
        "n_units_A": 8,
        "n_units_B": 8,
    },
    "D_range": {"A": [-0.62, 0.20], "B": [-0.21, 0.52]},
    "ci": {
        "level": 0.95,
        "terms": {"PD_AB": [0.57, 0.65], "PA_AB": [0.40, 0.45], "PA_BA": [0.27, 0.33], "PD_BA": [0.79, 0.87]},
        "ratio": [[1.0, 1.0], [0.62, 0.76], [0.44, 0.54], [1.27, None]],
    },
    "std": {"terms": {"PD_AB": 0.02, "PA_AB": 0.02, "PA_BA": 0.015, "PD_BA": 0.02}, "ratio": [0.0, 0.035, 0.025, None]},
}


def test_each_term_says_whose_inputs_who_is_lower_and_on_what_scale():
    text = describe.term_sentence("PA_AB", 0.42, [0.40, 0.45])
    assert text == (
        "PA_A→B = 0.420 [0.400, 0.450]: on A's likely inputs, B assigns the lower NLL to 42% [40%, 45%] as many "
        "inputs as both models find likely"
    )
    assert describe.term_sentence("PD_AB", 0.61, None).startswith("PD_A→B = 0.610: on A's likely inputs, A assigns")
    assert "on B's likely inputs, A assigns" in describe.term_sentence("PA_BA", 0.3, [0.27, 0.33])
    assert "on B's likely inputs, B assigns" in describe.term_sentence("PD_BA", 0.83, [0.79, 0.87])
    # λ > 0: the margin is said; small shares keep a decimal; an unbounded end is ∞
    text = describe.term_sentence("PD_BA", 0.045, [0.02, None], lam=0.05)
    assert "B assigns the lower NLL by more than λ = 0.05 to 4.5% [2.0%, ∞] as many" in text


def test_ratio_description_states_the_ratio_terms_draws_warnings_and_runs():
    text = describe.ratio_description(
        RATIO,
        model_a="toy:small",
        model_b="toy:large",
        z_range=(1.0, 1.6),
        warnings=["side A rests on 4 independent stage-1 units"],
        runs={"cross_eval A→B": "abc", "cross_eval B→A": ("7", "def")},
        experiment_id="3",
    )
    assert (
        "**PD_A→B : PA_A→B : PA_B→A : PD_B→A = 1.000 : 0.690 [0.620, 0.760] : 0.490 [0.440, 0.540] : "
        "1.360 [1.270, ∞]** (95% intervals, λ = 0)"
    ) in text
    assert "A = `toy:small`, B = `toy:large`." in text
    for term in describe.TERMS:
        assert f"- {describe.term_sentence(term, RATIO['terms'][term], RATIO['ci']['terms'][term])}." in text
    assert "z in Z = [1, 1.6]" in text and "can add up to more than 100%" in text
    assert "Draws: 4,000 of A (3,100 also likely for B), 4,000 of B (2,900 also likely for A)" in text
    assert "812 and 641 effectively independent inputs, from 8 and 8 independent stage-1 units" in text
    assert "spans [-0.620, 0.200] on A's draws and [-0.210, 0.520] on B's" in text
    assert "- side A rests on 4 independent stage-1 units" in text
    # links: a route inside the UI, in the run's own experiment unless told another
    assert "- [cross_eval A→B](#/experiments/3/runs/abc?workflowType=machine_learning) (`abc`)" in text
    assert "- [cross_eval B→A](#/experiments/7/runs/def?workflowType=machine_learning) (`def`)" in text
    assert "**Warnings:** none." in describe.ratio_description(RATIO)


def test_a_ratio_without_counts_or_intervals_is_still_described():
    bare = {k: copy.deepcopy(RATIO[k]) for k in ("lambda", "terms", "ratio")}
    text = describe.ratio_description(bare)
    assert "= 1.000 : 0.690 : 0.490 : 1.360** (λ = 0)" in text
    assert "Draws:" not in text


def test_labels_routes_and_numbers():
    assert describe.step_label("sample_outdist_A") == "sample_outdist A"
    assert describe.step_label("cross_eval_BA") == "cross_eval B→A"
    assert describe.step_label("annotate_AB") == "annotate A→B"
    assert describe.step_label("normalize") == "normalize"
    assert describe.ui_route("2") == "#/experiments/2?workflowType=machine_learning"
    assert describe.ui_route("2", "r1") == "#/experiments/2/runs/r1?workflowType=machine_learning"
    assert describe.percent(0.0) == "0%" and describe.percent(1.25) == "125%" and describe.percent(0.031) == "3.1%"
    assert describe.number(float("inf")) == "∞" and describe.number(float("nan")) == "undefined"


PLAGIARISM = {
    "model_a": "toy:small",
    "model_b": "noise:1e-2:relative:toy:small",
    "copy_model": "noise:1e-2:relative:toy:small",
    "parent_model": "toy:small",
    "verdict": "suspected_copy_of",
    "mode": "combined",
    "copy": "B",
    "parent": "A",
    "direction_evidence": "black_box_balance",
    "reason": "weights related (p = 7.6e-36) and the difference is noise-like",
    "thresholds": {"confidence": 0.95, "near_identical": 0.25, "distinct": 2.0},
    "black_box": {
        "A": {"other_wins": 0.41, "interval": [0.32, 0.51], "n_effective": 88.2, "n_distinct": 120},
        "B": {"other_wins": 0.47, "interval": [0.38, 0.56], "n_effective": 90.0, "n_distinct": 131},
        "abs_D_q95": 0.0123,
        "scale": 0.0841,
        "relative_D": 0.052,
        "relative_D_interval": [0.044, 0.061],
        "n_effective": 178.2,
        "balance": -0.0021,
        "balance_se": 0.0004,
        "balance_z": -5.25,
    },
    "white_box": {"applicable": True, "p_value": 7.6e-36, "structure_p_value": 0.72, "direction_z": 1.3},
    "ratio": [1.0, 0.9, 1.1, 1.2],
}


def test_plagiarism_description_names_copy_and_parent_with_the_evidence():
    text = describe.plagiarism_description(PLAGIARISM, runs={"normalize": "n1"}, experiment_id="4")
    assert text.startswith("### Verdict: suspected_copy_of\n")
    assert "**`noise:1e-2:relative:toy:small` is a suspected copy of `toy:small` (its parent).**" in text
    assert "Which one is the copy: the draws: summed over both sides' inputs, D = z_A − z_B leans to the parent" in text
    assert "on B's own inputs, A has the lower NLL on 47% of the draws [38%, 56%] (95% Wilson interval over 90" in text
    assert (
        "- median |D| over the pair's own z spread (0.0841): 0.052 [0.044, 0.061] (95% interval over 178 effective "
        "inputs; near copies at most 0.25, farther apart than any copy above 2)"
    ) in text
    assert "- balance mean_A(D) + mean_B(D) = -0.0021 ± 0.0004 (z = -5.25; below 0: A has the lower NLL" in text
    assert "95th percentile of |D| over both sides: 0.0123" in text
    assert "independence p = 7.6e-36" in text and "noise-structure p = 0.72" in text and "z = +1.30" in text
    assert "The ratio with its intervals is on the normalize run." in text
    assert "[normalize](#/experiments/4/runs/n1?workflowType=machine_learning)" in text

    unknown = {**PLAGIARISM, "copy_model": None, "parent_model": None, "direction_evidence": "unknown"}
    text = describe.plagiarism_description(unknown)
    assert (
        "**one of A = `toy:small` and B = `noise:1e-2:relative:toy:small` is a suspected copy of the other.**" in text
    )
    assert "Which one is the copy: unknown: neither the draws nor the weights tell which one" in text

    independent = {**PLAGIARISM, "verdict": "independent", "copy_model": None, "direction_evidence": None}
    independent["white_box"] = {"applicable": False, "reason": "different architectures"}
    text = describe.plagiarism_description(independent)
    assert "**independent: A = `toy:small`, B = `noise:1e-2:relative:toy:small`.**" in text
    assert "not applicable: different architectures" in text and "Which one" not in text
    identical = {**PLAGIARISM, "white_box": {"applicable": True, "p_value": 0.0, "structure_p_value": float("nan")}}
    assert "noise-structure p = undefined" in describe.plagiarism_description(identical)
    assert "weight-energy z = undefined" in describe.plagiarism_description(identical)


def test_screening_description_lists_each_counterpart():
    body = {
        "version": "models:/suspect/1",
        "verdict": "suspected_copy_of",
        "counterpart": "models:/parent/1",
        "pairs": {
            "models:/parent/1": {
                "verdict": "suspected_copy_of",
                "copy": "B",
                "direction_evidence": "black_box_dominance",
            }
        },
        "skipped": {"models:/broken/1": "cannot load"},
    }
    text = describe.screening_description(body)
    assert text.startswith("### Screening of `models:/suspect/1`: suspected_copy_of `models:/parent/1`")
    assert "| `models:/parent/1` | suspected_copy_of | this version | black_box_dominance |" in text
    assert "- skipped `models:/broken/1`: cannot load" in text


def test_outdist_description_gives_coverage_of_z_and_the_diagnostics_present():
    summary = {
        "model": "toy:small",
        "method": "tempering",
        "z_range": [1.0, 1.6],
        "n_units": 8,
        "n_records": 24000,
        "n_in_z": 5123,
        "n_distinct_in_z": 812,
        "bins_in_z": 30,
        "bins_reached": 28,
        "empty_bins": [[1.0, 1.02], [1.02, 1.04]],
        "diagnostics": {"round_trips_min": 3, "rhat_max_in_z": 1.043, "ess_min_in_z": 85.2, "unknown": 1},
    }
    text = describe.outdist_description(summary, warnings=["ESS < 100 in 3 bins"])
    assert "Sampled by tempering (8 independent ladders, 24,000 records)." in text
    assert "**Coverage of Z = [1, 1.6]:** 28 of its 30 bins hold samples; 5,123 records and 812 distinct" in text
    assert "Bins of Z without a sample: [1, 1.02], [1.02, 1.04]" in text
    assert "- round trips per ladder, fewest: 3" in text
    assert "- split-R̂, largest over Z's bins (want ≤ 1.1): 1.043" in text
    assert "- effective sample size, smallest over Z's bins (want ≥ 100): 85" in text
    assert "unknown" not in text and "- ESS < 100 in 3 bins" in text
    ancestral = {**summary, "method": "ancestral", "empty_bins": [], "diagnostics": {"ess_in_z": 301.7}}
    text = describe.outdist_description(ancestral)
    assert "8 independent blocks" in text and "without a sample" not in text
    assert "- effective sample size in Z: 302" in text


def test_annotation_description_gives_precision_and_recall_with_their_errors():
    result = {
        "direction": "AB",
        "annotator": "toy_rule",
        "window": {"text": "(-inf, 0)"},
        "precision": 0.8312,
        "precision_se": 0.0213,
        "recall": 0.5104,
        "recall_se": 0.031,
        "se_from": "replicates",
        "window_mass": 0.62,
        "counts": {"n_in_window": 1240, "n_annotated": 310},
    }
    text = describe.annotation_description(result, runs={"cross_eval A→B": ("1", "ce")})
    assert text.startswith("### Annotation of the A→B draws with D in (-inf, 0)")
    assert "**Precision 0.831 ± 0.021, recall 0.510 ± 0.031** (± one standard error, from replicates)." in text
    assert "window's 1,240 draws are 62% as many as the draws both models find likely (the terms' scale); 310" in text
    assert "[cross_eval A→B](#/experiments/1/runs/ce?workflowType=machine_learning)" in text
    line = describe.annotation_line("BA", result)
    assert line.startswith("- annotate B→A (D in (-inf, 0), toy_rule): precision 0.831 ± 0.021, recall 0.510")


def test_where_to_look_names_the_run_and_how_to_open_it():
    local = describe.where_to_look("sqlite:///mlflow.db", "modeldiff", "1", "abc")
    assert local == [
        "run abc in experiment 'modeldiff' (id 1), tracking URI sqlite:///mlflow.db",
        "open it: mlflow ui --backend-store-uri sqlite:///mlflow.db   then "
        "http://127.0.0.1:5000/#/experiments/1?workflowType=machine_learning",
        "this run: http://127.0.0.1:5000/#/experiments/1/runs/abc?workflowType=machine_learning",
    ]
    server = describe.where_to_look("https://mlflow.example.org/", "team", "7", "r9")
    assert (
        server[1]
        == "open https://mlflow.example.org/#/experiments/7?workflowType=machine_learning (the experiment's runs table)"
    )
    assert server[2] == "this run: https://mlflow.example.org/#/experiments/7/runs/r9?workflowType=machine_learning"
