"""Every launch script on bad input, as a user runs it: one subprocess per case.

Each case must end with a non-zero exit, exactly one `<name>: error: ...` line on stderr holding
the expected words, no traceback, and nothing new on disk: the case's own output folder (its
working directory, where every output flag points) stays empty and the input files are untouched;
a training run refused for a setting that only the model or the data can judge (a rank above a
layer's size, token ids outside the vocabulary, a batch larger than the data) makes no workdir
either. The cases run in parallel (one process per core): a
subprocess costs a JAX import. The files come from bad_input_world.py.
"""

import concurrent.futures
import dataclasses
import os
import pathlib
import subprocess
import sys

import pytest

import bad_input_world

ROOT = pathlib.Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Case:
  id: str
  script: str
  args: tuple[str, ...]
  expect: str  # words the error line holds

  def argv(self, files: dict, out: str) -> list[str]:
    return [a.format(out=out, **files) for a in self.args]


MERGE = ("--base-model={base}", "--output={out}/m/merged.safetensors")
CONVERT = ("--config={repo}/configs/music_transformer.py:tiny", "--output={out}/c/base.safetensors")
GENERATE = ("--model={base}", "--output-dir={out}/s", "--n-samples=1", "--length=8")
HUMANIZE = ("--model={duv_bundle}", "--output={out}/h/out.mid")
DUV = ("--config={repo}/configs/duv/base.py:tiny", "--workdir={out}/w",
       "--config.duv.bundle={out}/b", "--config.model.n_layers=1", "--config.duv.heldout=song5$")
DUV_DATA = DUV + ("--config.duv.manifest={manifest}",)
TRAIN = ("--config={repo}/configs/music_lm.py:tiny", "--workdir={out}/w")
EXPORT = ("--input={base}", "--output={out}/e/merged.pt")
SONG = ("--adapter={song_adapter}", "--lyrics=[verse] la la", "--output={out}/g/song.wav",
        "--seconds=0.2")
PARENT = ("--parent=celtic_fiddle", "--pack={out}/no_pack", "--base-model={base}",
          "--output-dir={out}/a")

