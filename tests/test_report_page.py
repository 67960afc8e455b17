"""`mvformer report` in a real browser: headless Chromium (Debian's chromium and chromium-driver packages), driven
through chromedriver's W3C WebDriver endpoints with the standard library. The page is loaded from file://; the test
checks the metrics table, that every video decodes and shows a picture, that seeking the reference moves another
video to the frame its alignment path names and its phase label to that frame's, that nothing overflows an 800 px
window, and takes screenshots at 800 and 1400 px (kept in $MVFORMER_KEEP_SCREENSHOTS when that names a folder).
Skipped only where no Chromium is installed."""

import base64
import html
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import av
import numpy as np
import pytest

from bad_inputs import one_line_failure
from tiny_runs import trained_demo_run
from mvformer.apps import report
from mvformer.apps.align import shown_frames
from mvformer.apps.videos import embed
from mvformer.apps.report import encode_for_browser
from mvformer.checkpoint import load_model
from mvformer.data.video import write_video
from mvformer.viz import MAX_DISPLAY_ASPECT
from mvformer.cli import main
from mvformer.config import load_config
from mvformer.data.datasets import VideoDataset
from mvformer.evaluation.alignment import align
from mvformer.evaluation.time_only import no_gain_line, time_only_files, time_only_metrics
from mvformer.train.loop import train

CHROMIUM_BINARIES = ("/usr/lib/chromium/chromium", "chromium", "chromium-browser", "google-chrome")
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--no-first-run", "--mute-audio", "--autoplay-policy=no-user-gesture-required",
                  "--window-size=1280,1800")


