"""Nothing wrong is returned silently: one test per fault that a probe of the landed code found.

Each test names the failure it guards against; each failed on the code before the fix.
"""

from __future__ import annotations

import hashlib
import json
import signal
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rtd_lab.data.gsm8k import FORMAT as GSM8K_FORMAT
from rtd_lab.data.gsm8k import GSM8KBenchmark, MalformedInput, parse_record, read_jsonl
from rtd_lab.data.gsm8k import parse_completion as gsm8k_parse_completion
from rtd_lab.data.gsm8k import step_value as gsm8k_step_value
from rtd_lab.models.build import check_finite_weights
from rtd_lab.prm import step_value as prm_step_value
from rtd_lab.rundir import check_checkpoint, claim_run_dir
from rtd_lab.tasks.preflight import check_config
from rtd_lab.tasks.sample import run_sample
from rtd_lab.traces.answers import extract_answer, same_answer
from rtd_lab.traces.arith import check_annotations, evaluate
from rtd_lab.traces.filter import reasoning_path
from rtd_lab.traces.numbers import normalize_number, parse_number
from rtd_lab.traces.sample import SampleSettings
from rtd_lab.traces.teacher import completion_to_steps
from rtd_lab.utils import build_once, verify_built
from tests.cli import logged, run_cli

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def finishes_within(seconds: int):
    """Fail (instead of hanging the suite) when the block runs longer than ``seconds``."""

    def stop(signum, frame):
        raise TimeoutError(f"did not finish within {seconds} s")

    old = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# ---- 1. task=sample never returns rows made with other settings --------------------------------
SAMPLE = ["sample.max_questions=4", "sample.chunk_questions=2", "sample.n_samples=2", "sample.batch_size=4",
          "sample.temperatures=[1.0]", "sample.teachers=[{name: a}]"]  # fmt: skip


def test_sample_rerun_with_other_settings_is_refused(make_cfg, tmp_path):
    out = f"sample.out_dir={tmp_path / 'samples'}"
    run_sample(make_cfg("task=sample", out, *SAMPLE))
    before = (tmp_path / "samples" / "sample.json").read_text()
    for change, field in (("sample.n_samples=4", "sample.n_samples"), ("sample.seed=7", "sample.seed"),
                          ("sample.chunk_questions=3", "sample.chunk_questions"),
                          ("teacher.model.hidden_size=24", "teacher.model.hidden_size")):  # fmt: skip
        with pytest.raises(ValueError, match=field.replace(".", r"\.")):
            run_sample(make_cfg("task=sample", out, *SAMPLE, change))
    assert (tmp_path / "samples" / "sample.json").read_text() == before  # still describes its rows
    run_sample(make_cfg("task=sample", out, *SAMPLE))  # the same settings resume (reuse) as before


# ---- 2. a finished run's directory is never taken over by another run ----------------------------
def test_run_dir_resumes_only_its_own_config(tmp_path):
    a = {"method": {"name": "cot_ft"}, "seed": 0, "paths": {"output_dir": "x"}, "ckpt_path": None}
    assert claim_run_dir(tmp_path, a) is None
    (tmp_path / "results.json").write_text(json.dumps({"method": "cot_ft", "config": a}))
    b = {**a, "method": {"name": "standard_kd"}}
    with pytest.raises(ValueError, match="method.name: 'cot_ft' -> 'standard_kd'"):
        claim_run_dir(tmp_path, b)
    # The same run again (only where it is displayed differs): finished, its results returned untouched.
    again = {**a, "paths": {"output_dir": "elsewhere"}, "ckpt_path": "last"}
    assert claim_run_dir(tmp_path, again) == {"method": "cot_ft", "config": a}