CASES = [
    # build_duv_manifest: settings checked before the cache is read or anything written
    Case("manifest_max_len_0", "build_duv_manifest", ("--cache={duv_cache}", "--out={out}/d",
                                                      "--sources=pop909", "--max_len=0"),
         "max_len 0 must be >= 1"),
    Case("manifest_fraction_nan", "build_duv_manifest",
         ("--cache={duv_cache}", "--out={out}/d", "--valid_fraction=nan"),
         "valid_fraction nan is not a finite number"),
    Case("manifest_unknown_source", "build_duv_manifest",
         ("--cache={duv_cache}", "--out={out}/d", "--sources=napster"), "unknown source 'napster'"),
    Case("manifest_missing_cache", "build_duv_manifest",
         ("--cache={out}/nowhere", "--out={out}/d", "--sources=pop909"), "nowhere"),
    Case("style_packs_unknown_genre", "build_style_packs", ("--out={out}/p", "--styles=nope"),
         "unknown genres ['nope']"),
    # merge_adapters: weights, adapters and the result checked before anything is written
    Case("merge_parent_weight_nan", "merge_adapters",
         MERGE + ("--parent-adapter={parent}", "--parent-weight=nan"),
         "--parent-weight nan is not a finite number"),
    Case("merge_child_weight_inf", "merge_adapters",
         MERGE + ("--parent-adapter={parent}", "--child-adapter={child}", "--child-weight=inf"),
         "--child-weight inf is not a finite number"),
    Case("merge_nan_adapter", "merge_adapters", MERGE + ("--parent-adapter={nan_lora}",),
         "nan.lora: tensor blocks.0.attn.k_proj.lora_B holds non-finite values (1 of"),
    Case("merge_truncated_lora", "merge_adapters", MERGE + ("--parent-adapter={truncated_lora}",),
         "truncated.lora is not a safetensors adapter"),
    Case("merge_pickled_lora", "merge_adapters", MERGE + ("--parent-adapter={pickled_lora}",),
         "pickled.lora: this file needs pickle to load; lora_jax never unpickles; re-save it as "
         "safetensors or a weights-only state dict"),
    Case("merge_empty_lora", "merge_adapters", MERGE + ("--parent-adapter={empty_lora}",),
         "empty.lora is not a safetensors adapter"),
    Case("merge_random_lora", "merge_adapters", MERGE + ("--parent-adapter={random_lora}",),
         "random.lora is not a safetensors adapter"),
    Case("merge_foreign_base", "merge_adapters", MERGE + ("--parent-adapter={foreign_lora}",),
         "was trained on base"),
    Case("merge_torch_output_suffix", "merge_adapters",
         MERGE + ("--parent-adapter={parent}", "--torch-output={out}/m/merged.bin"),
         "--torch-output"),
    # export_torch: the merged export checks weights, adapters and the result as the merge does
    Case("export_nan_adapter", "export_torch", EXPORT + ("--adapters={nan_lora}",),
         "nan.lora: tensor blocks.0.attn.k_proj.lora_B holds non-finite values (1 of"),
    Case("export_weight_inf", "export_torch", EXPORT + ("--adapters={parent}", "--weights=inf"),
         "inf is not a finite number"),
    # convert_torch: a base with NaN/inf, pickles, broken files
    Case("convert_nonfinite_base", "convert_torch", CONVERT + ("--input={nan_pt}",),
         "holds non-finite values (1 of"),
    Case("convert_pickled", "convert_torch", CONVERT + ("--input={evil_pt}",),
         "evil.pt: this file needs pickle to load; lora_jax never unpickles"),
    Case("convert_legacy_pickle", "convert_torch", CONVERT + ("--input={legacy_pt}",),
         "legacy.pt: this file needs pickle to load"),
    Case("convert_empty", "convert_torch", CONVERT + ("--input={empty_pt}",),
         "cannot read"),
    Case("convert_truncated", "convert_torch", CONVERT + ("--input={truncated_pt}",),
         "truncated.pt as a torch weight file"),
    # generate: sampling settings, the inference config, primers
    Case("generate_temperature_negative", "generate", GENERATE + ("--temperature=-1",),
         "temperature -1 must be >= 0"),
    Case("generate_temperature_nan", "generate", GENERATE + ("--temperature=nan",),
         "temperature nan is not a finite number"),
    Case("generate_top_p_negative", "generate", GENERATE + ("--top-p=-0.5",),
         "top_p -0.5 must be > 0"),
    Case("generate_top_k_negative", "generate", GENERATE + ("--top-k=-1",),
         "top_k -1 must be an integer >= 0"),
    Case("generate_blend_weight_nan", "generate",
         GENERATE + ("--adapters={parent}", "--weights=nan"), "blend weight 0 nan is not a finite"),
    Case("generate_config_without_model", "generate",
         ("--inference-config={ic_nomodel}", "--output-dir={out}/s"), "has no field 'model'"),
    Case("generate_config_model_number", "generate",
         ("--inference-config={ic_number}", "--output-dir={out}/s"),
         "field 'model' must be a JSON string, got int 7"),
    Case("generate_primer_random_bytes", "generate", GENERATE + ("--primer={random_mid}",),
         "cannot read primer"),
    Case("generate_primer_tempo_0", "generate", GENERATE + ("--primer={tempo0_mid}",),
         "tempo0.mid"),
    # generate_song: settings, lyrics, the model's record, its base and its codec, the output
    Case("song_seconds_nan", "generate_song", SONG + ("--seconds=nan",),
         "--seconds nan is not a finite number"),
    Case("song_top_k_0", "generate_song", SONG + ("--top_k=0",), "--top_k 0 must be an integer"),
    Case("song_unknown_section_tag", "generate_song", SONG + ("--lyrics=[rap] yo",),
         "unknown section tag '[rap]'"),
    Case("song_lyrics_file_missing", "generate_song", SONG + ("--lyrics=@{out}/none.txt",),
         "none.txt does not exist"),
    Case("song_adapter_other_base", "generate_song",
         ("--adapter={song_foreign_adapter}",) + SONG[1:], "was trained on base 0123456789abcdef"),
    Case("song_other_codec", "generate_song", SONG + ("--codec={song_other_codec}",),
         "is not the one the training songs were tokenized with"),
    Case("song_model_without_record", "generate_song",
         ("--model={song_bare_model}",) + SONG[1:], "has no song_model.json beside it"),
    Case("song_prompt_without_condition", "generate_song",
         SONG + ("--prompt_audio={song_mid}",), "this model has no prompt_audio condition"),
    Case("song_output_under_a_file", "generate_song",
         SONG[:2] + ("--output={song_mid}/song.wav",), "is a file, not a folder"),
    # humanize_midi: broken MIDI in, a model that is not one
    Case("humanize_empty_midi", "humanize_midi", HUMANIZE + ("--input={empty_mid}",),
         "empty.mid: not a readable MIDI file"),
    Case("humanize_text_midi", "humanize_midi", HUMANIZE + ("--input={text_mid}",),
         "text.mid: not a readable MIDI file"),
    Case("humanize_random_midi", "humanize_midi", HUMANIZE + ("--input={random_mid}",),
         "random.mid: not a readable MIDI file"),
    Case("humanize_truncated_midi", "humanize_midi", HUMANIZE + ("--input={truncated_mid}",),
         "truncated.mid"),
    Case("humanize_zero_notes", "humanize_midi", HUMANIZE + ("--input={zero_notes_mid}",),
         "zero_notes.mid: no notes to humanise"),
    Case("humanize_tempo_0", "humanize_midi", HUMANIZE + ("--input={tempo0_mid}",), "tempo0.mid"),
    Case("humanize_huge_midi", "humanize_midi", HUMANIZE + ("--input={huge_mid}",), "huge.mid"),
    Case("humanize_pickled_model", "humanize_midi",
         ("--model={duv_pickled_lora}", "--output={out}/h/out.mid", "--input={song_mid}"),
         "this file needs pickle to load"),
    Case("humanize_pianoroll_without_notes", "humanize_midi",
         HUMANIZE + ("--input={song_mid}", "--pianoroll={out}/h/roll.png",
                     "--pianoroll_seconds=500,510"), "no notes between 500"),
    # train_duv / train_duv_lora: the config and the manifest before any window is written
    Case("duv_batch_0", "train_duv", DUV_DATA + ("--config.data.batch_size=0",),
         "config.data.batch_size must be >= 1, got 0"),
    Case("duv_batch_negative", "train_duv", DUV_DATA + ("--config.data.batch_size=-3",),
         "config.data.batch_size must be >= 1, got -3"),
    Case("duv_batch_over_large", "train_duv", DUV_DATA + ("--config.data.batch_size=100000",),
         "do not fill one batch of 100000"),
    Case("duv_epochs_0", "train_duv", DUV_DATA + ("--config.duv.epochs=0",),
         "duv.epochs must be >= 1, got 0"),
    Case("duv_unknown_key", "train_duv", DUV_DATA + ("--config.duv.epoch=3",),
         "has no field 'duv.epoch' (did you mean 'duv.epochs'?)"),
    Case("duv_adapter_name_escapes", "train_duv_lora",
         ("--config={repo}/configs/duv/guitar.py:tiny", "--workdir={out}/w",
          "--config.duv.bundle={duv_bundle}", "--config.duv.manifest={manifest}",
          "--config.duv.adapter_name=../../escaped"), "'../../escaped' must be a plain name"),
    Case("duv_manifest_bad_json", "train_duv", DUV + ("--config.duv.manifest={manifest_badjson}",),
         "manifest_badjson.jsonl:1: not valid JSON"),
    Case("duv_manifest_missing_field", "train_duv",
         DUV + ("--config.duv.manifest={manifest_missing}",), "row has no 'targets' key"),
    Case("duv_manifest_mistyped_field", "train_duv",
         DUV + ("--config.duv.manifest={manifest_mistyped}",),
         "notes.pitch must be a list of numbers"),
    Case("duv_manifest_duplicate_track", "train_duv",
         DUV + ("--config.duv.manifest={manifest_duplicate}",), "is also on line 1"),
    Case("duv_manifest_path_outside", "train_duv",
         DUV + ("--config.duv.manifest={manifest_outside}",),
         "file '../../../etc/passwd' points outside the performance cache"),
    # train (any family): ranks, batches and steps; tokens outside the vocabulary
    Case("train_rank_0", "train", TRAIN + ("--config.lora.rank=0",), "LoRA rank must be >= 1"),
    Case("train_rank_over_large", "train", TRAIN + ("--config.lora.rank=100000",),
         "LoRA rank 100000 of"),
    Case("train_batch_0", "train", TRAIN + ("--config.data.batch_size=0",),
         "config.data.batch_size must be >= 1, got 0"),
    Case("train_steps_negative", "train", TRAIN + ("--config.training.steps=-1",),
         "config.training.steps must be >= 1, got -1"),
    Case("train_steps_over_large", "train", TRAIN + ("--config.training.steps=10000000000",),
         "config.training.steps 10000000000 is more than the step counter holds"),
    Case("train_unknown_key", "train", TRAIN + ("--config.lora.rnak=4",), "'lora.rnak'"),
    Case("train_token_ids_outside_vocabulary", "train",
         TRAIN + ("--config.data.path={oob_npz}", "--config.data.synthetic_examples=0",
                  "--config.data.val_fraction=0.25", "--config.model.seq_len=16"),
         "array 'tokens' holds 1000000 at [3, 5]"),
    Case("train_batch_over_large", "train", TRAIN + ("--config.data.batch_size=100000",),
         "do not fill one batch of 100000"),
    # train_parent_adapter: the shorthand flags and the genre name
    Case("parent_rank_0", "train_parent_adapter", PARENT + ("--rank=0",), "rank 0 must be >= 1"),
    Case("parent_batch_0", "train_parent_adapter", PARENT + ("--batch-size=0",), "batch_size 0"),
    Case("parent_epochs_negative", "train_parent_adapter", PARENT + ("--epochs=-1",), "epochs -1"),
    Case("parent_epochs_over_large", "train_parent_adapter", PARENT + ("--epochs=10000000000",),
         "epochs 10000000000 must be <= 2147483647"),
    Case("parent_learning_rate_nan", "train_parent_adapter", PARENT + ("--learning-rate=nan",),
         "learning_rate must be a finite number, got nan"),
    Case("parent_alpha_inf", "train_parent_adapter", PARENT + ("--alpha=inf",),
         "alpha must be a finite number, got inf"),
    Case("parent_name_escapes", "train_parent_adapter",
         ("--parent=../x", "--pack={out}/no_pack", "--output-dir={out}/a"),
         "'../x' must be a plain name"),
]