def find_chromium() -> tuple[str, str] | None:
    """(browser binary, chromedriver) when both are installed, else None."""
    browser = next((found for name in CHROMIUM_BINARIES if (found := shutil.which(name))), None)
    driver = shutil.which("chromedriver") or shutil.which("/usr/lib/chromium/chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A demo model trained for three epochs on tiny synthetic videos, with its training log and evaluation."""
    return trained_demo_run(tmp_path_factory.mktemp("report"), eval_every=3)


@pytest.fixture(scope="module")
def built(trained_run, tmp_path_factory):
    run, root = trained_run
    out = tmp_path_factory.mktemp("page") / "report"
    videos = sorted((root / "videos").glob("pour_00[4-6].mp4"))  # the validation videos
    assert main(["report", str(run), "--videos", *map(str, videos), "--out", str(out), "--device", "cpu",
                 "--no-progress"]) == 0
    return run, root, out, videos


def test_report_folder_holds_the_page_its_data_and_browser_ready_videos(built):
    run, root, out, videos = built
    page = (out / "index.html").read_text()
    assert "https://" not in page and "http://" not in page  # nothing is fetched
    data = json.loads((out / "report.json").read_text())
    trained = load_model(run, "cpu")
    embeddings = [embed(trained, v).embeddings for v in videos]
    for index, (video, embs) in enumerate(zip(videos, embeddings)):
        listed = data["videos"][index]
        assert listed["frames"] == len(embs) and listed["fps"] == 25.0
        with av.open(str(out / listed["file"])) as container:
            stream = container.streams.video[0]
            assert (stream.codec_context.name, stream.codec_context.pix_fmt) == ("h264", "yuv420p")
            assert stream.codec_context.height == 192 and stream.codec_context.width % 2 == 0
            times = np.array([frame.time for frame in container.decode(video=0)])
        np.testing.assert_allclose(times, np.arange(len(embs)) / 25.0, atol=1e-6)  # frame i from time i / fps
        if index:
            expected = shown_frames(*align(embeddings[0], embs, "dtw"))
            np.testing.assert_array_equal(data["mapping"][index], expected)
    assert (out / "videos" / "00.mp4").read_bytes()[:64].find(b"ftyp") >= 0
    header = (out / "videos" / "00.mp4").read_bytes()[:4096]
    assert b"moov" in header  # the index comes before the frames (+faststart)

    classes = (root / "classes.txt").read_text().split()
    for listed, video in zip(data["videos"], videos):
        labels = [classes.index(row.split(",")[1]) for row in
                  (root / "labels" / f"{video.stem}.csv").read_text().splitlines()[1:]]
        assert listed["phases"]["labels"] == labels and listed["phases"]["names"] == classes
    assert f"<h1>{root.name}: mvformer report</h1>" in page  # named by the data, not the config ("demo")
    model_row = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["eval"]
    assert data["metrics"]["model"] == model_row
    train_set, val_set = VideoDataset(root, "train"), VideoDataset(root, "val")
    labels = ([r.labels for r in train_set.records], [r.labels for r in val_set.records])
    config = trained.config
    expected_time_only = time_only_metrics(*labels, train_set.num_classes, config.model.hidden_size,
                                           config.data.clip_len, fractions=config.eval.fractions, ks=config.eval.ks)
    assert data["metrics"]["time_only"] == expected_time_only
    verdict = no_gain_line(model_row, expected_time_only)  # three epochs on four videos: time alone scores higher
    assert verdict is not None and html.escape(verdict) in page
    for asset in ("report.css", "report.js", "training_curves.png", "retrieval.png", "attention/attention.mp4",
                  "attention/attention_strip.png"):
        assert (out / asset).stat().st_size > 0, asset


def test_the_model_row_comes_from_the_evaluation_folder_when_there_is_one(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run[0], run)
    assert main(["evaluate", str(run), "--no-progress"]) == 0
    evaluation = json.loads((run / "eval" / "metrics.json").read_text())
    config = load_model(run, "cpu").config
    metrics = report.run_metrics(run, config)
    assert metrics["model"] == evaluation["mean"] and "eval/metrics.json, mean over 1 dataset" in metrics["source"]
    files = [run / "eval" / f"{name}.npz" for name in evaluation["datasets"]]
    expected = time_only_files(files, config.model.hidden_size, config.data.clip_len, fractions=config.eval.fractions,
                               ks=config.eval.ks)
    assert metrics["time_only"] == expected["mean"]




def test_a_page_without_log_evaluation_or_attention_and_one_line_errors(trained_run, tmp_path, capsys):
    _, root = trained_run
    config = load_config("demo", [f"data.root={root}", "data.clip_len=16", "model.pooling=cls", "model.num_tokens=1",
                                  "train.epochs=1", "train.batch_size=2", f"train.output_dir={tmp_path / 'cls'}",
                                  "train.eval_every=1000"])
    run = train(config).run_dir
    capsys.readouterr()  # training's own notes (its evaluation's warnings) are not the command's output
    (run / "metrics.jsonl").unlink()
    out = tmp_path / "page"
    index = report.build_report(load_model(run, "cpu"), out, frame=0)  # the run's first validation videos
    page = index.read_text()
    assert "no evaluation found" in page and "No training log" in page and "no spatial attention" in page
    assert "<table" not in page and not (out / "attention").exists()
    data = json.loads((out / "report.json").read_text())
    assert [v["name"] for v in data["videos"]] == [r.name for r in VideoDataset(root, "val").records]
    assert data["videos"][0]["phases"]["labels"] == VideoDataset(root, "val").records[0].labels.tolist()
    assert f"<h1>{root.name}: mvformer report</h1>" in page
    assert data["metrics"]["model"] is None and data["retrieval_frame"] == 0

    one_line_failure(["report", str(run), "--out", str(out)], capsys, "already exists", "--overwrite")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's")
    one_line_failure(["report", str(run), "--out", str(mine), "--overwrite"], capsys, "not an earlier output")
    video = str(root / "videos" / "pour_004.mp4")
    fresh = tmp_path / "fresh"
    one_line_failure(["report", str(run), "--videos", video, "--out", str(fresh)], capsys, "at least two videos")
    one_line_failure(["report", str(run), "--videos", video, video, "--out", str(fresh), "--frame", "999"], capsys,
                     "frame 999 out of range")
    assert not fresh.exists() and not list(tmp_path.glob(".fresh.*"))


class WebDriver:
    """The few W3C WebDriver commands the test needs, over HTTP to a local chromedriver."""

    def __init__(self, browser: str, driver: str, profile: Path):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.process = subprocess.Popen([driver, f"--port={port}"], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        self.base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                self._call("GET", "/status")
                break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        options = {"binary": browser, "args": [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]}
        session = self._call("POST", "/session", {"capabilities": {"alwaysMatch": {
            "browserName": "chrome", "goog:chromeOptions": options}}})
        self.session = f"/session/{session['sessionId']}"

    def _call(self, method: str, path: str, body: dict | None = None):
        request = urllib.request.Request(self.base + path, method=method,
                                         data=None if body is None else json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.loads(response.read())["value"]
        except urllib.error.HTTPError as error:
            raise AssertionError(f"WebDriver {method} {path}: {error.read()[:500]!r}") from None

    def open(self, url: str) -> None:
        self._call("POST", f"{self.session}/url", {"url": url})

    def run(self, script: str, *args):
        """Run an async script: its last argument is the callback that returns its result."""
        return self._call("POST", f"{self.session}/execute/async", {"script": script, "args": list(args)})

    def resize(self, width: int, height: int) -> None:
        self._call("POST", f"{self.session}/window/rect", {"width": width, "height": height})

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self._call("GET", f"{self.session}/screenshot")))

    def close(self) -> None:
        try:
            self._call("DELETE", self.session)
        finally:
            self.process.terminate()
            self.process.wait(timeout=10)


VIDEO_STATES = """
const done = arguments[arguments.length - 1];
const deadline = Date.now() + 15000;
(function poll() {
  const states = [...document.querySelectorAll("video")].map((v) => ({id: v.id, ready: v.readyState,
    width: v.videoWidth, error: v.error ? v.error.code : null}));
  if (states.every((s) => s.ready >= 2 || s.error) || Date.now() > deadline) { done(states); }
  else { setTimeout(poll, 50); }
})();
"""

SEEK_AND_READ = """
const [frame, follower, done] = arguments;
const report = window.mvformerReport;
const video = document.getElementById("video-" + follower);
const expected = (report.data.mapping[follower][frame] + 0.5) / report.data.videos[follower].fps;
report.seekReference(frame);
const deadline = Date.now() + 10000;
(function poll() {
  const reference = document.getElementById("video-0");
  const settled = !reference.seeking && !video.seeking && report.frameAt(0) === frame
    && Math.abs(video.currentTime - expected) < 0.5 / report.data.videos[follower].fps;
  if (settled || Date.now() > deadline) {
    done({reference: reference.currentTime, follower: video.currentTime,
          caption: document.getElementById("frame-" + follower).textContent,
          slider: Number(document.getElementById("scrub").value),
          nearest: document.getElementById("nearest-frame").textContent,
          phases: [0, follower].map((index) => document.getElementById("phase-" + index).textContent),
          markers: [0, follower].map((index) => document.getElementById("marker-" + index).style.left)});
  } else { setTimeout(poll, 20); }
})();
"""


LAYOUT = """
const done = arguments[arguments.length - 1];
requestAnimationFrame(() => requestAnimationFrame(() => {
  const box = document.querySelector(".table-wrap");
  const strips = [...document.querySelectorAll(".phase-strip")];
  done({window: document.documentElement.clientWidth, page: document.documentElement.scrollWidth,
        box: box.clientWidth, table: box.scrollWidth, height: document.documentElement.scrollHeight,
        strips: [strips.length, strips.filter((strip) => strip.getBoundingClientRect().width > 0).length]});
}));
"""


def test_the_page_in_headless_chromium(built, tmp_path):
    found = find_chromium()
    if found is None:
        pytest.skip("no Chromium and chromedriver installed (Debian: apt-get install chromium chromium-driver)")
    _, _, out, _ = built
    data = json.loads((out / "report.json").read_text())
    browser = WebDriver(*found, tmp_path / "profile")
    try:
        browser.open((out / "index.html").resolve().as_uri())
        table = browser.run("arguments[0]([...document.querySelectorAll('table.metrics tr')].map("
                            "(row) => [...row.children].map((cell) => cell.textContent)));")
        assert [row[0] for row in table] == ["model", "this model", report.TIME_ONLY_LABEL]
        model_row = data["metrics"]["model"]
        assert table[1][1:] == [f"{model_row['classification'][f]:.4f}" for f in ("0.1", "0.5", "1.0")] + [
            f"{model_row['progression'][f]:.4f}" for f in ("0.1", "0.5", "1.0")] + [
            f"{model_row['kendalls_tau']:.4f}"] + [f"{model_row['retrieval'][k]:.4f}" for k in ("5", "10", "15")]

        states = browser.run(VIDEO_STATES)
        assert len(states) == len(data["videos"]) + 1  # the viewer's videos and the attention animation
        for state in states:
            assert state["error"] is None and state["ready"] >= 2 and state["width"] > 0, state

        lengths = [video["frames"] for video in data["videos"]]
        for frame in (lengths[0] - 1, lengths[0] // 2, 3):
            for follower in range(1, len(lengths)):
                seen = browser.run(SEEK_AND_READ, frame, follower)
                fps = data["videos"][follower]["fps"]
                target = data["mapping"][follower][frame]
                assert abs(seen["follower"] * fps - (target + 0.5)) <= 0.5, (frame, follower, seen)
                assert min(int(seen["reference"] * data["videos"][0]["fps"]), lengths[0] - 1) == frame  # the end
                assert seen["caption"] == f"frame {target}" and seen["slider"] == frame
                assert seen["nearest"] == str(frame)
                shown = [(0, frame), (follower, target)]  # the phase under each video is that of the frame it shows
                phases = [data["videos"][i]["phases"] for i, _ in shown]
                assert seen["phases"] == [p["names"][p["labels"][f]] for p, (_, f) in zip(phases, shown)]
                # the marker sits mid-frame along the strip; CSS keeps six significant digits of a percentage
                markers = [float(left.removesuffix("%")) for left in seen["markers"]]
                assert markers == pytest.approx([100 * (f + 0.5) / lengths[i] for i, f in shown], abs=1e-3)
        kept = os.environ.get("MVFORMER_KEEP_SCREENSHOTS")
        for width in (800, 1400):
            browser.resize(width, 1000)
            layout = browser.run(LAYOUT)
            if width == 800:  # nothing overflows: not the page, not the metrics table inside its scroll box
                assert layout["page"] <= layout["window"] and layout["table"] <= layout["box"], layout
            assert layout["strips"] == [len(lengths), len(lengths)], layout  # every video's phase strip is drawn
            browser.resize(width, layout["height"] + 200)
            screenshot = tmp_path / f"report-{width}.png"
            browser.screenshot(screenshot)
            assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 10_000
            if kept:
                shutil.copy(screenshot, Path(kept) / screenshot.name)
    finally:
        browser.close()


def test_a_very_wide_video_is_squeezed_to_a_frame_x264_accepts(tmp_path):
    """A 3000x20 strip at the report's 192 px would be 28,800 px wide, which x264 refuses; it is shown at the
    widest aspect the pictures allow."""
    strip = np.random.default_rng(0).integers(0, 255, size=(6, 20, 3000, 3), dtype=np.uint8)
    write_video(tmp_path / "strip.mp4", strip)
    assert encode_for_browser(tmp_path / "strip.mp4", tmp_path / "out.mp4", 192, 25) == 6
    with av.open(str(tmp_path / "out.mp4")) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.width, stream.codec_context.height) == (192 * MAX_DISPLAY_ASPECT, 192)
