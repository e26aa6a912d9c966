"""The leaderboard generator: records validated, seeds grouped, --check catches staleness, --reproduce re-runs."""

import json
import shutil

import pytest
from conftest import REPO, tiny_lm_overrides
from test_resume_distributed import launch

from nlprnn.errors import NlprnnError
from nlprnn.leaderboard import generate, main, rows_by_table
from nlprnn.reproduce import reproduce_command, reproduction_record

REAL = json.loads((REPO / "leaderboard" / "results" / "lm" / "wikitext-2" / "wikitext2_lstm_60min.json").read_text())


def board(tmp_path, records):
    root = tmp_path / "board"
    for name, record in records.items():
        path = root / "results" / "lm" / "wikitext-2" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record))
    return root


def variant(**changes):
    record = json.loads(json.dumps(REAL))
    for key, value in changes.items():
        section, _, field = key.partition(".")
        if field:
            record[section][field] = value
        else:
            record[section] = value
    return record


def test_seeds_of_one_configuration_are_one_row_with_mean_and_std(tmp_path):
    a = variant(seed=1, **{"metrics.test_ppl": 150.0})
    b = variant(seed=2, **{"metrics.test_ppl": 160.0})
    a["config"]["train"]["seed"], b["config"]["train"]["seed"] = 1, 2
    other = variant(**{"metrics.test_ppl": 140.0, "model": "gru"})
    other["config"]["model"]["name"] = "gru"
    root = board(tmp_path, {"a.json": a, "b.json": b, "c.json": other})
    generate(root)
    readme = (root / "README.md").read_text()
    assert "| 155.00 ± 7.07 | 2 |" in readme
    assert readme.index("| gru (60 min)") < readme.index("| lstm (60 min)")  # sorted: lower perplexity first
    assert len(rows_by_table([{**r, "_file": "x"} for r in (a, b, other)])[("lm", "wikitext-2")]) == 2


def test_rows_that_would_share_a_label_show_the_settings_they_differ_in(tmp_path):
    full = variant(**{"metrics.test_ppl": 150.0})
    adaptive = variant(**{"metrics.test_ppl": 160.0})
    full["config"]["model"]["head"], adaptive["config"]["model"]["head"] = "full", "adaptive"
    adaptive["config"]["model"]["adaptive_cutoffs"] = [2000, 10000]
    adaptive["config"]["decode"] = {"beam_size": 5}  # a section newer code added: not a difference
    rows = rows_by_table([{**r, "_file": "x"} for r in (full, adaptive)])[("lm", "wikitext-2")]
    assert [row["model"] for row in rows] == ["lstm (60 min) [adaptive_cutoffs=[], head=full]",
                                              "lstm (60 min) [adaptive_cutoffs=[2000,10000], head=adaptive]"]
    again = variant(**{"metrics.test_ppl": 170.0, "git_commit": "f" * 40})
    again["config"]["model"]["head"] = "full"
    again["config"]["train"]["a_newer_setting"] = 1
    rows = rows_by_table([{**r, "_file": "x"} for r in (full, again)])[("lm", "wikitext-2")]
    assert rows[1]["model"] == "lstm (60 min) [commit ffffffff]"
    # A path-valued difference (a pretrained source) shows its last parts, not the machine's prefix.
    transferred = variant(**{"metrics.test_ppl": 140.0})
    full["config"]["model"]["init_from"], transferred["config"]["model"]["init_from"] = "", "/work/runs/lm_60min/model"
    rows = rows_by_table([{**r, "_file": "x"} for r in (full, transferred)])[("lm", "wikitext-2")]
    assert [row["model"] for row in rows] == ["lstm (60 min) [init_from=lm_60min/model]",
                                              "lstm (60 min) [init_from=]"]


def test_a_setting_added_since_an_old_record_reads_as_its_default():
    old = variant(**{"metrics.test_ppl": 150.0})  # written before the lightrnn and transfer settings existed
    assert "lightrnn" not in old["config"] and "transfer" not in old["config"]
    seed = variant(**{"metrics.test_ppl": 160.0})
    seed["config"]["train"]["seed"] = 2
    seed["config"]["lightrnn"] = {"reallocations": 0}  # today's code records every default
    seed["config"]["transfer"] = {"init_from": None, "add_source_words": False}
    capped = variant(**{"metrics.test_ppl": 140.0})
    capped["config"]["lightrnn"] = {"reallocations": 3}
    rows = rows_by_table([{**r, "_file": "x"} for r in (old, seed, capped)])[("lm", "wikitext-2")]
    assert [(row["model"], len(row["records"])) for row in rows] == [
        ("lstm (60 min) [reallocations=3]", 1), ("lstm (60 min) [reallocations=0]", 2)]


