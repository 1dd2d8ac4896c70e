"""Every experiment file composes and runs (tiny models, a few steps); the two sweeps run as multiruns."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest
import yaml
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from rtd_lab.tasks.train import train
from rtd_lab.utils import flatten
from tests.cli import run_cli

ROOT = Path(__file__).resolve().parents[1]
PROTOCOLS = ROOT / "rtd_lab" / "conf" / "protocol"
FILES = {
    p.stem: yaml.safe_load(p.read_text()) or {}
    for p in sorted((ROOT / "rtd_lab" / "conf" / "experiment").glob("*.yaml"))
}
# A sweep file lists the experiments it runs in hydra.sweeper.params; the others are single runs.
SWEEPS = {name: f["hydra"]["sweeper"]["params"] for name, f in FILES.items() if "hydra" in f}
SINGLE = sorted(set(FILES) - set(SWEEPS))
LOOPS = {"self_distill"}  # a loop of training runs (task=self_distill): tests/test_self_distill.py


def test_the_paper_sweeps_exist():
    assert SWEEPS["paper_table"]["+experiment@_global_"] == "standard_kd,fitnets,cot_ft,step_reward,rtd_tuned"
    assert SWEEPS["ablations"]["+experiment@_global_"] == (
        "rtd_tuned,ablation_no_coherence,ablation_no_alignment,ablation_no_curriculum"
    )
    assert SWEEPS["rtd_layers"]["teacher.layer"] == "-1,1,mean"
    assert SWEEPS["student_sizes"]["+experiment@_global_"] == "standard_kd,rtd"
    assert SWEEPS["student_sizes"]["student"] == "small,tiny,medium"
    grid = SWEEPS["rtd_weight_grid"]
    assert len(grid["method.w_align"].split(",")) >= 3 and len(grid["method.w_coherence"].split(",")) >= 3
    for params in SWEEPS.values():  # seeds are the unit of replication: fewer than 5 is a pilot
        seeds = [int(x) for x in str(params["seed"]).split(",")]
        assert len(set(seeds)) >= 5


def test_the_paper_table_runs_rtd_with_the_weights_the_grid_chose(make_cfg):
    """rtd_tuned is RTD with the validation-chosen weights (experiments/rtd_weight_grid), nothing else."""
    tuned, paper = make_cfg("+experiment=rtd_tuned"), make_cfg("+experiment=rtd")
    assert (tuned.method.w_align, tuned.method.w_coherence) == (0.3, 1.5)
    assert (paper.method.w_align, paper.method.w_coherence) == (0.3, 0.5)  # the method as published
    assert tuned.run_name == paper.run_name == "rtd"
    tuned.method.w_coherence = paper.method.w_coherence
    assert OmegaConf.to_container(tuned.method) == OmegaConf.to_container(paper.method)


def test_the_paper_table_gives_each_block_its_own_teacher(make_cfg):
    """A block (seed) of paper_table, ablations, rtd_layers and fitnets_deep_teacher trains its own
    teacher, so their CIs cover the teacher instance; rft_table's arms compare training sets sampled
    from one teacher."""
    for sweep in ("paper_table", "ablations", "rtd_layers", "fitnets_deep_teacher"):
        blocks = [make_cfg(f"+experiment={sweep}", f"seed={s}") for s in (0, 3)]
        assert [c.teacher.train.seed for c in blocks] == [0, 3]
    assert make_cfg("+experiment=rft_table", "seed=3").teacher.train.seed == 0


@pytest.mark.parametrize("sweep", ["ablations", "rtd_layers"])
def test_the_sweeps_baseline_is_the_paper_tables_rtd_arm(make_cfg, sweep):
    """The ablations ablate the RTD of the paper table, and rtd_layers moves its teacher layer: their
    rtd_tuned run of a seed (at the last layer) is the paper table's run (all but the W&B group)."""

    def flat(*overrides):
        c = OmegaConf.to_container(make_cfg(*overrides, "seed=5", tiny=False), resolve=True)
        return flatten({k: v for k, v in c.items() if k != "group" and k != "logger"})

    # in the order a sweep composes a job: its arm, its seed, then the sweep file
    assert flat("+experiment@_global_=rtd_tuned", f"+experiment={sweep}", "teacher.layer=-1") == flat(
        "+experiment@_global_=rtd_tuned", "+experiment=paper_table"
    )


