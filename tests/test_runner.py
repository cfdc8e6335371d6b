import glob
from pathlib import Path
import json
from collections import Counter

import pytest

from classification.run import runner
from classification.inputs.ag_news import build_records
from classification.errors import ClassificationError
from classification.report.table import format_table, load_metrics, main as table_main
from classification_fakes import FakeCrash, FakeLM, run_ranks, synthetic_splits


def write_inputs(tmp_path, method="direct", n_test_per_class=6, name=None):
    train, test = synthetic_splits(n_test_per_class=n_test_per_class)
    recs = build_records(method, train, test, k=1, seed=5, sample=False)
    path = tmp_path / (name or f"inputs_{method}.json")
    path.write_text(json.dumps(recs), encoding="utf-8")
    return str(path), recs


def read(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def test_direct_end_to_end(tmp_path, capsys):
    data, recs = write_inputs(tmp_path)
    out = str(tmp_path / "out" / "outputs_direct.json")
    m = runner.evaluate("direct", data, out, lm=FakeLM(), chunk_size=5)
    outputs = read(out)
    assert [o["index"] for o in outputs] == [r["index"] for r in recs]
    assert all(o["correct"] and o["prediction"] == o["ground_truth"] for o in outputs)
    assert set(outputs[0]) == {"index", "ground_truth", "prediction", "correct", "log_probs", "shortened"}
    assert "Accuracy: 1.0000" in capsys.readouterr().out
    metrics = read(str(tmp_path / "out" / "outputs_direct.metrics.json"))
    assert metrics == m
    assert metrics["n"] == len(recs) and metrics["accuracy"] == 1.0 and metrics["macro_f1"] == 1.0
    assert metrics["method"] == "direct" and metrics["model"] == runner.DEFAULT_CKPT_DIR
    assert metrics["n_shortened"] == 0 and metrics["wall_time_s"] >= 0
    assert glob.glob(out + ".partial*") == []


def test_calibrate_scores_only_content_free_inputs(tmp_path):
    data, recs = write_inputs(tmp_path)
    direct_out = str(tmp_path / "direct.json")
    runner.evaluate("direct", data, direct_out, lm=FakeLM())
    lm = FakeLM()
    out = str(tmp_path / "calibrate.json")
    m = runner.evaluate(
        "calibrate", data, out, direct_output_path=direct_out, content_free=["N/A", "", "[MASK]"], lm=lm, chunk_size=4
    )
    assert sum(lm.requests.values()) == 3 * 4  # one prompt: 3 content-free texts x 4 labels
    assert m["content_free"] == ["N/A", "", "[MASK]"] and len(m["content_free_probs"]) == 4
    outputs, direct = read(out), read(direct_out)
    assert [o["index"] for o in outputs] == [o["index"] for o in direct]
    # FakeLM's content-free scores favour no label over another except by length, so calibration
    # re-weights towards the 3-word label; check the math for one record.
    from classification.methods import calibrate_log_probs

    assert outputs[0]["log_probs"] == pytest.approx(calibrate_log_probs(direct[0]["log_probs"], m["content_free_probs"]))


def test_calibrate_rejects_mismatched_direct_outputs(tmp_path):
    data, recs = write_inputs(tmp_path)
    direct_out = tmp_path / "direct.json"
    runner.evaluate("direct", data, str(direct_out), lm=FakeLM())
    with pytest.raises(ClassificationError, match="--completion_end eos"):
        runner.evaluate("calibrate", data, str(tmp_path / "c.json"), direct_output_path=str(direct_out),
                        completion_end="none", lm=FakeLM(append_eos=False))
    direct_out.write_text(json.dumps(read(str(direct_out))[:-1]))
    with pytest.raises(ClassificationError, match="records but the inputs have"):
        runner.evaluate("calibrate", data, str(tmp_path / "c.json"), direct_output_path=str(direct_out), lm=FakeLM())
    with pytest.raises(ClassificationError, match="needs --direct_output_path"):
        runner.evaluate("calibrate", data, str(tmp_path / "c.json"), lm=FakeLM())


def test_channel_and_generate_end_to_end(tmp_path, capsys):
    data, recs = write_inputs(tmp_path, "channel")
    m = runner.evaluate("channel", data, str(tmp_path / "ch.json"), lm=FakeLM())
    assert m["accuracy"] == 1.0
    data, recs = write_inputs(tmp_path, "direct")
    m = runner.evaluate("generate", data, str(tmp_path / "gen.json"), lm=FakeLM(), max_gen_len=3)
    outputs = read(str(tmp_path / "gen.json"))
    n_science = sum(r["ground_truth"] == "Science and technology" for r in recs)
    assert m["n_none"] == n_science and m["accuracy"] == pytest.approx(1 - n_science / len(recs))
    assert m["confusion_matrix"]["columns"][-1] == "none"
    assert all("generation" in o for o in outputs)
    assert "Unparsed generations (none): %d" % n_science in capsys.readouterr().out


def test_shortened_inputs_are_counted(tmp_path):
    data, recs = write_inputs(tmp_path)
    base = len(FakeLM().tokenizer.encode(recs[0]["prompt"].replace("{text}", ""), bos=True, eos=False))
    m = runner.evaluate("direct", data, str(tmp_path / "o.json"), lm=FakeLM(max_seq_len=base + 4 + 5))
    n_long = sum(len(r["text"].split()) > 5 for r in recs)
    assert 0 < m["n_shortened"] == n_long
    assert sum(o["shortened"] for o in read(str(tmp_path / "o.json"))) == n_long


@pytest.mark.parametrize("method", ["direct", "channel", "generate"])
def test_resume_after_kill_scores_nothing_twice(tmp_path, method):
    data, recs = write_inputs(tmp_path, "channel" if method == "channel" else "direct")
    ref_out = str(tmp_path / "ref.json")
    runner.evaluate(method, data, ref_out, lm=FakeLM(), chunk_size=4)

    out = str(tmp_path / "out.json")
    counter = Counter()
    with pytest.raises(FakeCrash):
        runner.evaluate(method, data, out, lm=FakeLM(fail_after_calls=2, requests=counter), chunk_size=4)
    partial = out + ".partial.jsonl"
    lines = open(partial, encoding="utf-8").read().splitlines()
    assert len(lines) == 1 + 8  # header + two chunks of 4
    with open(partial, "a", encoding="utf-8") as f:
        f.write('{"pos": 3, "resu')  # a line cut short by the kill
    lm2 = FakeLM(requests=counter)
    m = runner.evaluate(method, data, out, lm=lm2, chunk_size=4)
    assert read(out) == read(ref_out)
    assert m["n_resumed"] == 8
    if method != "generate":
        assert len(counter) == len(recs) * 4 and set(counter.values()) == {1}
    else:
        assert len(lm2.contexts) == len(recs) - 8
    assert not glob.glob(out + ".partial*")


def test_resume_restarts_on_changed_arguments(tmp_path, capsys):
    data, recs = write_inputs(tmp_path)
    out = str(tmp_path / "out.json")
    with pytest.raises(FakeCrash):
        runner.evaluate("direct", data, out, lm=FakeLM(fail_after_calls=1), chunk_size=4)
    lm = FakeLM(append_eos=False)
    m = runner.evaluate("direct", data, out, lm=lm, chunk_size=4, completion_end="none")
    assert m["n_resumed"] == 0 and sum(lm.requests.values()) == 4 * len(recs)


def test_chunk_size_does_not_change_results(tmp_path):
    data, _ = write_inputs(tmp_path)
    runner.evaluate("direct", data, str(tmp_path / "a.json"), lm=FakeLM(), chunk_size=1)
    runner.evaluate("direct", data, str(tmp_path / "b.json"), lm=FakeLM(), chunk_size=64)
    assert read(str(tmp_path / "a.json")) == read(str(tmp_path / "b.json"))


@pytest.mark.parametrize("world_size, mp_size", [(2, 1), (3, 1), (4, 2)])
def test_data_parallel_matches_single_process(tmp_path, world_size, mp_size):
    data, recs = write_inputs(tmp_path)
    runner.evaluate("direct", data, str(tmp_path / "ref.json"), lm=FakeLM(), chunk_size=3)
    out = str(tmp_path / "dp.json")
    lms = [FakeLM() for _ in range(world_size)]
    metrics = run_ranks(world_size, lambda rt: runner.evaluate("direct", data, out, lm=lms[rt.rank], runtime=rt, chunk_size=3), mp_size)
    assert metrics[0]["dp_size"] == world_size // mp_size and metrics[1:] == [None] * (world_size - 1)
    assert read(out) == read(str(tmp_path / "ref.json"))
    # Each data-parallel group scored a disjoint share; model-parallel ranks repeat their group's.
    per_group = [sum((lms[r].requests for r in range(g * mp_size, (g + 1) * mp_size)), Counter()) for g in range(world_size // mp_size)]
    assert sum(per_group, Counter()) == Counter({r: mp_size for r in sum(per_group, Counter())})
    assert sum(len(c) for c in per_group) == 4 * len(recs)
    assert not glob.glob(out + ".partial*")


def test_data_parallel_kill_then_resume_single_process(tmp_path):
    data, recs = write_inputs(tmp_path)
    runner.evaluate("direct", data, str(tmp_path / "ref.json"), lm=FakeLM(), chunk_size=2)
    out = str(tmp_path / "dp.json")
    counter = Counter()
    lms = [FakeLM(fail_after_calls=2 + rank, requests=counter) for rank in range(2)]
    with pytest.raises(FakeCrash):
        run_ranks(2, lambda rt: runner.evaluate("direct", data, out, lm=lms[rt.rank], runtime=rt, chunk_size=2))
    assert sorted(glob.glob(out + ".partial*")) == [out + ".partial.0.jsonl", out + ".partial.1.jsonl"]
    m = runner.evaluate("direct", data, out, lm=FakeLM(requests=counter), chunk_size=2)
    assert m["n_resumed"] == 2 * 2 + 3 * 2
    assert read(out) == read(str(tmp_path / "ref.json"))
    assert len(counter) == 4 * len(recs) and set(counter.values()) == {1}
    assert not glob.glob(out + ".partial*")


# --- bad input -----------------------------------------------------------------------------


def good_record():
    return {"prompt": "Article: {text}\nCategory:", "completion": "{label_word}", "text": "t", "label_words": ["A", "B"], "ground_truth": "A"}


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "invalid JSON at line 1"),
        ('{"a": 1}', "expected a JSON list"),
        ("[]", "no records"),
        (json.dumps([{k: v for k, v in good_record().items() if k != "text"}]), "record 0 lacks key.*text"),
        (json.dumps([{**good_record(), "label_words": []}]), "label_words is empty"),
        (json.dumps([{**good_record(), "ground_truth": "C"}]), "ground_truth 'C' is not among label_words"),
        (json.dumps([good_record(), {**good_record(), "label_words": ["A", "C"]}]), "record 1: label_words"),
        (json.dumps([{**good_record(), "prompt": "Category: {label_word}\nArticle:", "completion": "{text}"}]), "not a direct input"),
        (json.dumps([{**good_record(), "label_words": "AB"}]), "list of strings"),
    ],
)
def test_bad_input_files(tmp_path, content, message):
    path = tmp_path / "in.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ClassificationError, match=message) as e:
        runner.evaluate("direct", str(path), str(tmp_path / "o.json"), lm=FakeLM())
    assert "\n" not in str(e.value)