def test_rows_that_still_look_alike_after_every_difference_add_their_commit():
    # Two rows apart from a third in one setting, and from each other only in a setting old code lacked.
    a = variant(**{"metrics.test_ppl": 150.0, "git_commit": "a" * 40})
    a["config"]["train"]["a_removed_setting"] = 1
    b = variant(**{"metrics.test_ppl": 160.0, "git_commit": "b" * 40})
    c = variant(**{"metrics.test_ppl": 140.0})
    c["config"]["train"]["lr"] = 1.0
    labels = [row["model"] for row in rows_by_table([{**r, "_file": "x"} for r in (a, b, c)])[("lm", "wikitext-2")]]
    assert labels == ["lstm (60 min) [lr=1.0]", "lstm (60 min) [lr=20.0, commit aaaaaaaa]",
                      "lstm (60 min) [lr=20.0, commit bbbbbbbb]"]


def test_runs_with_other_compute_are_not_seeds_of_one_row(tmp_path):
    # Under a wall-clock budget one thread buys less training than two: a different row, labelled so.
    two = variant(**{"metrics.test_ppl": 150.0})
    one = variant(**{"metrics.test_ppl": 170.0})
    one["hardware"]["torch_threads"], two["hardware"]["torch_threads"] = 1, 2
    rows = rows_by_table([{**r, "_file": "x"} for r in (two, one)])[("lm", "wikitext-2")]
    assert [row["model"] for row in rows] == ["lstm (60 min) [threads=2]", "lstm (60 min) [threads=1]"]
    # Nor are runs on another CPU model: the same minutes buy a different number of steps.
    fast, slow = variant(**{"metrics.test_ppl": 120.0}), variant(**{"metrics.test_ppl": 135.0})
    fast["hardware"]["cpu"], slow["hardware"]["cpu"] = "Intel Xeon", "AMD EPYC"
    fast["config"]["train"]["seed"] = 2  # seeds differ too, but the CPU alone keeps them apart
    rows = rows_by_table([{**r, "_file": "x"} for r in (slow, fast)])[("lm", "wikitext-2")]
    assert [row["model"] for row in rows] == ["lstm (60 min) [device=Intel Xeon]", "lstm (60 min) [device=AMD EPYC]"]
    # Three rows, two of them alike in the first three settings: the fourth difference tells those two apart.
    full = variant(**{"metrics.test_ppl": 150.0})
    for record in (fast, slow):
        record["config"]["model"].update(head="adaptive", adaptive_cutoffs=[2000], tie_weights=False)
    full["config"]["model"].update(head="full", adaptive_cutoffs=[], tie_weights=True)
    rows = rows_by_table([{**r, "_file": "x"} for r in (slow, fast, full)])[("lm", "wikitext-2")]
    assert [row["model"] for row in rows] == [
        "lstm (60 min) [adaptive_cutoffs=[2000], head=adaptive, tie_weights=false, device=Intel Xeon]",
        "lstm (60 min) [adaptive_cutoffs=[2000], head=adaptive, tie_weights=false, device=AMD EPYC]",
        "lstm (60 min) [adaptive_cutoffs=[], head=full, tie_weights=true, device=AMD EPYC]"]


def test_gpu_runs_are_a_track_of_their_own(tmp_path):
    cpu = variant(**{"metrics.test_ppl": 150.0})
    gpu = variant(**{"metrics.test_ppl": 100.0})
    gpu["hardware"].update(gpu="NVIDIA H200", device="cuda")
    gpu["config"]["train"]["max_minutes"] = 4
    # CUDA was visible but the run used the CPU: still the CPU track, named by its CPU.
    cpu_beside_a_gpu = variant(**{"metrics.test_ppl": 160.0, "hardware.gpu": "NVIDIA H200"})
    cpu_beside_a_gpu["config"]["train"]["seed"] = 2
    root = board(tmp_path, {"cpu.json": cpu, "gpu.json": gpu, "cpu2.json": cpu_beside_a_gpu})
    generate(root)
    readme = (root / "README.md").read_text()
    cpu_table = readme.index("## Language modelling: wikitext-2\n")
    gpu_table = readme.index("## Language modelling: wikitext-2, GPU track\n")
    assert cpu_table < readme.index("| 155.00 ± 7.07 | 2 |") < gpu_table < readme.index("| 100.00 | 1 |")
    assert "| NVIDIA H200, 1 proc |" in readme[gpu_table:] and "NVIDIA H200" not in readme[cpu_table:gpu_table]
    assert not (root / "quality_vs_time_lm_wikitext-2_gpu.png").exists()  # one GPU row: nothing to compare
    gpu_2min = json.loads(json.dumps(gpu))
    gpu_2min["config"]["train"]["max_minutes"] = 2
    (root / "results" / "lm" / "wikitext-2" / "gpu2.json").write_text(json.dumps(gpu_2min))
    generate(root)
    assert (root / "quality_vs_time_lm_wikitext-2_gpu.png").exists()


