"""task=report: statistics, and a tiny real sweep (one job killed, one never started) → table + PNGs."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from scipy import stats

from rtd_lab.report import build_report, expected_jobs, group_arms, read_sweep, report_markdown
from tests.test_experiments import ROOT, _cli


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    """2 methods x 2 seeds, tiny; then one job "killed" (no results.json) and one "never started"."""
    root = tmp_path_factory.mktemp("sweep")
    proc = _cli(
        "-m",
        "+experiment=standard_kd,cot_ft",
        "seed=0,1",
        "+debug=fast",
        "trainer.enable_progress_bar=false",
        "diagnostics.self_consistency_k=2",
        "data.benchmark.n_test_per_depth=12",  # CKA needs >= 10 chains of a depth
        cwd=root,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = list((root / "multirun").glob("*/*"))
    assert len(expected_jobs(sweep)) == 4
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    (jobs[1] / "results.json").unlink()  # standard_kd seed 1: killed before it finished
    shutil.rmtree(jobs[2])  # cot_ft seed 0: never started
    return root, sweep, jobs


def test_sweep_report_names_missing_jobs_and_draws_plots(tiny_sweep):
    root, sweep, jobs = tiny_sweep
    proc = _cli("task=report", f"report.sweep_dir={sweep}", cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads((sweep / "report.json").read_text())
    assert len(rep["missing"]) == 2
    assert any(jobs[1].name in m and "no results.json" in m for m in rep["missing"])
    assert any("never started:" in m and "seed=0" in m for m in rep["missing"])
    assert rep["baseline"] == "standard_kd" and set(rep["vs_baseline"]) == {"cot_ft"}
    # one seed per arm left: nothing to test over seeds, only the test-set interval
    assert rep["vs_baseline"]["cot_ft"]["chain_acc"] is None
    assert set(rep["vs_baseline"]["cot_ft"]["test_set"]) == {"delta", "ci", "questions"}
    assert rep["chain_acc"]["standard_kd"]["seeds"] == [0] and rep["chain_acc"]["cot_ft"]["seeds"] == [1]
    per_seed = rep["chain_acc"]["cot_ft"]["chain_acc/depth_1"]["per_seed"]
    assert len(per_seed) == 1 and 0 <= per_seed[0] <= 1
    assert any("pilot" in w for w in rep["warnings"])
    assert rep["diagnostics"]["standard_kd"]["cka"]
    assert rep["diagnostics"]["standard_kd"]["int4_chain_acc_by_depth"]  # the weights quantised after training
    md = (sweep / "report.md").read_text()
    assert "Missing, failed or unreadable jobs (2)" in md and "| all |" in md and "a pilot" in md
    assert "| standard_kd | 4-bit |" in md and "| cot_ft | int8 |" in md
    for png in ("chain_acc_by_depth.png", "cka_by_step.png", "chain_acc_bars.png"):
        assert (sweep / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((sweep / "wandb").glob("offline-run-*"))  # the report as a W&B run, offline


def test_quantised_metrics_recomputed_from_a_checkpoint_equal_the_runs_own(tiny_sweep, monkeypatch):
    from rtd_lab.tasks.report import recompute

    root, _, jobs = tiny_sweep
    monkeypatch.chdir(root)  # the runs' relative cache folder
    path = jobs[0] / "results.json"
    results = json.loads(path.read_text())
    measured = results["diagnostics"].pop("quantized")
    path.write_text(json.dumps(results))
    recompute(jobs[0], cka=False, quantize=[8, 4])
    assert json.loads(path.read_text())["diagnostics"]["quantized"] == measured


def test_the_analysis_notebook_runs_on_a_sweep(tiny_sweep, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    _, sweep, _ = tiny_sweep
    nb = nbformat.read(ROOT / "notebooks" / "analysis.ipynb", as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")  # stored without outputs
    monkeypatch.setenv("RTD_LAB_SWEEP", str(sweep))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    printed = "".join(o.get("text", "") for o in nb.cells[1].outputs)
    assert "2 finished runs, 2 missing" in printed
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 3


def test_expected_jobs_merge_the_sweep_file_and_the_command_line(tmp_path):
    (tmp_path / "multirun.yaml").write_text(
        "hydra:\n"
        "  sweeper:\n"
        "    params: {'+experiment@_global_': 'rtd,standard_kd', seed: '0,1,2'}\n"
        "  overrides:\n"
        "    task: ['+experiment=paper_table', 'seed=3,4', 'sample.temperatures=[0.7,1.0]', 'group=x']\n"
    )
    jobs = expected_jobs(tmp_path)
    assert len(jobs) == 4 and {"+experiment@_global_": "rtd", "seed": "3"} in jobs
    assert expected_jobs(tmp_path / "nowhere") is None


def test_report_errors_name_the_field(make_cfg, tmp_path):
    from rtd_lab.tasks.report import run_report

    with pytest.raises(ValueError, match="report.sweep_dir is not set"):
        run_report(make_cfg("task=report"))
    with pytest.raises(FileNotFoundError, match="report.sweep_dir"):
        run_report(make_cfg("task=report", f"report.sweep_dir={tmp_path / 'nope'}"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no finished run"):
        run_report(make_cfg("task=report", f"report.sweep_dir={tmp_path / 'empty'}"))


def _run(name: str, seed: int, acc: float, **config) -> dict:
    metrics = {"chain_acc": acc, "chain_acc/depth_1": acc, "chain_acc/depth_2": acc, "answer_acc": acc, "step_acc": acc}
    return {
        "method": name,
        "run": name,
        "seed": seed,
        "depths": [1, 2],
        "student": {"metrics": metrics},
        "teacher": {"metrics": metrics},
        "config": {"seed": seed, "data": {"seed": seed}, "paths": {"output_dir": f"/x/{seed}"}, **config},
        "_questions": {},
    }


def test_arms_are_configs_minus_the_seed():
    runs = [_run("rtd", s, 0.5, method={"w_align": w}) for w in (0.3, 0.1) for s in (0, 1)]
    runs += [_run("standard_kd", s, 0.4, method={"w_align": None}) for s in (0, 1)]
    arms = group_arms(runs)
    assert sorted(arms) == ["rtd[method.w_align=0.1]", "rtd[method.w_align=0.3]", "standard_kd"]
    assert all(len(rs) == 2 for rs in arms.values())  # data.seed = the seed and the run dir do not split arms


def test_an_arm_label_leaves_out_settings_an_older_run_lacks():
    """Runs of an older rtd_lab have no entry for settings added since: the label names what was set."""
    old = [_run("rtd", s, 0.5, method={"w_coherence": 0.5, "name": "rtd"}, data={"_target_": "a.Old"}) for s in (0, 1)]
    new = [_run("rtd", s, 0.6, method={"w_coherence": 1.5}, data={"_target_": "b.New"}, export={"enabled": True})
           for s in (0, 1)]  # fmt: skip
    assert sorted(group_arms(old + new)) == ["rtd[method.w_coherence=0.5]", "rtd[method.w_coherence=1.5]"]
    # nothing else tells them apart: every difference is shown
    alike = [_run("rtd", s, 0.6, method={"w_coherence": 1.5}, export={"enabled": True}) for s in (0, 1)]
    assert sorted(group_arms(new + alike)) == ["rtd[data._target_=None]", "rtd[data._target_=b.New]"]


def test_a_constant_seed_setting_does_not_split_seed_zero_off():
    """data.benchmark.seed = 0 in every run equals seed 0's own seed, and is still not the seed."""
    runs = [_run("cot_ft", s, 0.6, data={"seed": s, "benchmark": {"seed": 0}}, teacher={"train": {"seed": 0}})
            for s in range(3)]  # fmt: skip
    assert {k: len(v) for k, v in group_arms(runs).items()} == {"cot_ft": 3}
    other = runs + [_run("cot_ft", s, 0.6, data={"seed": s, "benchmark": {"seed": 7}}, teacher={"train": {"seed": 0}})
                    for s in range(3)]  # fmt: skip
    assert sorted(group_arms(other)) == ["cot_ft[data.benchmark.seed=0]", "cot_ft[data.benchmark.seed=7]"]


