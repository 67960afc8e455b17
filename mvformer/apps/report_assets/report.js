// mvformer report: the alignment viewer. The reference video leads; every other video is moved to the frame its
// alignment path pairs with the reference's current frame. Frame f of a video at `fps` is shown from time f / fps
// to (f + 1) / fps, so a video is sought to the middle of a frame, (f + 0.5) / fps. Under a labelled video, the
// marker on its phase strip and the phase's name follow the frame it shows.
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("report-data").textContent);
  const videos = data.videos.map((_, index) => document.getElementById("video-" + index));
  const reference = videos[0];
  const scrub = document.getElementById("scrub");
  const playButton = document.getElementById("play");
  const readout = document.getElementById("readout");
  const nearestFrame = document.getElementById("nearest-frame");
  const nearestList = document.getElementById("nearest-list");
  const frameLabels = data.videos.map((_, index) => document.getElementById("frame-" + index));

  function frameAt(index) {
    const info = data.videos[index];
    const frame = Math.floor(videos[index].currentTime * info.fps + 1e-3);
    return Math.max(0, Math.min(info.frames - 1, frame));
  }

  function timeOf(index, frame) {
    return (frame + 0.5) / data.videos[index].fps;
  }

  function showPhase(index, frame) {
    const phases = data.videos[index].phases;
    if (!phases) { return; }
    const label = phases.labels[frame];
    document.getElementById("phase-" + index).textContent = label >= 0 ? phases.names[label] : "unlabelled";
    document.getElementById("swatch-" + index).style.background = label >= 0 ? phases.colours[label] : phases.unlabelled;
    document.getElementById("marker-" + index).style.left = (100 * (frame + 0.5) / phases.labels.length) + "%";
  }

  function showNearest(frame) {
    nearestFrame.textContent = frame;
    nearestList.replaceChildren(...data.nearest[frame].map(([index, match, distance]) => {
      const item = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = data.videos[index].name + " frame " + match;
      button.addEventListener("click", () => { reference.pause(); videos[index].currentTime = timeOf(index, match); });
      item.append(button, " d = " + distance.toFixed(3));
      return item;
    }));
  }

  let shownFrame = -1;
  function follow() {
    const frame = frameAt(0);
    scrub.value = frame;
    readout.textContent = "reference frame " + frame + " / " + (data.videos[0].frames - 1);
    frameLabels[0].textContent = "frame " + frame;
    showPhase(0, frame);
    for (let index = 1; index < videos.length; index++) {
      const match = data.mapping[index][frame];
      const target = timeOf(index, match);
      if (Math.abs(videos[index].currentTime - target) > 0.25 / data.videos[index].fps) {
        videos[index].currentTime = target;
      }
      frameLabels[index].textContent = "frame " + match;
      showPhase(index, match);
    }
    if (frame !== shownFrame) {
      shownFrame = frame;
      showNearest(frame);
    }
  }

  function seekReference(frame) {
    reference.pause();
    reference.currentTime = timeOf(0, Math.max(0, Math.min(data.videos[0].frames - 1, frame)));
  }

  function whilePlaying() {
    follow();
    if (!reference.paused && !reference.ended) {
      if (reference.requestVideoFrameCallback) {
        reference.requestVideoFrameCallback(whilePlaying);
      } else {
        window.requestAnimationFrame(whilePlaying);
      }
    }
  }

  reference.addEventListener("play", () => { playButton.textContent = "Pause"; whilePlaying(); });
  reference.addEventListener("pause", () => { playButton.textContent = "Play"; follow(); });
  reference.addEventListener("ended", () => { playButton.textContent = "Play"; follow(); });
  reference.addEventListener("seeked", follow);
  reference.addEventListener("loadeddata", follow);
  playButton.addEventListener("click", () => { if (reference.paused) { reference.play(); } else { reference.pause(); } });
  document.getElementById("back").addEventListener("click", () => seekReference(frameAt(0) - 1));
  document.getElementById("forward").addEventListener("click", () => seekReference(frameAt(0) + 1));
  scrub.addEventListener("input", () => seekReference(Number(scrub.value)));
  document.addEventListener("keydown", (event) => {
    if (event.key === "ArrowLeft") { seekReference(frameAt(0) - 1); event.preventDefault(); }
    if (event.key === "ArrowRight") { seekReference(frameAt(0) + 1); event.preventDefault(); }
  });
  showNearest(0);
  window.mvformerReport = { data: data, seekReference: seekReference, frameAt: frameAt };
})();