def test_missing_input_file(tmp_path):
    with pytest.raises(ClassificationError, match="input file not found; create it with run_preprocess"):
        runner.evaluate("direct", str(tmp_path / "nope.json"), str(tmp_path / "o.json"), lm=FakeLM())


def test_unwritable_output_checked_before_scoring(tmp_path):
    data, _ = write_inputs(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    lm = FakeLM()
    with pytest.raises(ClassificationError, match="cannot write"):
        runner.evaluate("direct", data, str(blocker / "o.json"), lm=lm)
    with pytest.raises(ClassificationError, match="is a directory"):
        runner.evaluate("direct", data, str(tmp_path), lm=lm)
    with pytest.raises(ClassificationError, match="would overwrite an input"):
        runner.evaluate("direct", data, data, lm=lm)
    assert lm.calls == 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"method": "zero"}, "unknown method"),
        ({"scoring": "slow"}, "--scoring"),
        ({"completion_end": "EOS"}, "--completion_end"),
        ({"max_gen_len": 0}, "--max_gen_len"),
        ({"top_p": 0}, "--top_p"),
        ({"completion_end": "newline"}, "append_eos=False"),
    ],
)
def test_bad_flags(tmp_path, kwargs, message):
    data, _ = write_inputs(tmp_path)
    args = {"method": "direct", "data_path": data, "output_path": str(tmp_path / "o.json"), "lm": FakeLM(), **kwargs}
    with pytest.raises(ClassificationError, match=message):
        runner.evaluate(**args)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    data, _ = write_inputs(tmp_path)
    with pytest.raises(ClassificationError, match="--ckpt_dir .* does not exist"):
        runner.evaluate("direct", data, str(tmp_path / "o.json"), ckpt_dir=str(tmp_path / "none"))


