"""The MLflow platform end to end: `mlflow run . -e main` on the CI toy, reuse, the entry points one by one,
and bad input. Everything goes to a temporary SQLite store, artifact root and model cache."""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from entrypoints import compare, cross_eval, main, normalize, sample_outdist
from entrypoints import tokendiff as tokendiff_ep
from modeldiff.method.toy import ToyTask, make_toy_model
from modeldiff.platform import tracking
from modeldiff.views import describe
from support import ROOT, artifacts, ratio_of
from support.chains import ARTIFACTS, EXPERIMENT, OVERRIDES, mlflow_run, outdist_arrays, runs_of

pytestmark = pytest.mark.integration


def test_main_logs_the_contract_artifacts(store, chain):
    parent, children = chain
    assert set(children) == {"sample_outdist_A", "sample_outdist_B", "cross_eval_AB", "cross_eval_BA", "normalize"}
    client = MlflowClient()
    for name, run_id in children.items():
        run = client.get_run(run_id)
        entry_point = name.rsplit("_", 1)[0] if name != "normalize" else name
        assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["modeldiff.entry_point"] == entry_point and run.data.tags["modeldiff.config_hash"]
        assert set(ARTIFACTS[entry_point]) <= set(artifacts(run_id)), name
    assert client.get_run(children["sample_outdist_A"]).data.tags["modeldiff.model"] == "toy:small"
    assert parent.data.tags["modeldiff.model_a"] == "toy:small" and parent.data.tags["modeldiff.model_b"] == "toy:large"
    assert parent.data.params["sampler.steps"] == "300"
    ratio = ratio_of(children["normalize"])
    assert set(ratio) == {"lambda", "terms", "ratio", "counts", "D_range", "ci", "std"}
    terms = ["PD_AB", "PA_AB", "PA_BA", "PD_BA"]
    assert list(ratio["terms"]) == terms and len(ratio["ratio"]) == 4
    assert ratio["ratio"][0] == 1.0 and ratio["counts"]["n_A"] == 2000 and set(ratio["D_range"]) == {"A", "B"}
    # DESIGN §4: every term and ratio with its interval and spread
    ci, std = ratio["ci"], ratio["std"]
    assert set(ci) == {"level", "terms", "ratio"} and ci["level"] == 0.95 and list(ci["terms"]) == terms
    assert ci["ratio"][0] == [1.0, 1.0] and len(ci["ratio"]) == 4 and std["ratio"][0] == 0.0
    assert set(std) == {"terms", "ratio"} and list(std["terms"]) == terms and len(std["ratio"]) == 4
    for k in terms:
        assert ci["terms"][k][0] <= ratio["terms"][k] <= ci["terms"][k][1] and std["terms"][k] > 0
    assert ratio["counts"]["n_units_A"] == 8 and 0 < ratio["counts"]["ess_inputs_A"] < 2000
    metrics = client.get_run(children["normalize"]).data.metrics
    assert metrics["PD_AB"] == ratio["terms"]["PD_AB"] and "D_B_max" in metrics
    assert metrics["ratio_PA_AB_lo"] == ci["ratio"][1][0] and metrics["PD_BA_hi"] == ci["terms"]["PD_BA"][1]
    assert ratio_of(parent.info.run_id) == ratio
    assert client.get_run(parent.info.run_id).data.metrics["ratio_PD_BA_hi"] == ci["ratio"][3][1]
    # tempering's convergence diagnostics (issue 14 item 3): per-bin split-R̂ and ESS, round trips, warnings
    sampling = client.get_run(children["sample_outdist_A"])
    assert "tables/diagnostics.json" in artifacts(children["sample_outdist_A"])
    m = sampling.data.metrics
    assert m["round_trips_min"] >= 0 and m["round_trips_mean"] >= m["round_trips_min"]
    assert m["rhat_max_in_z"] >= 1.0 - 1e-6 and m["ess_min_in_z"] > 0
    assert m["ess_min_in_z"] < 100, m  # 8 ladders of 300 steps: too few for every bin, so the warning must be there
    assert "bins in Z have ESS < 100" in sampling.data.tags["modeldiff.warning"]  # and it is carried up to main
    assert "sample_outdist_A: " in client.get_run(parent.info.run_id).data.tags["modeldiff.warning"]
    # issue 17: each run's description (mlflow.note.content) states its result in words; main ends by naming the
    # experiment, the run and how to open it
    note = lambda run_id: client.get_run(run_id).data.tags["mlflow.note.content"]  # noqa: E731
    ratio, exp = ratio_of(children["normalize"]), store["experiment_id"]
    for run_id in (parent.info.run_id, children["normalize"]):
        text = note(run_id)
        assert f"= {describe.ratio_line(ratio)}** (95% intervals, λ = 0)" in text
        pa_ab = describe.term_sentence("PA_AB", ratio["terms"]["PA_AB"], ratio["ci"]["terms"]["PA_AB"])
        assert f"- {pa_ab}." in text and "on B's likely inputs, A assigns the lower NLL" in text
        assert "(z in Z = [1.3, 1.8])" in text
        for k in (1, 2, 3):  # each ratio entry with its interval as ratio.json logs them, to 3 decimals
            lo, hi = ci["ratio"][k]
            assert f"{ratio['ratio'][k]:.3f} [{lo:.3f}, {hi:.3f}]" in text, (k, text)
    main_note = note(parent.info.run_id)
    for step, run_id in children.items():  # links to every step, in the UI's own routes
        assert f"[{describe.step_label(step)}](#/experiments/{exp}/runs/{run_id}?{describe.WORKFLOW})" in main_note
    assert "bins in Z have ESS < 100" in main_note  # the steps' warnings
    assert f"[cross_eval A→B](#/experiments/{exp}/runs/{children['cross_eval_AB']}?{describe.WORKFLOW})" in note(
        children["normalize"]
    )
    sampling = note(children["sample_outdist_A"])
    assert "### ρ̃(z) of `toy:small`" in sampling and "**Coverage of Z = [" in sampling
    assert "- split-R̂, largest over Z's bins" in sampling and "bins in Z have ESS < 100" in sampling
    out = store["main_output"]
    uri = store["env"]["MLFLOW_TRACKING_URI"]
    assert f"run {parent.info.run_id} in experiment '{EXPERIMENT}' (id {exp}), tracking URI {uri}" in out
    assert (
        f"open it: mlflow ui --backend-store-uri {uri}   then http://127.0.0.1:5000/#/experiments/{exp}?workflowType="
        in out
    )
    assert (
        f"this run: http://127.0.0.1:5000/#/experiments/{exp}/runs/{parent.info.run_id}?workflowType=machine_learning"
        in out
    )