def test_check_reports_a_stale_readme_and_plot(tmp_path, capsys):
    gru = variant(**{"model": "gru"})
    gru["config"]["model"]["name"] = "gru"
    root = board(tmp_path, {"a.json": REAL, "b.json": gru})
    assert main(["--root", str(root), "--check"]) == 1
    assert main(["--root", str(root)]) == 0
    assert main(["--root", str(root), "--check"]) == 0
    (root / "results" / "lm" / "wikitext-2" / "a.json").write_text(json.dumps(variant(**{"metrics.test_ppl": 1.0})))
    capsys.readouterr()
    assert main(["--root", str(root), "--check"]) == 1
    out = capsys.readouterr().out
    assert "README.md" in out and "quality_vs_time_lm_wikitext-2.png" in out


def test_a_record_without_its_provenance_is_rejected_by_name(tmp_path, capsys):
    bad = variant()
    del bad["git_commit"]
    root = board(tmp_path, {"bad.json": bad})
    with pytest.raises(NlprnnError, match=r"bad.json: not a valid run record: missing 'git_commit'"):
        generate(root)
    assert main(["--root", str(root), "--check"]) == 2
    assert "bad.json" in capsys.readouterr().err


def test_benchmark_records_get_their_tables_and_the_reallocation_plot(tmp_path):
    root = board(tmp_path, {"a.json": REAL})
    bench = root / "results" / "benchmarks"
    bench.mkdir(parents=True)
    common = {k: REAL[k] for k in ("hardware", "git_commit")} | {"command": "python benchmarks/x.py"}
    runs = [{"vocab": v, "solver": solver, "seconds": seconds, "peak_rss_bytes": 2**30, "data_rss_bytes": 2**29,
             "cost_before": 10.0, "cost_after": 2.5, "words_moved": v // 2, "cost_vs_reference": ratio,
             "reference": "dense"} for v, solver, seconds, ratio in ((100, "sparse", 0.5, 1.0), (100, "greedy", 0.1, 1.3))]
    (bench / "realloc.json").write_text(json.dumps({"benchmark": "lightrnn_reallocation", "runs": runs,
                                                    "date": "2026-12-01T00:00:00", **common}))
    rows = [{"model": "gru_attn", "beam_size": 5, "batched_sentences_per_second": 120.5, "checkpoint": "runs/x"}]
    (bench / "decode.json").write_text(json.dumps({"benchmark": "decode_speed", "rows": rows,
                                                   "date": "2026-12-02T00:00:00", **common}))
    generate(root)
    readme = (root / "README.md").read_text()
    assert "| 100 | greedy | 0.1 | 1,024 | 512 | 0.25 | 50 | 1.3000 (dense) |" in readme
    assert "| model | beam_size | batched_sentences_per_second | checkpoint |" in readme
    assert "| gru_attn | 5 | 120.5 | runs/x |" in readme
    assert (root / "lightrnn_reallocation.png").exists()


def test_the_committed_leaderboard_is_up_to_date():
    assert main(["--check"]) == 0, "run `nlprnn leaderboard` and commit leaderboard/"


def test_reproduce_by_budget_or_by_the_recorded_steps():
    base = reproduce_command(REAL, "runs/again")
    assert base[:3] == ["accelerate", "launch", "--num_cpu_threads_per_process"]
    assert base[-2:] == ["run.dir=runs/again", "run.resume=false"]
    assert reproduce_command(REAL, "runs/again", budget_minutes=5)[-1] == "train.max_minutes=5"
    steps = reproduce_command(REAL, "runs/again", same_steps=True)
    assert steps[-2:] == [f"train.max_steps={REAL['train']['steps']}", "train.max_minutes=0"]
    with pytest.raises(NlprnnError, match="exclude each other"):
        reproduce_command(REAL, "runs/again", budget_minutes=5, same_steps=True)
    cosine = variant()
    cosine["config"]["train"].update(schedule="cosine", max_steps=0)
    with pytest.raises(NlprnnError, match="cosine schedule spans its epochs"):
        reproduce_command(cosine, "runs/again", same_steps=True)