def test_results_table(tmp_path, capsys):
    data, _ = write_inputs(tmp_path)
    runner.evaluate("direct", data, str(tmp_path / "d.json"), lm=FakeLM())
    runner.evaluate("generate", data, str(tmp_path / "g.json"), lm=FakeLM())
    paths = [str(tmp_path / "g.metrics.json"), str(tmp_path / "d.metrics.json")]
    table = format_table(load_metrics(paths))
    lines = table.splitlines()
    assert lines[0].startswith("| method | n | accuracy | 95% CI | macro-F1 |")
    # 24 of 24 right: the Wilson interval's low end is 1 / (1 + z^2/24) = 0.862.
    assert lines[2].startswith("| direct | 24 | 1.0000 | 0.862-1.000 | 1.0000 |")
    assert lines[3].startswith("| generate | 24 | 0.7500 |")
    assert table_main(paths) == 0 and table in capsys.readouterr().out
    assert table_main([str(tmp_path / "missing.json")]) == 2


class NaNLM(FakeLM):
    """Scores one text's labels as NaN, as fp16 overflow or corrupted weights do."""

    def score(self, context, continuation):
        return float("nan") if "te item 5 " in context else super().score(context, continuation)


def test_non_finite_scores_stop_the_run_and_are_never_stored(tmp_path):
    data, recs = write_inputs(tmp_path)
    out = str(tmp_path / "out.json")
    pos = next(p for p, r in enumerate(recs) if "te item 5 " in r["text"])
    with pytest.raises(ClassificationError, match=rf"record {pos} .*dtype bf16.*--dtype fp32"):
        runner.evaluate("direct", data, out, lm=NaNLM(), dtype="bf16", chunk_size=1)
    for path in glob.glob(out + ".partial*"):
        assert "NaN" not in open(path, encoding="utf-8").read()
    # A partial line holding a NaN (written by an older version) is not reused either.
    m = runner.evaluate("direct", data, out, lm=FakeLM(), dtype="bf16")
    assert m["accuracy"] == 1.0