def test_a_teacher_per_seed_is_one_arm_and_the_report_says_how_many_teachers():
    """paper_table gives each block its own teacher (teacher.train.seed = the seed): the seed, not an arm."""
    runs = []
    for s in range(3):
        for name in ("cot_ft", "rtd"):
            run = _run(name, s, 0.6 + s / 100, teacher={"train": {"seed": s}})
            run["teacher"]["key"] = {"train_seed": s}
            runs.append(run)
    rep = build_report(runs, [])
    assert {k: v["n"] for k, v in rep["chain_acc"].items()} == {"cot_ft": 3, "rtd": 3}
    assert rep["teacher_instances"] == 3
    assert "| depth | teachers (mean of 3) | cot_ft (n=3) | rtd (n=3) |" in report_markdown(rep, "sweep")
    one = [_run(name, s, 0.6) for s in range(2) for name in ("cot_ft", "rtd")]
    assert "| depth | teacher | " in report_markdown(build_report(one, []), "sweep")


def test_report_tests_over_seeds_and_keeps_per_seed_values():
    a = [0.712, 0.695, 0.731, 0.688, 0.705]
    b = [0.681, 0.702, 0.664, 0.671, 0.690]
    runs = [_run("rtd", s, v) for s, v in enumerate(a)] + [_run("standard_kd", s, v) for s, v in enumerate(b)]
    rep = build_report(runs, [])
    assert rep["chain_acc"]["rtd"]["seeds"] == [0, 1, 2, 3, 4]
    assert rep["chain_acc"]["rtd"]["chain_acc"]["per_seed"] == a
    c = rep["vs_baseline"]["rtd"]["chain_acc"]
    assert c["design"] == "paired by seed"
    assert c["p_t"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert c["p_welch"] == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)
    assert c["mde80"] > 0 and rep["warnings"] == []