@pytest.mark.parametrize("name", ["ablation_no_alignment", "ablation_no_coherence", "ablation_no_curriculum"])
def test_the_ablations_sweep_runs_each_ablation_as_its_file_sets_it(make_cfg, name):
    """A sweep job composes its arm before the sweep file, so the sweep file must not set what an arm
    sets: each ablation job keeps the weights and curriculum of its own file."""
    alone, job = make_cfg(f"+experiment={name}"), make_cfg(f"+experiment@_global_={name}", "+experiment=ablations")
    assert (job.method.w_align, job.method.w_coherence) == (alone.method.w_align, alone.method.w_coherence)
    assert OmegaConf.to_container(job)["curriculum"] == OmegaConf.to_container(alone)["curriculum"]


@pytest.mark.parametrize("sweep", ["paper_table", "ablations", "rft_table", "rtd_layers", "fitnets_deep_teacher"])
def test_the_paper_sweeps_train_each_run_to_its_plateau(make_cfg, sweep):
    """The three sweeps of the papers' tables (and rtd_layers, fitnets_deep_teacher) decay each run
    when its validation curve stalls, with trainer.max_steps as the cap; the single-method experiments
    keep the fixed 2,000-step schedule."""
    cfg = make_cfg(f"+experiment={sweep}", tiny=False)
    assert cfg.optim.scheduler._target_ == "rtd_lab.optim.warmup_stable_decay_on_plateau"
    assert cfg.trainer.max_steps == 3500 and cfg.callbacks.learning_curve.every_n_steps == 100
    assert make_cfg("+experiment=standard_kd", tiny=False).optim.scheduler._target_.endswith(".warmup_stable_decay")


@pytest.mark.parametrize("name", sorted(set(SINGLE) - LOOPS))
def test_every_experiment_file_trains_and_evaluates(make_cfg, monkeypatch, name):
    if name.startswith("rft_"):  # a 3-step tiny teacher samples nothing FILTER keeps: script its samples
        import rtd_lab.traces.sample as sample_mod
        from tests.test_rft import scripted_sample_chunk

        monkeypatch.setattr(sample_mod, "sample_chunk", scripted_sample_chunk([]))
    cfg = make_cfg(f"+experiment={name}")
    method = HydraConfig.get().runtime.choices["method"]
    assert method in cfg.tags  # experiment files tag runs with their method (W&B compare view)
    results = train(cfg)
    assert results["run"] == cfg.run_name and results["method"] == method
    assert 0.0 <= results["student"]["metrics"]["chain_acc"] <= 1.0
    assert (Path(cfg.paths.output_dir) / "results.json").exists()


ABLATION_CHANGES = {
    "ablation_no_coherence": {"method.w_coherence": 0.0},
    "ablation_no_alignment": {"method.w_align": 0.0},
    "ablation_no_curriculum": None,  # the whole curriculum group, checked below
}


@pytest.mark.parametrize("name", sorted(ABLATION_CHANGES))
def test_ablations_differ_from_rtd_only_in_what_they_remove(make_cfg, name):
    """Each ablation is the paper table's RTD (rtd_tuned) less one part."""

    def flat(cfg):
        c = OmegaConf.to_container(cfg, resolve=True)
        return flatten({k: v for k, v in c.items() if k not in ("tags", "run_name")})

    rtd, ablation = flat(make_cfg("+experiment=rtd_tuned")), flat(make_cfg(f"+experiment={name}"))
    missing = object()
    changed = {k for k in rtd.keys() | ablation.keys() if rtd.get(k, missing) != ablation.get(k, missing)}
    if name == "ablation_no_curriculum":
        assert changed == {k for k in rtd if k.startswith("curriculum")}  # the curriculum, nothing else
        assert not any(k.startswith("curriculum") for k in ablation)
    else:
        assert {k: ablation[k] for k in changed} == ABLATION_CHANGES[name]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run_cli(*args, cwd=cwd, tiny=False, timeout=900)


# The RFT table samples from real (tiny) teachers: one that learned the trace format, few questions.
RFT_EXTRA = [
    "teacher.train.max_steps=300",
    "sample.max_questions=24",
    "sample.n_samples=4",
    "data.max_train_examples=2",
]
SWEEP_EXTRA = {"rft_table": RFT_EXTRA, "rft_dag": RFT_EXTRA}