def test_calibration_refuses_non_finite_direct_outputs(tmp_path):
    data, recs = write_inputs(tmp_path)
    direct_out = tmp_path / "direct.json"
    runner.evaluate("direct", data, str(direct_out), lm=FakeLM())
    outputs = read(str(direct_out))
    outputs[2]["log_probs"][0] = float("nan")
    direct_out.write_text(json.dumps(outputs))
    with pytest.raises(ClassificationError, match="non-finite"):
        runner.evaluate("calibrate", data, str(tmp_path / "c.json"), direct_output_path=str(direct_out),
                        calibration="batch")


@pytest.mark.parametrize("method", ["direct", "channel", "generate"])
def test_model_check_stops_a_model_that_predicts_its_prompt_like_uniform(tmp_path, method):
    import math

    data, recs = write_inputs(tmp_path, "channel" if method == "channel" else "direct")
    log_v = math.log(FakeLM().tokenizer.n_words)
    lm = FakeLM(prefix_nll=0.95 * log_v)
    with pytest.raises(ClassificationError, match=rf"loss .* is {0.95 * log_v:.2f} .*log V = {log_v:.2f}"):
        runner.evaluate(method, data, str(tmp_path / "o.json"), lm=lm)
    placeholder = "{label_word}" if method == "channel" else "{text}"
    assert lm.shared_prefixes == [recs[0]["prompt"][: recs[0]["prompt"].index(placeholder)]]
    assert not glob.glob(str(tmp_path / "o.json*"))
    m = runner.evaluate(method, data, str(tmp_path / "o.json"), lm=FakeLM(prefix_nll=0.95 * log_v), check_model=False)
    assert m["prefix_nll"] == pytest.approx(0.95 * log_v)
    m = runner.evaluate(method, data, str(tmp_path / "p.json"), lm=FakeLM(prefix_nll=0.3 * log_v))
    assert m["prefix_nll"] == pytest.approx(0.3 * log_v)