def test_another_experiment_in_a_finished_run_dir_is_refused(tmp_path):
    first = run_cli("+experiment=cot_ft", "diagnostics.enabled=false", "hydra.run.dir=run", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    before = (tmp_path / "run" / "results.json").read_bytes()
    second = run_cli("+experiment=standard_kd", "diagnostics.enabled=false", "hydra.run.dir=run", cwd=tmp_path)
    assert second.returncode != 0
    assert "belongs to another run" in second.stderr and "method._target_" in second.stderr
    assert (tmp_path / "run" / "results.json").read_bytes() == before


# ---- 3. hostile numbers in model or dataset text -------------------------------------------------
HOSTILE = ["<<2=Infinity>>", "<<1=1e9999999>>", "<<3=sNaN>>", "#### NaN", "#### 1e5000", "#### " + "9" * 5000,
           "The answer is " + "1" * 4400, "<<" + "(" * 400 + "1" + ")" * 400 + "=1>>", "<<" + "-" * 3000 + "1=1>>",
           "#### -Infinity", "#### 1/0", "<<1/0=1>>"]  # fmt: skip


@pytest.mark.parametrize("text", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_numbers_are_wrong_answers_not_crashes(text):
    with finishes_within(10):
        answer, _ = extract_answer(text)
        assert not same_answer(answer, "7")  # 7 is in none of them
        check_annotations(text)  # unparseable annotations are "unknown", never an exception
        values, answer = gsm8k_parse_completion(text)
        assert answer is None or parse_number(answer) is not None
        gsm8k_step_value(text)
        prm_step_value(text)


def test_hostile_final_answers_are_no_answer():
    for text in ["#### NaN", "#### 1e5000", "#### 1e9999999", "#### 12e5", "#### 1.5e3", "#### Infinity"]:
        assert extract_answer(text) == (None, None), text
    assert extract_answer("#### " + "9" * 5000)[0] is None  # found, but no bounded number


@pytest.mark.parametrize("text", ["nan", "NaN", "sNaN", "Infinity", "-inf", "1e9999999", "1e101", "9" * 101, "", "-"])
def test_not_a_number(text):
    assert parse_number(text) is None and normalize_number(text) is None


def test_number_normalisation_is_exact():
    assert [normalize_number(x) for x in ["$1,200.", "18.50", "3/4", "10/4", "+7", "1.5e3", ".5", "-0.125"]] == [
        "1200", "18.5", "3/4", "5/2", "7", "1500", "0.5", "-0.125",
    ]  # fmt: skip
    assert same_answer("18", "18.0") and same_answer("0.5", "1/2") and not same_answer("NaN", "NaN")


@settings(max_examples=300, deadline=1000)  # the deadline catches a hang or a blow-up, not speed
@given(st.text(max_size=1000))
def test_any_text_parses_without_an_exception(text):
    normalize_number(text)
    extract_answer(text)
    check_annotations(text)
    gsm8k_parse_completion(text)
    prm_step_value(text)
    reasoning_path(text)
    try:
        evaluate(text)
    except ValueError:  # the one documented exception
        pass


@settings(max_examples=200, deadline=1000)
@given(st.from_regex(r"<<[-+*/()0-9.e ]{0,200}=[-0-9.eE+a-zA-Z]{0,40}>>", fullmatch=True))
def test_any_annotation_is_checked_without_an_exception(text):
    check_annotations(text)


def test_arith_raises_its_documented_error_only():
    for text in ["(" * 2000 + "1" + ")" * 2000, "-" * 5000 + "1", "9" * 2000, "1 ** 2", "a + 1"]:
        with pytest.raises(ValueError):
            evaluate(text)
    assert evaluate("-(3+4)*2") == -14 and evaluate("--5") == 5 and evaluate("7//2") == 3


def test_reasoning_path_is_linear():
    with finishes_within(5):
        assert reasoning_path("1+" * 20000) == (" ".join(("1+" * 20000).split()),)
        assert len(reasoning_path("1 + 1 = 2 " * 4000)) == 4000
    assert reasoning_path("He has 5 - 3 = 2 apples, then 2 x 4 = 8") == ("5-3=2", "2x4=8")


def test_hostile_gold_answers_and_bytes_name_file_and_line(tmp_path):
    good = {"question": "q", "answer": "1 + 1 = <<1+1=2>>2\n#### 2"}
    path = tmp_path / "test.jsonl"
    lines = [json.dumps(good).encode(), json.dumps({**good, "answer": "x\n#### NaN"}).encode(), b'{"question": "\xff"}',
             json.dumps({**good, "answer": "x\n#### " + "9" * 5000}).encode(), json.dumps(good).encode()]  # fmt: skip
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(MalformedInput, match=f"{path}:3: not UTF-8"):
        read_jsonl(path)
    rows, skipped = read_jsonl(path, on_error="skip")
    assert [i for i, _ in rows] == [1, 2, 4, 5] and skipped == 1
    with pytest.raises(MalformedInput, match=f"{path}:2: the final answer 'NaN' is not a number"):
        parse_record(rows[1][1], "u", f"{path}:2")
    (tmp_path / "train.jsonl").write_bytes(b"\n".join([lines[0]] * 3 + lines[1:]) + b"\n")
    bench = GSM8KBenchmark(path=str(tmp_path), n_val=1, on_error="skip")
    splits = bench.splits()
    assert len(splits["test"]) == 2 and sum(bench.skipped.values()) == 3 + 3  # 3 bad records in each file
    with pytest.raises(MalformedInput):
        GSM8KBenchmark(path=str(tmp_path), n_val=1).splits()


# ---- 4. GSM8K with teacher / RFT traces ------------------------------------------------------------
def test_gsm8k_completions_become_steps():
    text = "He buys 2 + 3 = <<2+3=5>>5 apples.\n\nThen 5 * 2 = <<5*2=10>>10.\n#### 10"
    steps, answer = completion_to_steps(text, GSM8K_FORMAT, gsm8k_parse_completion)
    assert [s.value for s in steps] == ["5", "10"] and answer == "10"


# ---- 5. cached models are verified at load ---------------------------------------------------------
def test_a_changed_byte_in_a_cached_folder_is_caught(tmp_path):
    path = tmp_path / "teachers" / "k"
    build_once(path, "meta.json", lambda tmp: (tmp / "model.safetensors").write_bytes(b"\x00" * 64) and {"a": 1})
    assert verify_built(path, "meta.json", "cached teacher")["a"] == 1
    data = bytearray((path / "model.safetensors").read_bytes())
    data[10] ^= 0x01  # one flipped bit
    (path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"model\.safetensors differs from the one built"):
        verify_built(path, "meta.json", "cached teacher")


def test_a_cached_teacher_with_a_flipped_byte_stops_the_run(make_cfg):
    from rtd_lab.models.provision import prepare_teacher
    from rtd_lab.tasks.settings import build_context, teacher_settings

    cfg = make_cfg()
    from hydra.utils import instantiate

    benchmark = instantiate(cfg.data).benchmark
    _, _, info = prepare_teacher(teacher_settings(cfg.teacher), build_context(cfg), benchmark)
    weights = Path(info["source"]) / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x40  # an exponent byte of the last float32 weight
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="model.safetensors"):
        prepare_teacher(teacher_settings(cfg.teacher), build_context(cfg), benchmark)


def test_non_finite_weights_are_refused():
    model = torch.nn.Linear(2, 2)
    check_finite_weights(model, "ok")
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="weight weight holds NaN"):
        check_finite_weights(model, "teacher x")