def test_corrupt_results_are_named_and_skipped(tmp_path):
    for i, text in enumerate([json.dumps(_run("rtd", 0, 0.5)), '{"method": "rtd", "seed"', "{}"]):
        job = tmp_path / str(i)
        (job / ".hydra").mkdir(parents=True)
        (job / "results.json").write_text(text)
    runs, missing = read_sweep(tmp_path)
    assert len(runs) == 1 and len(missing) == 2
    assert all("results.json unreadable" in m for m in missing)
    assert {m.split(":")[0] for m in missing} == {str(tmp_path / "1"), str(tmp_path / "2")}


def test_a_sweep_finished_in_another_folder_is_not_missing(tmp_path):
    from rtd_lab.report import job_overrides

    first, second = tmp_path / "first", tmp_path / "second"
    params = {"hydra": {"sweeper": {"params": {"+experiment@_global_": "standard_kd,cot_ft", "seed": "0"}}}}
    first.mkdir()
    (first / "multirun.yaml").write_text(yaml.safe_dump(params))
    for folder, method in ((first / "0", "standard_kd"), (second / "0", "cot_ft")):
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"+experiment@_global_={method}", "seed=0"]))
        (folder / "results.json").write_text(json.dumps(_run(method, 0, 0.5)))
    _, alone = read_sweep(first)
    assert alone == [f"{first}: never started: +experiment@_global_=cot_ft seed=0"]
    runs, missing = read_sweep(first, job_overrides(second))
    assert len(runs) == 1 and missing == []


def test_within_compares_each_arm_with_the_baseline_of_its_block():
    """report.within=[student]: RTD at each student width against standard KD at the same width."""
    gains = {32: 0.10, 48: 0.0}
    kd = {32: [0.40, 0.42, 0.41, 0.43, 0.39], 48: [0.60, 0.62, 0.61, 0.63, 0.59]}
    noise = [0.01, -0.01, 0.0, 0.005, -0.005]
    runs = []
    for w in (32, 48):
        # Each seed has its own base checkpoint (student.base.seed follows the seed): not a block of its own.
        runs += [
            _run("standard_kd", s, v, student={"model": {"hidden_size": w}, "base": {"seed": s}})
            for s, v in enumerate(kd[w])
        ]
        runs += [
            _run("rtd", s, v + gains[w] + noise[s], student={"model": {"hidden_size": w}, "base": {"seed": s}})
            for s, v in enumerate(kd[w])
        ]
    rep = build_report(runs, [], within=["student"])
    assert rep["baseline_arms"]["rtd[student.model.hidden_size=32]"] == "standard_kd[student.model.hidden_size=32]"
    assert rep["baseline_arms"]["rtd[student.model.hidden_size=48]"] == "standard_kd[student.model.hidden_size=48]"
    assert set(rep["vs_baseline"]) == {"rtd[student.model.hidden_size=32]", "rtd[student.model.hidden_size=48]"}
    for w in (32, 48):
        c = rep["vs_baseline"][f"rtd[student.model.hidden_size={w}]"]["chain_acc"]
        assert c["design"] == "paired by seed"
        assert c["delta"] == pytest.approx(gains[w])
        rtd = [v + gains[w] + noise[s] for s, v in enumerate(kd[w])]
        assert c["p_t"] == pytest.approx(stats.ttest_rel(rtd, kd[w]).pvalue)
    md = report_markdown(rep, "sweep")
    assert "rtd[student.model.hidden_size=32] − standard_kd[student.model.hidden_size=32]" in md
    assert "+0.100 [" in md and "by depth" in md
    # Without blocks, the baseline name matches two arms: a clear error naming them.
    with pytest.raises(ValueError, match="matches several arms"):
        build_report(runs, [])