def test_calibration_refuses_direct_outputs_of_other_inputs(tmp_path):
    data, recs = write_inputs(tmp_path)
    direct_out = str(tmp_path / "direct.json")
    runner.evaluate("direct", data, direct_out, lm=FakeLM())
    other = tmp_path / "other_inputs.json"
    other.write_text(json.dumps([{**r, "text": r["text"] + " changed"} for r in recs]))
    with pytest.raises(ClassificationError, match="produced from other inputs"):
        runner.evaluate("calibrate", str(other), str(tmp_path / "c.json"), direct_output_path=direct_out, lm=FakeLM())
    # A metrics file of another output beside it (a run killed between its two writes).
    metrics_file = Path(direct_out).with_suffix(".metrics.json")
    Path(direct_out).write_text(Path(direct_out).read_text() + "\n")
    with pytest.raises(ClassificationError, match="belongs to another output"):
        runner.evaluate("calibrate", data, str(tmp_path / "c.json"), direct_output_path=direct_out, lm=FakeLM())
    metrics_file.unlink()
    # The original scripts' outputs (prediction, log_probs, correct; no metrics file) are checked
    # against the records as far as they can be: records in another order are refused.
    outputs = json.loads(Path(direct_out).read_text())
    original = [{"prediction": o["prediction"], "log_probs": o["log_probs"], "correct": o["correct"]} for o in outputs]
    Path(direct_out).write_text(json.dumps(original))
    shuffled = tmp_path / "shuffled.json"
    shuffled.write_text(json.dumps([{k: v for k, v in r.items() if k != "index"} for r in recs[1:] + recs[:1]]))
    with pytest.raises(ClassificationError, match="other records, or the same in another order"):
        runner.evaluate("calibrate", str(shuffled), str(tmp_path / "c.json"), direct_output_path=direct_out,
                        lm=FakeLM())