def test_a_non_finite_loss_stops_training_at_once():
    from rtd_lab.data.tokenizer import build_synthetic_tokenizer
    from rtd_lab.methods.cot_ft import CoTFineTune
    from tests.test_methods import tiny_lm

    tok = build_synthetic_tokenizer(11)
    module = CoTFineTune(tiny_lm(tok))
    module.compute_losses = lambda batch, n: {"loss": torch.tensor(float("nan")), "ce": torch.tensor(float("nan"))}
    ids = torch.zeros(1, 2, dtype=torch.long)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids, "boundary_mask": ids.bool()}
    with pytest.raises(FloatingPointError, match="non-finite training loss at step 0"):
        module.model_step(batch, "train")


# ---- 6. configs that passed validation but were nonsense -------------------------------------------
@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("method.temperature=nan", "method.temperature"),
        ("method.w_align=nan", "method.w_align"),
        ("method.w_coherence=inf", "method.w_coherence"),
        ("optim.scheduler.min_lr_ratio=-2", "optim.scheduler.min_lr_ratio"),
        ("trainer.val_check_interval=0", "trainer.val_check_interval"),
        ("trainer.max_steps=-1", "trainer.max_steps"),
        ("method.temperature=abc", "method.temperature"),
        ("data.benchmark.max_depth=abc", "data.benchmark.max_depth"),
        ("+method.tempreature=3", "method.tempreature"),
        ("teacher.pretrained=/missing/path", "teacher.pretrained"),
        # ranges a class checks without its models, and the typed blocks of the library
        ("method.w_align=-1", "method.w_align"),
        ("method.temperature=0", "method.temperature"),
        ("method.divergence=kl", "method.divergence"),
        ("curriculum.threshold_ratio=0", "curriculum.threshold_ratio"),
        ("teacher_cache.mode=sometimes", "teacher_cache.mode"),
        ("diagnostics.cka=maybe", "diagnostics.cka"),
        ("diagnostics.quantize=[3]", "diagnostics.quantize"),
        ("segment.hidden=abc", "segment.hidden"),
        ("+teacher.depth=3", "teacher.depth"),
        ("student.base.seed=abc", "student.base.seed"),
        ("~segment.epochs", "segment"),
        ("parallel_builds=sometimes", "parallel_builds"),
        ("teacher.layer=middle", "teacher.layer"),
        ("teacher.layer=5", "teacher.layer"),
        ("method.student_layer=top", "method.student_layer"),
    ],
)
def test_bad_settings_fail_naming_the_field(make_cfg, override, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        check_config(make_cfg(override))


@pytest.mark.parametrize(
    ("override", "field"),
    [("sample.chunk_questions=0", "sample.chunk_questions"), ("sample.split=bogus", "sample.split"),
     ("sample.teachers=[{name: ../../x}]", "name")],
)  # fmt: skip
def test_bad_sample_settings_fail_naming_the_field(make_cfg, override, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        check_config(make_cfg("task=sample", override))


@pytest.mark.parametrize(
    "experiment", sorted(p.stem for p in (ROOT / "rtd_lab" / "conf" / "experiment").glob("*.yaml"))
)
@pytest.mark.parametrize("extra", [[], ["trainer=fsdp"], ["trainer=deepspeed"], ["data=gsm8k"], ["task=sample"]])
def test_shipped_configs_pass_the_checks(make_cfg, experiment, extra):
    if experiment in SYNTHETIC_ONLY and "data=gsm8k" in extra:
        with pytest.raises(ValueError, match="data.benchmark.max_depth is not a setting"):  # said, not silent
            check_config(make_cfg(f"+experiment={experiment}", *extra, tiny=False))
        return
    check_config(make_cfg(f"+experiment={experiment}", *extra, tiny=False))


SYNTHETIC_ONLY = {"length_generalisation"}  # sets the synthetic benchmark's depths


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("method=step_reward", "method.prm.n_questions"),
        ("method=fitnets", "method.w_hint"),
        ("method=on_policy", "method.lmbda"),
        ("method=rtd_on_policy", "method.lmbda"),
    ],
)
def test_method_settings_are_checked_before_any_model(make_cfg, override, field):
    bad = {
        "method.prm.n_questions": "method.prm.n_questions=1",
        "method.w_hint": "method.w_hint=-0.5",
        "method.lmbda": "method.lmbda=1.5",
    }[field]
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        check_config(make_cfg(override, bad))


