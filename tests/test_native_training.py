"""Training from videos with `data.frames: native` (the FineGym and Kinetics-400 setting): frames decoded at their
own size, cropped there, resized to the model's input; videos of several aspect ratios, none square, under both
sampling rules."""

import numpy as np
import pytest

from mvformer.config import load_config
from mvformer.data.video import write_video
from mvformer.runs import read_log
from mvformer.train.loop import train

SIZES = ((36, 64), (48, 36), (40, 72), (30, 40))  # (height, width): 16:9, 3:4, 9:16-ish, 4:3


def moving_square_video(height: int, width: int, frames: int, seed: int) -> np.ndarray:
    """uint8 (T, H, W, 3): a bright square crossing a noisy background, so that frames differ in time."""
    rng = np.random.default_rng(seed)
    video = rng.integers(0, 60, size=(frames, height, width, 3), dtype=np.uint8)
    side = min(height, width) // 3
    for t in range(frames):
        left = (width - side) * t // max(frames - 1, 1)
        video[t, (height - side) // 2:(height + side) // 2, left:left + side] = 230
    return video


@pytest.fixture(scope="module")
def native_root(tmp_path_factory):
    """A generic-layout dataset of 4 train and 2 val videos of the sizes above (labels: first and second half)."""
    root = tmp_path_factory.mktemp("native")
    (root / "labels").mkdir()
    (root / "splits").mkdir()
    names = []
    for index, (height, width) in enumerate(SIZES + SIZES[:2]):
        name, length = f"clip{index}", 18 + 3 * index
        write_video(root / "videos" / f"{name}.mp4", moving_square_video(height, width, length, index))
        labels = [0] * (length // 2) + [1] * (length - length // 2)
        (root / "labels" / f"{name}.csv").write_text("frame,label\n" + "".join(
            f"{frame},{label}\n" for frame, label in enumerate(labels)))
        names.append(name)
    (root / "splits" / "train.txt").write_text("\n".join(names[:4]) + "\n")
    (root / "splits" / "val.txt").write_text("\n".join(names[4:]) + "\n")
    return root


@pytest.mark.parametrize("sampling", ["whole_video", "window"])
def test_native_frames_train_from_videos_under_both_sampling_rules(native_root, tmp_path, sampling):
    config = load_config("demo", [f"data.root={native_root}", "data.frames=native", f"data.sampling={sampling}",
                                  "data.image_size=32", "data.clip_len=8", "data.feature_cache=none",
                                  "train.epochs=2", "train.batch_size=2", f"train.output_dir={tmp_path / 'run'}",
                                  "train.eval_every=2"])
    assert config.data.decode_size is None  # frames reach the loader at their own sizes

    result = train(config)

    losses = [record.loss for record in read_log(result.run_dir).epochs]
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert (result.run_dir / "checkpoint.pt").is_file()
    assert result.final_metrics is not None and result.final_metrics["kendalls_tau"] is not None