def test_batch_calibration_under_torchrun_has_one_writer(tmp_path, monkeypatch):
    data, recs = write_inputs(tmp_path)
    direct_out = str(tmp_path / "direct.json")
    runner.evaluate("direct", data, direct_out, lm=FakeLM())
    out = tmp_path / "batch.json"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert runner.evaluate("calibrate", data, str(out), direct_output_path=direct_out, calibration="batch") is None
    assert not glob.glob(str(out) + "*") and not glob.glob(str(tmp_path / "batch.metrics.json"))
    monkeypatch.setenv("RANK", "0")
    m = runner.evaluate("calibrate", data, str(out), direct_output_path=direct_out, calibration="batch")
    assert m["n"] == len(recs) and out.is_file()


def test_duplicate_indices_and_empty_label_words_are_refused(tmp_path):
    data, recs = write_inputs(tmp_path)
    dup = tmp_path / "dup.json"
    dup.write_text(json.dumps([recs[0], {**recs[1], "index": recs[0]["index"]}] + recs[2:]))
    with pytest.raises(ClassificationError, match=rf"record 1: index {recs[0]['index']} is also record 0's"):
        runner.evaluate("direct", str(dup), str(tmp_path / "o.json"), lm=FakeLM())
    empty = tmp_path / "empty.json"
    words = ["World", " ", "Business", "Science and technology"]
    empty.write_text(json.dumps([{**r, "label_words": words, "ground_truth": "World"} for r in recs]))
    with pytest.raises(ClassificationError, match="label_words has an empty word"):
        runner.evaluate("direct", str(empty), str(tmp_path / "o.json"), lm=FakeLM())


@pytest.mark.parametrize("device, message", [("tpu", "--device 'tpu' is not one of cpu, cuda"),
                                             ("meta", "--device 'meta' is not one of cpu, cuda"),
                                             ("cuda", "--device cuda but torch sees no CUDA device")])
def test_unusable_devices_are_one_line_errors(tmp_path, device, message):
    import subprocess
    import sys

    import torch

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    data, _ = write_inputs(tmp_path)
    root = Path(__file__).resolve().parents[1]
    p = subprocess.run([sys.executable, str(root / "run_evaluate_direct_llama.py"), "--data_path", data,
                        "--output_path", str(tmp_path / "o.json"), "--device", device],
                       cwd=root, capture_output=True, text=True)
    assert p.returncode == 2 and "Traceback" not in p.stderr and p.stderr.count("\n") == 1
    assert p.stderr.startswith(f"error: {message}")


@pytest.mark.parametrize("content, message", [
    ("[" * 100_000 + "]" * 100_000, "JSON nested too deeply to read"),
    ('[{"index": ' + "7" * 5000 + "}]", "unreadable JSON (Exceeds the limit (4300 digits)"),
])
def test_deep_or_huge_number_json_is_one_line(tmp_path, content, message):
    path = tmp_path / "in.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ClassificationError) as e:
        runner.evaluate("direct", str(path), str(tmp_path / "o.json"), lm=FakeLM())
    assert str(e.value).startswith(f"--data_path {path}: ") and message in str(e.value) and "\n" not in str(e.value)


def test_deep_or_huge_number_partial_lines_are_skipped(tmp_path):
    data, recs = write_inputs(tmp_path)
    out = tmp_path / "o.json"
    with pytest.raises(FakeCrash):
        runner.evaluate("direct", data, str(out), lm=FakeLM(fail_after_calls=1), chunk_size=4)
    partial = Path(f"{out}.partial.jsonl")
    with open(partial, "a", encoding="utf-8") as f:
        f.write("[" * 100_000 + "\n" + '{"pos": ' + "1" * 5000 + "}\n")
    lm = FakeLM()
    runner.evaluate("direct", data, str(out), lm=lm, chunk_size=4)
    assert len(read(str(out))) == len(recs) and lm.calls >= 1


