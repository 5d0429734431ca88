"""launch/merge.py: merged == trained, stock transformers loads llm/, keep-adapters, atomic output, one-line errors."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipeline.adapters import ADAPTERS, AdapterConfig, AdapterLinear, adapter_layers
from pipeline.adapters.io import load_model
from pipeline.merge import MergeError, merge_run
from pipeline.model.avllm import AVLLM
from pipeline.model.processor import PLACEHOLDERS, AVSample
from pipeline.rundir import MERGE_MANIFEST
from tests.merge.conftest import make_run
from tests.model.conftest import mixed_samples

REPO = Path(__file__).resolve().parents[2]
TOWERS = ["llm", "vision", "audio"]
# every mergeable adapter on the LLM, plus LoRA and IMoD on the encoder towers too
# (mora needs two towers and square targets: its streamed merge is tested in test_mora.py)
CASES = [(n, ["llm"]) for n, cls in ADAPTERS.items() if cls.mergeable and n != "mora"] + [("lora", TOWERS),
                                                                                         ("imod", TOWERS)]


def logits(model: AVLLM, samples: list[AVSample]) -> torch.Tensor:
    with torch.no_grad():
        return model(**model.build_processor()(samples)).logits


def plain(model: AVLLM) -> bool:
    return not any(isinstance(m, AdapterLinear) for m in model.modules())


@pytest.mark.parametrize("name, scope", CASES, ids=[f"{n}-{'+'.join(s)}" for n, s in CASES])
def test_merged_logits_equal_trained_on_a_mixed_batch(tmp_path, tiny_model_config, name, scope):
    cfg = tiny_model_config("llama")
    run, trained = make_run(tmp_path / "run", cfg, AdapterConfig(name=name, rank=4, scope=scope))
    merged = AVLLM.from_pretrained(merge_run(run, tmp_path / "out")).eval()
    assert plain(merged)
    adapted = {name.split(".")[0] for name in adapter_layers(trained)}
    assert adapted == set(scope)
    expected = logits(trained, mixed_samples())
    assert not torch.allclose(expected, logits(AVLLM.from_config(cfg).eval(), mixed_samples()), atol=1e-3)
    torch.testing.assert_close(logits(merged, mixed_samples()), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["lora", "bitfit"])
def test_stock_transformers_loads_llm_with_the_merged_weights_and_logits(tmp_path, tiny_model_config, name):
    """BitFit on a bias-free Llama: the merge switches on attention_bias/mlp_bias so stock transformers keeps them."""
    run, _ = make_run(tmp_path / "run", tiny_model_config("llama"), AdapterConfig(name=name, rank=4, scope=["llm"]))
    out = merge_run(run, tmp_path / "out", shard_bytes=64 * 2**10)  # small shards: exercises the index
    assert (out / "llm/model.safetensors.index.json").is_file()
    merged = AVLLM.from_pretrained(out).eval()
    stock = AutoModelForCausalLM.from_pretrained(out / "llm").eval()
    ours = merged.llm.state_dict()
    theirs = stock.state_dict()
    assert ours.keys() == theirs.keys()
    for key, tensor in ours.items():
        torch.testing.assert_close(theirs[key], tensor, rtol=0, atol=0)
    tokenizer = AutoTokenizer.from_pretrained(out / "llm")
    assert all(tokenizer.convert_tokens_to_ids(p) == merged.token_id[p] for p in PLACEHOLDERS)
    batch = merged.build_processor()(mixed_samples()[3:])
    with torch.no_grad():
        expected = merged(**batch).logits
        got = stock(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_greedy_generation_of_the_merged_checkpoint_equals_the_trained_model(tmp_path, lora_run):
    run, trained = lora_run
    merged = AVLLM.from_pretrained(merge_run(run, tmp_path / "out")).eval()
    batch = trained.build_processor()(mixed_samples(generation=True), padding_side="left")
    expected = trained.generate(**batch, max_new_tokens=8)
    assert torch.equal(merged.generate(**batch, max_new_tokens=8), expected)


def test_manifest_names_source_adapter_base_dtype_and_file_hashes(tmp_path, lora_run):
    run, trained = lora_run
    out = merge_run(run, tmp_path / "out", dtype="bf16")
    manifest = json.loads((out / "merge.json").read_text())
    assert manifest["source_run"] == str(run.resolve()) and manifest["merged"] is True
    assert manifest["adapter"]["name"] == "lora" and manifest["adapter"]["config"]["rank"] == 4
    assert manifest["base"]["llm"] == str(Path(trained.config.llm).resolve())
    assert manifest["dtype"] == "bf16"
    weights = out / "llm/model.safetensors"
    assert manifest["files"]["llm/model.safetensors"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert {"avllm.json", "projectors.safetensors", "llm/tokenizer.json", "vision/model.safetensors"} <= set(
        manifest["files"])
    with safe_open(str(weights), framework="pt") as f:
        assert all(f.get_tensor(k).dtype == torch.bfloat16 for k in f.keys())
    merged = AVLLM.from_pretrained(out).eval()
    assert merged.llm.dtype == torch.bfloat16 and merged.config.dtype == "bf16"
    batch = merged.build_processor()(mixed_samples(generation=True), padding_side="left")
    assert merged.generate(**batch, max_new_tokens=4).shape[0] == 4


def test_keep_adapters_round_trip_gives_the_unmerged_logits(tmp_path, lora_run):
    run, trained = lora_run
    out = merge_run(run, tmp_path / "out", keep_adapters=True)
    assert json.loads((out / "merge.json").read_text())["merged"] is False
    loaded = load_model(out).eval()
    assert not plain(loaded)
    torch.testing.assert_close(logits(loaded, mixed_samples()), logits(trained, mixed_samples()), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["unimodal_lora", "moka", "loramoe", "hydralora"])
def test_non_mergeable_adapter_is_refused_and_kept_with_keep_adapters(tmp_path, tiny_model_config, name):
    run, trained = make_run(tmp_path / "run", tiny_model_config("llama"), AdapterConfig(name=name, rank=4,
                                                                                         scope=["llm"]))
    with pytest.raises(MergeError, match="cannot be merged.*--keep-adapters"):
        merge_run(run, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.partial").exists()
    loaded = load_model(merge_run(run, tmp_path / "out", keep_adapters=True)).eval()
    assert all(type(m) is ADAPTERS[name] for m in loaded.modules() if isinstance(m, AdapterLinear))
    torch.testing.assert_close(logits(loaded, mixed_samples()), logits(trained, mixed_samples()), rtol=0, atol=1e-5)


def test_checkpoint_option_merges_a_complete_checkpoint_export(tmp_path, tiny_model_config):
    cfg = tiny_model_config("llama")
    adapter = AdapterConfig(name="lora", rank=4, scope=["llm"])
    run, _ = make_run(tmp_path / "run", cfg, adapter, seed=1)
    step, at_step = make_run(tmp_path / "run/checkpoints/step-2", cfg, adapter, seed=2)
    (step / "final").rename(step / "export")
    with pytest.raises(MergeError, match="not a complete checkpoint"):
        merge_run(run, tmp_path / "out", checkpoint="step-2")
    (step / "COMPLETE").write_text("{}")
    merged = AVLLM.from_pretrained(merge_run(run, tmp_path / "out", checkpoint="step-2")).eval()
    torch.testing.assert_close(logits(merged, mixed_samples()[3:]), logits(at_step, mixed_samples()[3:]),
                               rtol=0, atol=1e-5)


# ---- the command line (subprocesses) ----------------------------------------------------------------------------


def merge_cmd(*args) -> list[str]:
    return [sys.executable, str(REPO / "launch/merge.py"), *map(str, args)]


def cli_env(**extra) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **extra}


def test_bad_run_dir_and_existing_out_are_one_line_errors(tmp_path, lora_run):
    run, _ = lora_run
    bad = tmp_path / "nope"
    proc = subprocess.run(merge_cmd("--run", bad, "--out", tmp_path / "o1"), env=cli_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and str(bad) in proc.stderr
    with pytest.raises(MergeError, match=r"final: no trainables.safetensors"):
        (tmp_path / "empty-run").mkdir()
        (tmp_path / "empty-run/config.yaml").write_text((run / "config.yaml").read_text())
        merge_run(tmp_path / "empty-run", tmp_path / "o2")
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    proc = subprocess.run(merge_cmd("--run", run, "--out", existing), env=cli_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "already exists; pass --force" in proc.stderr
    assert (existing / "keep.txt").read_text() == "mine"
    with pytest.raises(MergeError, match="replaces only an earlier merge's output"):
        merge_run(run, existing, force=True)
    assert (existing / "keep.txt").read_text() == "mine"
    shipped = merge_run(run, tmp_path / "shipped")
    (shipped / "stale.txt").write_text("from an earlier merge")
    assert merge_run(run, shipped, force=True) == shipped and not (shipped / "stale.txt").exists()


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime_ns) of every file under root: what the user owns, to show it untouched."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


def test_force_never_replaces_the_run_or_a_base_model(tmp_path, tiny_model_config, capsys):
    """--out that is, lies inside or contains the run or a base model directory: one line, exit 2, nothing written
    (through launch/merge.py's main on a real run; the first case also as a subprocess)."""
    from launch.merge import main

    runs = tmp_path / "runs"
    run, _ = make_run(runs / "run", tiny_model_config("llama"), AdapterConfig(name="lora", rank=4, scope=["llm"]))
    llm = Path(yaml_model(run)["llm"])
    before = tree(runs) | tree(llm)
    proc = subprocess.run(merge_cmd("--run", run, "--out", run, "--force"), env=cli_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"--out {run} is --run" in proc.stderr
    cases = [(run / "final", "lies inside --run"), (runs, "contains --run"), (llm, "is model.llm"),
             (llm / "sub", "lies inside model.llm"), (llm.parent, "contains")]
    for out, expected in cases:
        assert main(["--run", str(run), "--out", str(out), "--force"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and expected in err, err
    assert tree(runs) | tree(llm) == before
    assert not list(runs.glob(".*")) and not (llm / "sub").exists()
    afile = tmp_path / "a-file"
    afile.write_text("mine")
    assert main(["--run", str(run), "--out", str(afile / "merged")]) == 2  # an OSError: one line, not a traceback
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and str(afile) in err, err


def yaml_model(run: Path) -> dict:
    import yaml

    return yaml.safe_load((run / "config.yaml").read_text())["model"]


def test_sigkill_midway_leaves_no_out_dir(tmp_path, lora_run):
    """Killed after everything is written, before the rename (the manifest writer is patched to pause there): OUT
    must not exist; the next merge clears the partial directory and succeeds."""
    run, _ = lora_run
    out = tmp_path / "out"
    paused = ("import sys, time\nimport pipeline.merge as m\nwrite = m.write_manifest\n"
              "def pause(*args, **kwargs):\n    write(*args, **kwargs)\n"
              "    print('paused before rename', file=sys.stderr, flush=True)\n    time.sleep(120)\n"
              "m.write_manifest = pause\nm.merge_run(sys.argv[1], sys.argv[2])\n")
    proc = subprocess.Popen([sys.executable, "-c", paused, str(run), str(out)], env=cli_env(),
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        for line in proc.stderr:
            if line.startswith("paused before rename"):
                break
        assert (tmp_path / ".out.partial/merge.json").is_file()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    proc = subprocess.run(merge_cmd("--run", run, "--out", out), env=cli_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"note: removed {tmp_path / '.out.partial'}, left by an interrupted merge" in proc.stderr
    assert (out / "merge.json").is_file() and not (tmp_path / ".out.partial").exists()


def test_full_disk_is_one_line_and_leaves_nothing(lora_run, small_disk, capsys):
    """--out on a real 256 KiB tmpfs, too small for the tiny merged checkpoint: one line naming the path and the free
    space, exit 1, no OUT and no .OUT.partial."""
    from launch.merge import main

    run, _ = lora_run
    disk = small_disk(256)
    assert main(["--run", str(run), "--out", str(disk / "merged")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {disk / '.merged.partial'}: cannot write ("), err
    assert " MiB free there, about " in err and " MiB needed" in err
    assert list(disk.iterdir()) == []


def test_an_output_a_killed_merge_had_moved_aside_is_put_back(tmp_path, lora_run, capsys):
    """Killed between moving the old OUT aside and renaming the new one in: the next merge restores the old OUT
    (so it is not replaced without --force), removes the partial one, and says both."""
    run, _ = lora_run
    out = tmp_path / "out"
    (tmp_path / ".out.old").mkdir()
    (tmp_path / ".out.old" / MERGE_MANIFEST).write_text("{}")
    (tmp_path / ".out.partial").mkdir()
    with pytest.raises(MergeError, match="already exists; pass --force"):
        merge_run(run, out)
    err = capsys.readouterr().err
    assert f"note: restored {out} from {tmp_path / '.out.old'}, left by an interrupted merge" in err
    assert f"note: removed {tmp_path / '.out.partial'}, left by an interrupted merge" in err
    assert (out / MERGE_MANIFEST).is_file() and not (tmp_path / ".out.partial").exists()


def test_the_merged_audio_encoder_is_its_base_and_loads_with_another_window(tmp_path, tiny_model_config):
    """The merged audio/ is the base Whisper encoder (whole positional table and config) with the adapter folded in,
    not the 1 s training window's cut: it loads with a 2 s window, with the same folded weights."""
    cfg = tiny_model_config("llama")
    run, _ = make_run(tmp_path / "run", cfg, AdapterConfig(name="lora", rank=4, scope=TOWERS))
    out = merge_run(run, tmp_path / "out")
    assert json.loads((out / "audio" / "config.json").read_text())["max_source_positions"] == 100
    narrow = AVLLM.from_pretrained(out).audio.encoder.state_dict()
    wide = AVLLM.from_pretrained(out, audio_window_seconds=2.0).audio.encoder.state_dict()
    base = AVLLM.from_config(cfg).audio.encoder.state_dict()
    assert narrow["embed_positions.weight"].shape[0] == 50 and wide["embed_positions.weight"].shape[0] == 100
    for key, tensor in narrow.items():
        torch.testing.assert_close(wide[key][: tensor.shape[0]], tensor, rtol=0, atol=0)
    assert not torch.equal(narrow["layers.0.self_attn.q_proj.weight"], base["layers.0.self_attn.q_proj.weight"])