def test_a_negative_weight_fails_on_an_empty_cache_within_a_minute(tmp_path):
    start = time.time()
    proc = run_cli("method.w_align=-1", cwd=tmp_path, tiny=False)  # the real teacher would train for minutes
    assert proc.returncode != 0 and "method.w_align must be >= 0, got -1" in proc.stderr
    assert not (tmp_path / "cache").exists()  # the teacher was not trained first
    assert time.time() - start < 60


def test_nan_fails_before_any_work(tmp_path):
    start = time.time()
    proc = run_cli("method.temperature=nan", cwd=tmp_path)
    assert proc.returncode != 0 and "method.temperature must be a finite number" in proc.stderr
    assert not (tmp_path / "cache").exists()  # no teacher, data or cache was built
    assert time.time() - start < 120


def test_sample_settings_are_checked():
    base = {"split": "train", "chunk_questions": 5, "n_samples": 2, "batch_size": 4, "max_questions": None,
            "teachers": [{"name": "a"}], "temperatures": [0.7], "seed": 0, "out_dir": "x", "backend": "hf"}  # fmt: skip
    SampleSettings(**base)
    with pytest.raises(ValueError, match="sample.batch_size"):
        SampleSettings(**{**base, "batch_size": 0})


# ---- 7. an empty split is an error ----------------------------------------------------------------
def test_an_empty_test_split_is_an_error(tmp_path):
    from dataclasses import replace

    from rtd_lab.data.training_set import build_splits
    from tests.helpers import data_settings

    record = json.dumps({"question": "q", "answer": "1 + 1 = <<1+1=2>>2\n#### 2"})
    (tmp_path / "train.jsonl").write_text((record + "\n") * 4)
    (tmp_path / "test.jsonl").write_text("")
    bm = GSM8KBenchmark(path=str(tmp_path), n_val=1, tokenizer_vocab_size=300)
    with pytest.raises(ValueError, match="the test split of data.benchmark is empty"):
        build_splits(replace(data_settings(bm), max_train_examples=None), bm.build_tokenizer())