def test_rerun_reuses_finished_runs(store, chain):
    parent, children = chain
    before = {ep: len(runs_of(store, ep)) for ep in ("sample_outdist", "cross_eval", "normalize")}
    assert main.main(["--config", "configs/toy.yaml", "--overrides", OVERRIDES]) == children
    assert {ep: len(runs_of(store, ep)) for ep in before} == before
    again = runs_of(store, "main", "FINISHED")[0]
    assert again.info.run_id != parent.info.run_id and ratio_of(again.info.run_id) == ratio_of(children["normalize"])
    # a changed λ reruns normalize only
    runs = main.main(["--config", "configs/toy.yaml", "--overrides", OVERRIDES + " lambda=0.01"])
    upstream = lambda d: {k: v for k, v in d.items() if k != "normalize"}  # noqa: E731
    assert upstream(runs) == upstream(children)
    assert runs["normalize"] != children["normalize"] and ratio_of(runs["normalize"])["lambda"] == 0.01


def test_entry_points_one_by_one_give_the_same_ratio(chain):
    _, children = chain
    args = ["--config", "configs/toy.yaml", "--overrides", OVERRIDES]
    od_a = sample_outdist.main(args + ["--model", "toy:small"])
    od_b = sample_outdist.main(args + ["--model", "toy:large"])
    assert od_a not in children.values()  # standalone entry points always run afresh
    ab = cross_eval.main(args + ["--outdist_run", od_a, "--other_model", "toy:large", "--direction", "AB"])
    ba = cross_eval.main(args + ["--outdist_run", od_b, "--other_model", "toy:small", "--direction", "BA"])
    ratio = ratio_of(normalize.main(args + ["--ab_run", ab, "--ba_run", ba]))
    assert ratio == ratio_of(children["normalize"])