def no_space(*args, **kwargs):
    import errno
    import os

    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_when_writing_the_output_keeps_the_partial(tmp_path, monkeypatch):
    from classification import fileio

    data, recs = write_inputs(tmp_path)
    out = tmp_path / "o.json"
    monkeypatch.setattr(fileio.json, "dump", no_space)
    with pytest.raises(ClassificationError) as e:
        runner.evaluate("direct", data, str(out), lm=FakeLM(), chunk_size=4)
    assert str(e.value) == (f"{out}: cannot write: No space left on device; "
                            "free some space and run again (finished work is kept)")
    assert not out.exists() and glob.glob(str(tmp_path / ".o.json.*")) == []  # no temporary file left
    kept = Path(f"{out}.partial.jsonl").read_text().splitlines()
    assert len(kept) == 1 + len(recs)  # the header and every result
    monkeypatch.undo()
    lm = FakeLM()
    runner.evaluate("direct", data, str(out), lm=lm, chunk_size=4)
    assert lm.calls == 0 and len(read(str(out))) == len(recs)


def test_full_disk_while_appending_results_keeps_what_was_written(tmp_path, monkeypatch):
    import builtins

    from classification.run import resume

    data, recs = write_inputs(tmp_path)
    out = tmp_path / "o.json"

    class FillingFile:
        """The partial file on a disk with room for 4 more result lines."""

        def __init__(self, f):
            self.f, self.lines = f, 0

        def write(self, text):
            self.lines += 1
            if self.lines > 4:
                no_space()
            return self.f.write(text)

        def __getattr__(self, name):
            return getattr(self.f, name)

    def filling_open(path, mode="r", *args, **kwargs):
        f = builtins.open(path, mode, *args, **kwargs)
        return FillingFile(f) if mode == "a" else f

    monkeypatch.setattr(resume, "open", filling_open, raising=False)
    with pytest.raises(ClassificationError) as e:
        runner.evaluate("direct", data, str(out), lm=FakeLM(), chunk_size=4, save_every_s=0)
    assert str(e.value).startswith(f"{out}.partial.jsonl: cannot write: No space left on device; free some space")
    monkeypatch.undo()
    lm = FakeLM()
    runner.evaluate("direct", data, str(out), lm=lm, chunk_size=4)
    assert len(read(str(out))) == len(recs) and sum(lm.requests.values()) == 4 * (len(recs) - 4)


def test_full_disk_through_a_script_is_one_line(tmp_path, monkeypatch, capsys):
    import errno
    import os

    from classification import fileio
    from classification.cli import cli

    data, _ = write_inputs(tmp_path)
    monkeypatch.setattr(fileio.json, "dump", no_space)
    main = cli(lambda: runner.evaluate("direct", data, str(tmp_path / "o.json"), lm=FakeLM()))
    with pytest.raises(SystemExit) as e:
        main()
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # after the progress bar
    assert e.value.code == 2 and last.startswith("error: ") and os.strerror(errno.ENOSPC) in last
    assert "Traceback" not in err


def test_generate_label_words_that_differ_only_in_case(tmp_path):
    recs = [dict(good_record(), label_words=["us", "US"], ground_truth=w, text=f"text {i}", index=i)
            for i, w in enumerate(["US", "us", "US"])]
    data = tmp_path / "in.json"
    data.write_text(json.dumps(recs))
    out = tmp_path / "g.json"
    m = runner.evaluate("generate", str(data), str(out), lm=FakeLM(generator=lambda c: " US"))
    assert [o["prediction"] for o in read(str(out))] == ["US", "US", "US"] and m["accuracy"] == pytest.approx(2 / 3)
    assert m["fingerprint"]["ignore_case"] is False
    lm = FakeLM(generator=lambda c: " US")
    with pytest.raises(ClassificationError, match="'us' and 'US' are the same under case-insensitive matching"):
        runner.evaluate("generate", str(data), str(tmp_path / "g2.json"), lm=lm, ignore_case=True)
    assert lm.calls == 0 and glob.glob(str(tmp_path / "g2.json*")) == []