# ---- 8. no pickle from user-named files ------------------------------------------------------------
def test_no_unsafe_torch_load_in_the_package():
    offenders = [
        f"{p.relative_to(ROOT)}:{i}"
        for p in (ROOT / "rtd_lab").rglob("*.py")
        for i, line in enumerate(p.read_text().splitlines(), start=1)
        if "weights_only=False" in line or ("torch.load(" in line and "weights_only=True" not in line)
    ]
    assert offenders == []


# ---- 9. smaller -------------------------------------------------------------------------------------
def test_killed_builds_leave_no_temporary_folders(tmp_path):
    import socket

    stale = tmp_path / f".k.tmp-{socket.gethostname()}-999999999-1"  # a pid that does not exist
    stale.mkdir()
    build_once(tmp_path / "k", "meta.json", lambda tmp: {})
    assert not stale.exists() and (tmp_path / "k" / "meta.json").exists()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_concurrent_builds_of_one_artifact_build_it_once(tmp_path):
    """The jobs of a parallel sweep start together: one builds the shared artifact, the others wait."""
    import threading

    calls = []

    def build(tmp):
        calls.append(1)
        time.sleep(0.3)
        (tmp / "w.bin").write_bytes(b"x")
        return {}

    jobs = [threading.Thread(target=build_once, args=(tmp_path / "k", "meta.json", build)) for _ in range(3)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join()
    assert len(calls) == 1 and verify_built(tmp_path / "k", "meta.json", "k")["files"] == {"w.bin": sha256_hex(b"x")}


def test_a_truncated_checkpoint_is_named(tmp_path):
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, ckpt)
    ckpt.write_bytes(ckpt.read_bytes()[:500])
    with pytest.raises(ValueError, match=f"checkpoint {ckpt} cannot be read"):
        check_checkpoint(ckpt)


def test_metrics_logged_before_a_checkpoint_survive_a_kill(tmp_path):
    proc = run_cli(
        "trainer.max_steps=8", "callbacks.model_checkpoint.every_n_train_steps=5", "diagnostics.enabled=false",
        "+callbacks.kill._target_=tests.helpers.KillAtStep", "+callbacks.kill.step=7", "hydra.run.dir=run",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL
    assert max(logged(tmp_path / "run", "train/loss")) >= 4  # written with the step-5 checkpoint


def test_written_files_follow_the_umask(tmp_path):
    import os

    from rtd_lab.utils import atomic_write_json

    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "results.json", {"a": 1})
        assert (tmp_path / "results.json").stat().st_mode & 0o777 == 0o644  # group and others can read
    finally:
        os.umask(old)