# rft_table's sweep (a second teacher, SAMPLE -> FILTER for two arms) is the slowest test; its arms
# are trained one by one in test_every_experiment_file_trains_and_evaluates, so the sweep runs in
# make test-slow, keeping make test within its budget.
# ablations' sweep is its four arms, each trained above; rtd_layers' is rtd three times (its "mean"
# layer is trained in tests/test_methods.py): slow too. paper_table's stays, the sweep path's check.
# student_sizes (KD and RTD at three sizes), rtd_weight_grid (RTD nine times), fitnets_deep_teacher and
# length_generalisation likewise.
SLOW_SWEEPS = {
    "rft_table", "ablations", "rtd_layers", "student_sizes", "rtd_weight_grid", "fitnets_deep_teacher",
    "length_generalisation", "rft_dag",
}  # fmt: skip
SWEEP_PARAMS = [pytest.param(s, marks=pytest.mark.slow) if s in SLOW_SWEEPS else s for s in sorted(SWEEPS)]


@pytest.mark.parametrize("sweep", SWEEP_PARAMS)
def test_sweep_runs_every_arm_in_one_group_with_one_teacher(tmp_path, sweep):
    """`python -m rtd_lab -m +experiment=<sweep>`, one seed, tiny: one job per arm, one W&B group."""
    extra = SWEEP_EXTRA.get(sweep, [])
    proc = _cli(
        "-m",
        f"+experiment={sweep}",
        "+debug=fast",
        "seed=0",
        "trainer.enable_progress_bar=false",
        *extra,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("multirun/*/*/*/results.json"))]
    params = SWEEPS[sweep]
    arms = params["+experiment@_global_"].split(",")
    # Other swept settings (a teacher layer, a student size, loss weights): every arm at each of their combinations.
    combos = math.prod(len(str(v).split(",")) for k, v in params.items() if k not in ("seed", "+experiment@_global_"))
    runs_of = {"rtd_tuned": "rtd"}  # an experiment file that only sets a method's weights keeps its name
    assert [r["run"] for r in runs] == [runs_of.get(a, a) for a in arms for _ in range(combos)]
    layers = str(params.get("teacher.layer", "-1")).split(",")  # rtd_layers sweeps the teacher layer
    assert [str(r["config"]["teacher"]["layer"]) for r in runs] == layers * (len(runs) // len(layers))
    assert {r["config"]["group"] for r in runs} == {sweep}
    teachers = len(list((tmp_path / "cache" / "teachers").glob("[!.]*")))
    # Every arm trains on the same number of examples; rft_mixed adds a checkpoint.
    if sweep in ("rft_table", "rft_dag"):
        assert {r["train_set"]["examples"] for r in runs} == {2}
        assert teachers == 2
    else:
        assert teachers == 1


@pytest.mark.parametrize("sweep", sorted(SWEEPS))
def test_a_sweep_file_is_a_multirun_without_m(sweep, tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from tests.conftest import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"+experiment={sweep}"], return_hydra_config=True)
        slurm = compose(
            config_name="config",
            overrides=[f"+experiment={sweep}", "hydra/launcher=submitit_slurm"],
            return_hydra_config=True,
        )
    assert cfg.hydra.mode == RunMode.MULTIRUN
    # Its jobs run side by side on the local cores, unless the command line picks another launcher.
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher") and cfg.hydra.launcher.n_jobs == -1
    assert slurm.hydra.launcher._target_.endswith("SlurmLauncher")


@pytest.mark.parametrize("sweep", sorted(n for n, p in SWEEPS.items() if "+experiment@_global_" in p))
def test_no_sweep_file_sets_what_its_arms_set(sweep):
    """A sweep job composes its arm before the sweep file, so a value both set would silently be the
    sweep file's in every arm (the ablations once ran as plain RTD that way)."""

    def keys(name):
        return set(flatten({k: v for k, v in FILES[name].items() if k not in ("defaults", "hydra")}))

    def protocol_keys(name):  # what a sweep file takes from conf/protocol/ sets in every arm too
        used = [d["/protocol"] for d in FILES[name].get("defaults", []) if isinstance(d, dict) and "/protocol" in d]
        files = [yaml.safe_load((PROTOCOLS / f"{p}.yaml").read_text()) for p in used]
        return {k for f in files for k in flatten(f) if k != "defaults"}

    for arm in SWEEPS[sweep]["+experiment@_global_"].split(","):
        assert not (keys(sweep) | protocol_keys(sweep)) & (keys(arm) - {"run_name", "tags"}), arm