# The rule for output paths, the same in every command: missing parent folders are created when
# the outputs are written, and a command's outputs appear together.
GOOD = [
    Case("merge_into_new_folders", "merge_adapters",
         ("--base-model={base}", "--parent-adapter={parent}", "--child-adapter={child}",
          "--output={out}/new/deeper/merged.safetensors", "--torch-output={out}/pt/merged.pt",
          "--create-config"), ""),
    Case("humanize_into_new_folders", "humanize_midi",
         HUMANIZE[:1] + ("--input={song_mid}", "--output={out}/new/deeper/out.mid",
                         "--pianoroll={out}/rolls/roll.png", "--pianoroll_seconds=0,4"), ""),
]
GOOD_OUTPUTS = {
    "merge_into_new_folders": {"new/deeper/merged.safetensors", "new/deeper/vocab.json",
                               "new/deeper/merged.json", "pt/merged.pt"},
    "humanize_into_new_folders": {"new/deeper/out.mid", "rolls/roll.png"},
}


def _files_under(folder: str) -> set[str]:
  return {os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs}


def _run(case: Case, files: dict, root: str) -> tuple[subprocess.CompletedProcess, set[str]]:
  out = os.path.join(root, "out", case.id)
  os.makedirs(out)
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
         "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
  done = subprocess.run([sys.executable, str(ROOT / "launch" / f"{case.script}.py"),
                         *case.argv(files, out)], cwd=out, env=env, capture_output=True,
                        text=True, timeout=600, check=False)
  return done, _files_under(out)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("bad_input"))
  files = bad_input_world.build(os.path.join(root, "world"), str(ROOT))
  before = _files_under(os.path.join(root, "world"))
  with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
    runs = dict(zip([c.id for c in GOOD + CASES],
                    pool.map(lambda c: _run(c, files, root), GOOD + CASES)))
  return runs, before, _files_under(os.path.join(root, "world"))


def test_inputs_are_untouched_and_nothing_was_unpickled(results):
  _, before, after = results
  assert after == before
  assert not [f for f in after if f.endswith("PWNED")]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_error_line(results, case):
  done, left = results[0][case.id]
  stderr = done.stderr
  assert done.returncode != 0, stderr[-3000:]
  assert "Traceback" not in stderr, stderr[-3000:]
  errors = [line for line in stderr.splitlines() if "error:" in line]
  assert len(errors) == 1, stderr[-3000:]
  assert errors[0].startswith(f"{case.script.replace('humanize_midi', 'humanize')}: error: "), (
      stderr[-3000:])
  assert case.expect in errors[0], errors[0]
  assert not left, (sorted(left), errors[0])


@pytest.mark.parametrize("case", GOOD, ids=[c.id for c in GOOD])
def test_outputs_create_their_folders_and_appear_together(results, case):
  done, left = results[0][case.id]
  assert done.returncode == 0, done.stderr[-3000:]
  assert left == GOOD_OUTPUTS[case.id]