def test_reproduce_maps_paths_into_another_clone_onto_this_checkout(tmp_path):
    record = variant(command="accelerate launch /tmp/gone/clone/recipes/ner.py --config "
                             "/tmp/gone/clone/recipes/configs/ner/conll2003_bilstm_crf.yaml "
                             f"model.init_from=/tmp/gone/lm/model data.path={tmp_path}")
    command = reproduce_command(record, "runs/again")
    assert command[2:5] == ["recipes/ner.py", "--config", "recipes/configs/ner/conll2003_bilstm_crf.yaml"]
    # a pretrained model or a data folder is not part of the repository: it must exist where it was
    assert "model.init_from=/tmp/gone/lm/model" in command and f"data.path={tmp_path}" in command


def test_a_reproduction_record_shows_old_and_new_metrics_on_the_leaderboard(tmp_path):
    again = variant(**{"metrics.test_ppl": REAL["metrics"]["test_ppl"] + 0.5, "git_commit": "a" * 40})
    again["hardware"]["cpu"] = "Another CPU"
    record = reproduction_record(str(REPO / "leaderboard/results/lm/wikitext-2/wikitext2_lstm_60min.json"),
                                 REAL, again, "same steps")
    assert record["record"] == "leaderboard/results/lm/wikitext-2/wikitext2_lstm_60min.json"
    assert [r["metric"] for r in record["rows"]] == ["valid_ppl", "test_ppl"]
    assert record["rows"][1]["difference"] == pytest.approx(0.5)
    root = board(tmp_path, {"a.json": REAL})
    (root / "results" / "benchmarks").mkdir()
    (root / "results" / "benchmarks" / "reproduce_lstm.json").write_text(json.dumps(record))
    generate(root)
    readme = (root / "README.md").read_text()
    assert "Re-run of [wikitext2_lstm_60min.json](results/lm/wikitext-2/wikitext2_lstm_60min.json) (same steps)" in readme
    assert f"Reproduced: commit `aaaaaaaa`, Another CPU x{REAL['hardware']['torch_threads']} threads" in readme
    old = REAL["metrics"]["test_ppl"]
    assert f"| test_ppl | {old:.2f} | {old + 0.5:.2f} | +0.50 |" in readme


def test_a_rerun_made_earlier_is_compared_when_its_command_is_the_records(tmp_path, capsys):
    recorded = tmp_path / "recorded.json"
    recorded.write_text(json.dumps(REAL))
    rerun = variant(**{"metrics.test_ppl": REAL["metrics"]["test_ppl"] - 1.25, "git_commit": "b" * 40})
    rerun["command"] = REAL["command"] + f" run.dir={tmp_path}/again run.resume=false " \
                                          f"train.max_steps={REAL['train']['steps']} train.max_minutes=0"
    rerun["config"]["train"].update(max_steps=REAL["train"]["steps"], max_minutes=0)  # as the command set them
    (tmp_path / "again").mkdir()
    (tmp_path / "again" / "result.json").write_text(json.dumps(rerun))
    out = tmp_path / "reproduction.json"
    assert main(["--reproduce", str(recorded), "--rerun", str(tmp_path / "again"), "--json", str(out)]) == 0
    assert "difference -1.250" in capsys.readouterr().out
    written = json.loads(out.read_text())
    assert written["mode"] == "same steps" and written["reproduced"]["git_commit"] == "b" * 40
    # What it stores is the command that makes it from scratch: the re-run's folder is this machine's alone.
    assert written["command"] == f"nlprnn leaderboard --reproduce {recorded} --same-steps --json {out}"
    rerun["command"] = REAL["command"].replace("--num_cpu_threads_per_process 2", "--num_cpu_threads_per_process 1") \
        + f" run.dir={tmp_path}/again"
    (tmp_path / "again" / "result.json").write_text(json.dumps(rerun))
    assert main(["--reproduce", str(recorded), "--rerun", str(tmp_path / "again")]) == 2
    assert "its command is not a re-run of" in capsys.readouterr().err


@pytest.mark.slow
def test_reproduce_reruns_the_recorded_command(lm_corpus, tmp_path, capsys, monkeypatch):
    first = tmp_path / "first"
    launch(tiny_lm_overrides(lm_corpus, first, **{"train.max_steps": 4}))
    record = json.loads((first / "result.json").read_text())
    record["git_commit"] = "0" * 40  # the test tree may be dirty; the record must name a commit
    (first / "result.json").write_text(json.dumps(record))
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert main(["--reproduce", str(first / "result.json"), "--run-dir", str(tmp_path / "again"),
                 "--json", str(tmp_path / "reproduction.json")]) == 0
    out = capsys.readouterr().out
    assert "valid_ppl: recorded" in out and "difference +0.000" in out  # same seed, same machine: exact
    written = json.loads((tmp_path / "reproduction.json").read_text())
    assert written["benchmark"] == "reproduction" and written["mode"] == "as recorded"
    assert [row["difference"] for row in written["rows"]] == [0.0, 0.0]
    shutil.rmtree(tmp_path / "again")