def _fails(capsys, entry, argv, match):
    capsys.readouterr()  # drop what the test printed before (MLflow's download progress bars), keep the error only
    with pytest.raises(SystemExit) as e:
        entry.main(["--config", "configs/toy.yaml"] + argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith("modeldiff: error: ") and "\n" not in err, err
    assert match in err, err
    return err


def test_bad_input_is_one_line_and_exits_2(store, chain, capsys, tmp_path):
    _, children = chain
    missing = "0" * 32
    _fails(
        capsys,
        cross_eval,
        ["--overrides", OVERRIDES, "--outdist_run", missing, "--other_model", "toy:large"],
        f"run '{missing}' does not exist",
    )
    failed = runs_of(store, "cross_eval")[0]  # the run was opened, failed, and kept its config
    assert failed.info.status == "FAILED" and "config/resolved.yaml" in artifacts(failed.info.run_id)
    _fails(
        capsys,
        normalize,
        ["--ab_run", children["sample_outdist_A"], "--ba_run", children["cross_eval_BA"]],
        "is a sample_outdist run, not a cross_eval run",
    )
    _fails(
        capsys,
        normalize,
        ["--ab_run", children["cross_eval_BA"], "--ba_run", children["cross_eval_AB"]],
        "is a BA cross_eval, not AB",
    )
    _fails(
        capsys,
        sample_outdist,
        ["--overrides", "sampler.stepz=10", "--model", "toy:small"],
        "unknown config key 'sampler.stepz'",
    )
    _fails(capsys, main, ["--overrides", "z_range=[1.8,1.3]"], "z_range is reversed")
    _fails(capsys, sample_outdist, ["--model", "toy:medium"], "unknown toy model 'toy:medium'")
    make_toy_model(ToyTask(5, 8, 10), n_embd=16, n_head=2, n_layer=1).save_pretrained(tmp_path / "v8")
    _fails(capsys, main, ["--overrides", OVERRIDES, "--model_b", str(tmp_path / "v8")], "are not comparable")


MLFLOW_LOG = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d (INFO|WARNING|ERROR) mlflow")  # `mlflow run`'s own lines


def ours(res) -> list[str]:
    """What an entry point printed under `mlflow run`, without MLflow's own log lines."""
    return [line for line in (res.stdout + res.stderr).splitlines() if line.strip() and not MLFLOW_LOG.match(line)]


def test_mlflow_run_with_bad_input_fails_the_run(store):
    res = mlflow_run(store, "cross_eval", outdist_run="not-a-run", other_model="toy:large")
    assert res.returncode != 0
    assert ours(res) == [ours(res)[0]] and ours(res)[0].startswith("modeldiff: error: run 'not-a-run' does not exist")
    assert runs_of(store, "cross_eval")[0].info.status == "FAILED"


@pytest.mark.parametrize("case", ["unknown model", "mismatched tokenizers"])
def test_mlflow_run_main_with_bad_input_prints_one_line(store, chain, tmp_path, case):
    """`main` runs under `accelerate launch`, which must not wrap the error in tracebacks: an error at the start and
    one after both models loaded (every DESIGN §5 case is one line in-process: test_bad_input_is_one_line_and_exits_2;
    each mlflow run costs about 30 s)."""
    make_toy_model(ToyTask(5, 8, 10), n_embd=16, n_head=2, n_layer=1).save_pretrained(tmp_path / "v8")
    params, match = {
        "unknown model": ({"model_a": "no/such/model/here"}, "is not a model directory"),
        "mismatched tokenizers": ({"overrides": OVERRIDES, "model_b": str(tmp_path / "v8")}, "are not comparable"),
    }[case]
    res = mlflow_run(store, "main", **params)
    lines = ours(res)
    assert res.returncode != 0 and len(lines) == 1 and lines[0].startswith("modeldiff: error: "), lines
    assert match in lines[0]


def test_two_processes_give_the_one_process_result(store, chain):
    """`accelerate launch` with 2 CPU processes (ladders and scoring split, only the main process logs)
    reproduces the one-process chain; a fresh experiment keeps it from reusing the chain's runs."""
    _, children = chain
    name = EXPERIMENT + "-2proc"
    experiment_id = MlflowClient().create_experiment(name, artifact_location=str(store["tmp"] / "artifacts-2proc"))
    res = subprocess.run(
        [
            "accelerate",
            "launch",
            "--config_file",
            "configs/accelerate/cpu2.yaml",
            "-m",
            "entrypoints.main",
            "--overrides",
            OVERRIDES,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**store["env"], "MLFLOW_EXPERIMENT_NAME": name},
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    runs = MlflowClient().search_runs([experiment_id])
    assert sorted(r.data.tags["modeldiff.entry_point"] for r in runs) == [
        "cross_eval",
        "cross_eval",
        "main",
        "normalize",
        "sample_outdist",
        "sample_outdist",
    ]  # logged once
    parent = next(r for r in runs if r.data.tags["modeldiff.entry_point"] == "main")
    assert ratio_of(parent.info.run_id) == ratio_of(children["normalize"])


def test_a_killed_sampling_run_resumes_to_the_uninterrupted_result(store, chain):
    """SIGKILL mid-run, `--resume <run id>`: the same records (and so the same ρ̃) as a run never interrupted."""
    over = OVERRIDES.replace("sampler.steps=300", "sampler.steps=2500") + " checkpoint.every=200"
    cmd = [
        sys.executable,
        "-m",
        "entrypoints.sample_outdist",
        "--config",
        "configs/toy.yaml",
        "--overrides",
        over,
        "--model",
        "toy:small",
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=store["env"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, killed = time.time() + 300, None
        while killed is None and time.time() < deadline and proc.poll() is None:
            for run in runs_of(store, "sample_outdist", "RUNNING"):
                if int(run.data.tags.get("modeldiff.checkpoint_step", 0)) >= 400:
                    proc.kill()
                    killed = run.info.run_id
            time.sleep(0.2)
    finally:
        proc.kill()
        proc.wait()
    assert killed, "the run finished or never checkpointed before it could be killed"
    checkpoint_step = int(MlflowClient().get_run(killed).data.tags["modeldiff.checkpoint_step"])
    assert 400 <= checkpoint_step < 2500

    res = subprocess.run(
        cmd + ["--resume", killed], cwd=ROOT, env=store["env"], capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stderr[-3000:]
    resumed = runs_of(store, "sample_outdist", "FINISHED")[0]
    assert resumed.data.tags["modeldiff.resumed_from"] == killed
    killed_run = MlflowClient().get_run(killed)
    assert killed_run.info.status == "KILLED"
    # what `main` looks for to resume an identical interrupted sampling run by itself
    assert (
        tracking.find_resumable_run(
            "sample_outdist", killed_run.data.tags["modeldiff.pending_hash"], store["experiment_id"]
        )
        == killed
    )
    uninterrupted = sample_outdist.main(["--config", "configs/toy.yaml", "--overrides", over, "--model", "toy:small"])
    full = MlflowClient().get_run(uninterrupted).data.metrics
    assert resumed.data.metrics["n_records"] == full["n_records"] == 2400 * 12 * 8
    got, want = outdist_arrays(resumed.info.run_id), outdist_arrays(uninterrupted)
    for name in ("hist", "ln_rho", "edges"):
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    # a finished run has nothing to resume; a run of another config is refused
    err = subprocess.run(
        cmd + ["--resume", uninterrupted], cwd=ROOT, env=store["env"], capture_output=True, text=True, timeout=600
    ).stderr
    assert "finished: there is nothing to resume" in err


def _artifact(run_id, path):
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path))


def _page_data(run_id):
    html = _artifact(run_id, "tokendiff/index.html").read_text()
    return json.loads(html.split('id="tokendiff-data">', 1)[1].split("</script>", 1)[0])


def test_compare_runs_one_reference_against_several_models_sharing_its_draws(store, chain, capsys):
    """Appendix B: `-e compare` reuses the chain's (toy:small, toy:large) main run, runs one new pair as a child, and
    logs one table whose rows share A's scale (terms = the pair's × the share of A's draws X finds likely)."""
    copy = "noise:1e-2:relative:toy:small"
    res = mlflow_run(store, "compare", overrides=OVERRIDES, models=f"toy:large {copy}")
    assert res.returncode == 0, res.stderr[-3000:]
    run = runs_of(store, "compare", "FINISHED")[0]
    assert {"tables/compare.json", "tables/compare.csv", "plots/compare_ratio.png"} <= set(artifacts(run.info.run_id))
    table = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/tables/compare.json")
    assert table["reference"] == "toy:small" and [r["model"] for r in table["rows"]] == ["toy:large", copy]
    large, noisy = table["rows"]
    # the pair (toy:small, toy:large) was run before (the chain, or another test's identical main): reused, not rerun
    reused = MlflowClient().get_run(large["main_run"])
    assert reused.info.status == "FINISHED" and reused.info.start_time < run.info.start_time
    assert reused.data.tags.get("mlflow.parentRunId") != run.info.run_id
    assert (reused.data.tags[tracking.MODEL_A], reused.data.tags[tracking.MODEL_B]) == ("toy:small", "toy:large")
    assert MlflowClient().get_run(noisy["main_run"]).data.tags["mlflow.parentRunId"] == run.info.run_id
    pairs = [MlflowClient().get_run(r["main_run"]).data.tags for r in table["rows"]]
    # A is not sampled again: the new pair reuses a finished identical sample_outdist run of A (the module's other
    # tests may have made several, all alike), and both models score one set of A's draws
    sampled = MlflowClient().get_run(pairs[1]["modeldiff.run.sample_outdist_A"])
    assert sampled.info.start_time < run.info.start_time and sampled.data.tags[tracking.MODEL] == "toy:small"
    assert (
        sampled.data.tags[tracking.CONFIG_HASH]
        == (MlflowClient().get_run(pairs[0]["modeldiff.run.sample_outdist_A"]).data.tags[tracking.CONFIG_HASH])
    )
    draws = [tracking.load_draws(p["modeldiff.run.cross_eval_AB"]) for p in pairs]
    assert draws[0]["representative"].tolist() == draws[1]["representative"].tolist()
    for row, tags in zip(table["rows"], pairs):
        pair = ratio_of(tags["modeldiff.run.normalize"])
        share = row["counts"]["share_A_in_X"]
        assert share == pytest.approx(pair["counts"]["n_A_in_B"] / pair["counts"]["n_A"])
        for k, pk in zip(("PD_AX", "PA_AX", "PA_XA", "PD_XA"), ("PD_AB", "PA_AB", "PA_BA", "PD_BA")):
            assert row["terms"][k] == pytest.approx(pair["terms"][pk] * share)  # Eq. 14–17's scale
            lo, hi = row["ci"]["terms"][k]
            assert lo <= row["terms"][k] <= hi
        assert row["ratio"] == pytest.approx(pair["ratio"])  # a common factor leaves a row's ratio as it is
        assert run.data.metrics[f"{row['key']}_PA_AX"] == pytest.approx(row["terms"]["PA_AX"])
    note = run.data.tags["mlflow.note.content"]
    assert "2 models against the reference `toy:small`" in note and describe.ratio_line(noisy) in note
    assert f"modeldiff: compare toy:small → {copy}: {describe.ratio_line(noisy)}" in res.stdout + res.stderr
    # bad input: one line, exit 2
    _fails(capsys, compare, ["--overrides", OVERRIDES, "--models", " "], 'models="m1 m2 m3"')
    _fails(capsys, compare, ["--overrides", OVERRIDES, "--models", "toy:large toy:small"], "is also in models")


def test_cross_eval_page_links_d_to_token_views(chain):
    """cross_eval's page: the D histogram of its draws, whose distinct inputs carry their D, and token views whose
    per-token NLL differences average to that D."""
    _, children = chain
    run_id = children["cross_eval_AB"]
    draws = tracking.load_draws(run_id)
    data = _page_data(run_id)
    assert sum(data["overview"]["measures"][0]["counts"]) == len(draws) == 2000
    distinct = draws.drop_duplicates("representative")
    assert sorted(e["info"]["D"] for e in data["examples"]) == pytest.approx(sorted(distinct["D"]), abs=1e-5)
    assert 0 < len(data["views"]) == min(100, len(distinct))  # tokendiff.cross_eval_views
    examples = {e["id"]: e for e in data["examples"]}
    for v in data["views"]:
        assert abs(np.mean(v["values"]["nll_diff"]) - examples[v["example"]]["info"]["D"]) < 1e-5
        assert " ".join(v["tokens"]) == examples[v["example"]]["text"]


def test_tokendiff_entry_point(store, chain, tmp_path, capsys):
    """`mlflow run . -e tokendiff` on a small toy corpus (the chain's toy models): its artifacts, tags and numbers;
    again in-process, both models' analyses come from the cache; one text inline; bad input."""
    parent, _ = chain
    rng = np.random.default_rng(0)
    lines = [" ".join(map(str, rng.integers(0, 6, size=rng.integers(1, 6)))) for _ in range(60)]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(lines) + "\n")
    res = mlflow_run(store, "tokendiff", overrides=OVERRIDES, corpus=str(corpus), measure="max_abs_clamped_rank_diff")
    assert res.returncode == 0, res.stderr[-3000:]
    run = runs_of(store, "tokendiff", "FINISHED")[0]
    run_id = run.info.run_id
    assert set(ARTIFACTS["tokendiff"]) <= set(artifacts(run_id))
    tags, metrics = run.data.tags, run.data.metrics
    for tag in ("modeldiff.model_a", "modeldiff.model_b", "modeldiff.model_a.identity", "modeldiff.model_b.identity"):
        assert tags[tag] == parent.data.tags[tag]
    assert tags["modeldiff.corpus"] == str(corpus)
    n_tokens = sum(len(line.split()) for line in lines)
    assert metrics["n_examples"] == 60 and metrics["n_tokens"] == n_tokens and metrics["cache_hit_A"] == 0
    examples = pd.read_parquet(_artifact(run_id, "tokendiff/examples.parquet"))
    assert examples["text"].tolist() == lines and examples["row"].tolist() == list(range(60))
    assert examples["n_tokens"].sum() == n_tokens and "topk_abs_nll_diff" in examples
    np.testing.assert_allclose(examples["mean_nll_diff"], examples["z_A"] - examples["z_B"], atol=1e-12)
    top = json.loads(_artifact(run_id, "tokendiff/top_examples.json").read_text())
    assert len(top) == 25 and all(len(ids) == 50 for ids in top.values())
    assert (
        top["max_abs_clamped_rank_diff"]
        == examples["max_abs_clamped_rank_diff"].sort_values(ascending=False, kind="stable").index[:50].tolist()
    )
    data = _page_data(run_id)
    assert data["overview"]["default"] == "max_abs_clamped_rank_diff" and data["measure"] == "clamped_rank_diff"
    assert data["views"][0]["example"] == top["max_abs_clamped_rank_diff"][0]
    tokens = pd.read_parquet(_artifact(run_id, "tokendiff/tokens.parquet"))
    assert set(tokens["example"]) == {v["example"] for v in data["views"]}

    # the same comparison again: both analyses from the cache, the same numbers
    args = ["--config", "configs/toy.yaml", "--overrides", OVERRIDES]
    again = tokendiff_ep.main(args + ["--corpus", str(corpus), "--measure", "max_abs_clamped_rank_diff"])
    metrics = MlflowClient().get_run(again).data.metrics
    assert metrics["cache_hit_A"] == metrics["cache_hit_B"] == 1
    pd.testing.assert_frame_equal(pd.read_parquet(_artifact(again, "tokendiff/examples.parquet")), examples)

    # one text inline: one example, its tokens, no corpus overview
    one = tokendiff_ep.main(args + ["--text", "1 2 3 4"])
    one_examples = pd.read_parquet(_artifact(one, "tokendiff/examples.parquet"))
    assert len(one_examples) == 1 and one_examples["n_tokens"].tolist() == [4]
    assert _page_data(one)["overview"] is None and "tokendiff/top_examples.json" not in artifacts(one)

    capsys.readouterr()  # what the runs above printed
    _fails(capsys, tokendiff_ep, ["--overrides", OVERRIDES], "pass either corpus")
    _fails(
        capsys, tokendiff_ep, ["--overrides", OVERRIDES, "--text", "1 2", "--measure", "rank"], "unknown measure 'rank'"
    )
    _fails(capsys, tokendiff_ep, ["--overrides", OVERRIDES, "--corpus", str(tmp_path / "none.txt")], "not found")
    _fails(
        capsys, tokendiff_ep, ["--overrides", OVERRIDES, "--text", "1 9"], "token id 9 is not in toy:small's token set"
    )
