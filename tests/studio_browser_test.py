"""The studio's page in headless Chromium (Debian's, driven by Playwright through its executable
path): build datasets in tab 1 from the corpus, a folder on the server and the bundled
performances; in tab 2 upload two WAV files, analyse them, edit cells and prepare a song dataset;
see the song option of tab 3 off with its reason (no --song_base here), train while the step
advances, stop and resume with the buttons, see the loss plot draw, then listen to the adapter
against the base and delete it in tab 4. What stop and resume keep (a bit-identical adapter) is
tested through the API in studio_test.py.
With STUDIO_SCREENSHOTS=docs/studio the four tabs' screenshots are written there (the README's)."""

import os
import shutil
import wave

import numpy as np

import pytest

import studio_testlib
import studio_sources_test

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (the studio extra)")
if not os.path.exists(CHROMIUM):
  pytest.skip("no chromium (scripts/setup.sh installs Debian's)", allow_module_level=True)


def _progress(page) -> str:
  return page.inner_text("#progress-text")


def test_four_tabs_build_train_listen_delete(tmp_path):
  shots = os.environ.get("STUDIO_SCREENSHOTS") or str(tmp_path)
  seconds = np.arange(4 * 8000) / 8000  # 4 s of a tone pulsing at 2 Hz
  for name, hz in (("take.wav", 440), ("take2.wav", 330)):
    tone = 0.3 * np.sin(2 * np.pi * hz * seconds) * (np.sin(2 * np.pi * 2 * seconds) > 0)
    with wave.open(str(tmp_path / name), "wb") as w:
      w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000)
      w.writeframes((tone * 32767).astype("<i2").tobytes())
  (tmp_path / "midi").mkdir()
  for name, data in studio_testlib.jig_files(4):
    (tmp_path / "midi" / name).write_bytes(data)
  pop909 = os.path.isdir(os.path.join(studio_sources_test.PERFORMANCES, "pop909"))
  root, port = tmp_path / "root", studio_testlib.free_port()
  server = studio_testlib.server(root, port)
  try:
    with sync_api.sync_playwright() as p:
      browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox",
                                  "--autoplay-policy=no-user-gesture-required"])
      page = browser.new_page(viewport={"width": 1100, "height": 800})
      page.set_default_timeout(300_000)
      page.goto(f"http://127.0.0.1:{port}/")

      page.fill("#build-form [name=name]", "O'Neill's tunes")
      page.select_option("#build-form [name=source]", "corpus")
      page.fill("#build-form [name=style]", "celtic_fiddle")
      page.fill("#build-form [name=max_pieces]", "5")
      page.click("#build-form button")
      page.wait_for_selector("#dataset-table td.state-ready")
      page.fill("#build-form [name=name]", "my jigs")  # a folder on the server
      page.select_option("#build-form [name=source]", "folder")
      page.fill("#build-form [name=style]", "celtic/jig")
      page.fill("#build-form [name=path]", str(tmp_path / "midi"))
      page.click("#build-form button")
      if pop909:  # the bundled performances (scripts/setup.sh fetches them)
        page.fill("#build-form [name=name]", "pop songs")
        page.select_option("#build-form [name=source]", "performances")
        page.select_option("#build-form [name=collection]", "pop909")
        page.fill("#build-form [name=style]", "pop")
        page.click("#build-form button")
      page.wait_for_function(f"() => document.querySelectorAll('#dataset-table td.state-ready')"
                             f".length === {3 if pop909 else 2}")
      table = page.inner_text("#dataset-table tbody")
      assert "celtic_fiddle" in table and "celtic/jig" in table and (not pop909 or "pop" in table)
      page.screenshot(path=os.path.join(shots, "tab1_datasets.png"))

      page.click("#tabs [data-tab=audio]")
      page.set_input_files("#audio-form [name=files]",
                           [str(tmp_path / "take.wav"), str(tmp_path / "take2.wav")])
      page.click("#audio-form button")
      page.wait_for_function("() => document.querySelector('#notice').innerText"
                             ".includes('analysed 2 files')")
      assert page.inner_text("#audio-table tbody tr td:nth-child(3)")  # the BPM lora_jax.audio found
      page.fill("#audio-table tbody tr td:nth-child(2)", "jig")  # the user corrects the genre
      assert page.inner_text("#audio-table tbody tr td:nth-child(2)") == "jig"
      page.fill("#audio-table tbody tr td:nth-child(8)", "[verse] la la [chorus] oh")  # lyrics
      page.fill("#audio-dataset-form [name=name]", "my takes")
      page.fill("#audio-dataset-form [name=style]", "tones")
      page.select_option("#audio-dataset-form [name=kind]", "song")
      page.click("#audio-dataset-form button")
      page.wait_for_function("() => document.querySelector('#notice').innerText"
                             ".includes('dataset my takes ready: 2 files')")
      page.fill("#audio-table tbody tr td:nth-child(8)", "[verse] la [chorus] oh oh")  # edited
      page.click("#audio-dataset-form [name=name]")  # the cell loses focus: saved to the clip
      page.wait_for_function("() => document.querySelector('#notice').innerText"
                             ".includes('saved lyrics of take.wav')")
      saved = page.evaluate("""async () => {
        const rows = await (await fetch('/api/training/datasets')).json();
        const id = rows.find((d) => d.name === 'my takes').id;
        const files = (await (await fetch(`/api/training/datasets/${id}`)).json()).files;
        return files.find((f) => f.name === 'take.wav').meta; }""")
      assert saved["lyrics"] == "[verse] la [chorus] oh oh" and saved["genre"] == "jig", saved
      page.screenshot(path=os.path.join(shots, "tab2_audio.png"))

      page.click("#tabs [data-tab=train]")
      assert page.is_disabled("#train-form [name=type] option[value=song]")
      assert "--song_base" in page.inner_text("#song-base-note")
      for field, value in (("epochs", "30"), ("batch_size", "4"), ("seq_len", "32"),
                           ("rank", "2"), ("alpha", "4"), ("learning_rate", "0.01")):
        page.fill(f"#train-form [name={field}]", value)
      page.click("#train-form button")
      page.wait_for_function("() => /running, step [1-9]/.test("
                             "document.getElementById('progress-text').textContent)")
      page.click("#stop")  # SIGTERM: the run checkpoints and exits
      page.wait_for_function("() => document.getElementById('progress-text').textContent"
                             ".includes('stopped')")
      page.click("#resume")
      page.wait_for_function("() => /running, step [1-9]/.test("
                             "document.getElementById('progress-text').textContent)")
      page.wait_for_function("() => document.getElementById('progress-text').textContent"
                             ".includes('finished')")
      drawn = page.evaluate("""() => { const c = document.getElementById('loss-plot');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n; }""")
      assert drawn > 500  # axes, two series and labels
      page.screenshot(path=os.path.join(shots, "tab3_train.png"))

      page.click("#tabs [data-tab=adapters]")
      page.wait_for_selector("#adapter-table tbody tr")
      assert "celtic_fiddle" in page.inner_text("#adapter-table tbody")
      page.click("#adapter-table tbody tr button:text('Listen')")
      for player in ("listen-adapter", "listen-base"):  # both WAVs load and decode in the page
        page.wait_for_function(f"() => document.getElementById('{player}').duration > 1")
      assert page.evaluate("() => !document.getElementById('listen-adapter').error")
      page.screenshot(path=os.path.join(shots, "tab4_adapters.png"))
      page.click("#adapter-table tbody tr button:text('Delete')")
      page.wait_for_function("() => !document.querySelector('#adapter-table tbody tr')")
      browser.close()
  finally:
    server.kill()
    server.wait()