def test_select_by_ranks_arms_on_validation_not_test():
    """A grid cell that is best on test but not on validation is not the one selected."""
    runs = []
    for w, (val, test) in {0.1: (0.50, 0.70), 0.3: (0.60, 0.55), 1.0: (0.55, 0.60)}.items():
        for s in range(3):
            r = _run("rtd", s, test + 0.01 * s, method={"w_align": w})
            r["student"]["learning_curve"] = {"steps": [100, 200], "chain_acc": [0.1, val + 0.01 * s], "aulc": 0.3}
            runs.append(r)
    rep = build_report(runs, [], baseline="rtd[method.w_align=0.3]", select_by="val_chain_acc")
    sel = rep["selection"]
    assert sel["arm"] == "rtd[method.w_align=0.3]"
    assert [name for name, _ in sel["ranking"]] == [
        "rtd[method.w_align=0.3]", "rtd[method.w_align=1.0]", "rtd[method.w_align=0.1]"
    ]  # fmt: skip
    assert sel["ranking"][0][1] == pytest.approx(0.61)
    assert rep["chain_acc"]["rtd[method.w_align=0.3]"]["val_chain_acc"]["per_seed"] == pytest.approx([0.6, 0.61, 0.62])
    assert "Selected on the validation split by **val_chain_acc**" in report_markdown(rep, "grid")
    with pytest.raises(ValueError, match="report.select_by"):
        build_report(runs, [], select_by="chain_acc")


@pytest.mark.parametrize(("field", "value"), [("within", 5), ("within", []), ("select_by", "chain_acc")])
def test_report_settings_are_checked_before_reading(tmp_path, field, value):
    from omegaconf import OmegaConf

    from rtd_lab.tasks.report import run_report

    cfg = OmegaConf.create({"report": {"sweep_dir": str(tmp_path), field: value}})
    with pytest.raises(ValueError, match=f"report.{field}"):
        run_report(cfg)


def test_the_share_of_a_gain_kept_after_quantisation_is_only_for_a_real_gain():
    from rtd_lab.report import _diagnostics

    def with_quant(run, fp32: float, q: float):
        run["student"]["metrics"].update({"chain_acc": fp32, "chain_acc/depth_1": fp32, "chain_acc/depth_2": fp32})
        quant = {"metrics": {"chain_acc": q, "chain_acc/depth_1": q, "chain_acc/depth_2": q}}
        run["diagnostics"] = {"step_chain_gap": {"all": 0.0}, "quantized": {"8bit": quant, "4bit": quant}}
        return run

    arms = {
        "base": [with_quant(_run("base", 0, 0.5), 0.5, 0.4)],
        "up": [with_quant(_run("up", 0, 0.6), 0.6, 0.45)],
        "down": [with_quant(_run("down", 0, 0.4), 0.4, 0.2)],
    }
    ci = {"up": [0.05, 0.15], "down": [-0.15, -0.05]}  # both beyond seed noise, one a loss
    comparison = {name: {"chain_acc": {"ci95": c}} for name, c in ci.items()}
    rows = _diagnostics(arms, {"up": "base", "down": "base"}, comparison)
    assert rows["up"]["int4_gain_kept"] == pytest.approx(0.5)  # (0.45 - 0.40) / (0.6 - 0.5)
    assert rows["down"]["int4_gain_kept"] is None  # a share of a loss is not reported
