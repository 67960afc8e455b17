"""Bad inputs to the own-video commands (embed, align, retrieve, attention, progress) and evaluate-embeddings: each
gives exit status 2 and one line naming the culprit, and changes no file (the whole fixture folder is watched:
inputs, earlier outputs, and the places outputs would go).

Each case is built from one shared fixture folder by a function in CASES, keyed by the case's name."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from bad_inputs import Case, run_case
from PIL import Image
from test_apps import write_checkpoint
from test_evaluate_embeddings import make_dataset, write_npz

from mvformer import viz
from mvformer.apps.retrieve import MAX_K
from mvformer.apps.videos import DISPLAY_HEIGHTS
from mvformer.checkpoint import export_checkpoint
from mvformer.cli import build_parser
from mvformer.data.datasets import MAX_CLASSES
from mvformer.data.synthetic import generate_pouring_dataset
from mvformer.data.video import read_video, write_video


class World:
    """Every input the cases use, made once under one folder `base` (which every case watches)."""

    def __init__(self, base: Path):
        self.base = base
        self.root = generate_pouring_dataset(base / "data", num_train=4, num_val=2, size=64, min_frames=16,
                                             max_frames=24, seed=0)
        self.videos = sorted((self.root / "videos").glob("*.mp4"))
        self.v0, self.v1 = map(str, self.videos[:2])
        self.ckpt = str(write_checkpoint(base / "run" / "checkpoint.pt", self.root))
        self.cls_ckpt = str(write_checkpoint(base / "cls" / "checkpoint.pt", self.root, "model.pooling=cls",
                                             "model.num_tokens=1"))
        self.nan_ckpt = self._nan_checkpoint()
        self.export = str(export_checkpoint(self.ckpt, base / "export"))
        self.garbage_ckpt = self._write(base / "garbage.pt", bytes(range(256)) * 8)
        self.inputs = base / "in"
        self.broken = self._write(self.inputs / "broken.mp4", b"\x00not a video" * 100)
        self.single = str(self.inputs / "single.mp4")
        write_video(self.single, read_video(self.videos[0])[:1])
        self.frames = self._frame_folder(self.inputs / "frames", range(5))
        self.gap = self._frame_folder(self.inputs / "gap", [0, 1, 3])
        self.mixed = self.inputs / "mixed"  # a good video, then (in name order) a frame folder with a corrupt image
        self.mixed.mkdir()
        shutil.copy(self.videos[0], self.mixed / "a_good.mp4")
        self._frame_folder(self.mixed / "b_corrupt", range(4))
        (self.mixed / "b_corrupt" / "frame_0002.png").write_bytes(b"not a png")
        self.empty = self.inputs / "empty"
        self.empty.mkdir()
        (self.inputs / "twin").mkdir()
        self.twin = str(shutil.copy(self.videos[0], self.inputs / "twin" / self.videos[0].name))
        self.text = self._write(self.inputs / "notes.txt", b"notes\n")
        self.two_lines = self._write(self.inputs / "bad\nname.mp4", b"\x00not a video" * 100)
        self.long_name = str(self.inputs / ("x" * 300 + ".mp4"))  # longer than a file name may be
        (self.inputs / "loop_a").symlink_to(self.inputs / "loop_b")
        (self.inputs / "loop_b").symlink_to(self.inputs / "loop_a")
        (self.inputs / "link.mp4").symlink_to(self.videos[0])
        self.config_video = str(shutil.copy(self.videos[0], self.inputs / "config.mp4"))  # embeds to config.json
        self.out = base / "out"  # earlier outputs, which no failed command may touch
        self._write(self.out / "embs" / f"{self.videos[0].stem}.npy", b"earlier")
        for name in ("earlier.gif", "earlier_cost.png", "sheet.csv", "plot.csv", "scores.json"):
            self._write(self.out / name, b"earlier")
        self._write(self.out / "attention" / "attention_strip.png", b"earlier")
        (self.out / "folder.gif").mkdir()
        self.refs = {kind: self._reference(kind) for kind in ("one_phase", "unlabelled", "no_labels", "gap", "short",
                                                              "alone")}
        self.npz = self._npz_files()

    def _write(self, path: Path, data: bytes) -> str:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return str(path)

    def _frame_folder(self, folder: Path, numbers) -> str:
        folder.mkdir(parents=True)
        frames = read_video(self.videos[0], size=32)
        for number in numbers:
            Image.fromarray(frames[number]).save(folder / f"frame_{number:04d}.png")
        return str(folder)

    def _nan_checkpoint(self) -> str:
        path = write_checkpoint(self.base / "nan" / "checkpoint.pt", self.root)
        state = torch.load(path, weights_only=True)
        first = next(key for key, value in state["model"].items() if value.is_floating_point())
        state["model"][first].view(-1)[0] = float("nan")
        torch.save(state, path)
        return str(path)

    def _reference(self, kind: str) -> str:
        """A copy of the dataset whose labels are broken in one way."""
        root = shutil.copytree(self.root, self.base / f"ref_{kind}")
        if kind == "no_labels":
            shutil.rmtree(root / "labels")
        for index, path in enumerate(sorted((root / "labels").glob("*.csv")) if kind != "no_labels" else []):
            labels = [row.split(",")[1] for row in path.read_text().splitlines()[1:]]
            if kind == "one_phase":
                labels = ["approach"] * len(labels)  # classes.txt lists four phases
            elif kind == "unlabelled":
                labels = ["-1"] * len(labels)
            elif kind == "gap" and index == 1:  # one video without 'tilt', which the others hold
                labels = ["approach" if label == "tilt" else label for label in labels]
            elif kind == "short" and index == 1:  # a row fewer than the video has frames
                labels = labels[:-1]
            elif kind == "alone" and index > 0:  # only the first video is labelled
                labels = ["-1"] * len(labels)
            path.write_text("frame,label\n" + "".join(f"{frame},{label}\n" for frame, label in enumerate(labels)))
        return str(root)

    def _npz_files(self) -> dict[str, str]:
        folder = self.base / "npz"
        folder.mkdir()
        dataset = make_dataset(7)
        train_embs, train_labels = np.concatenate(dataset[0]), np.concatenate(dataset[1])
        frames = len(train_embs)
        nan, inf, huge = train_embs.copy(), train_embs.copy(), train_embs.copy()
        nan[3, 1], inf[5, 0], huge[2, 2] = np.nan, -np.inf, 1e300
        big_label, low_label = train_labels.copy(), train_labels.copy()
        big_label[4], low_label[4] = 2**40, -5
        variants = {
            "good": {},
            "no_values": {"train_embs": np.zeros((frames, 0), dtype=np.float32)},  # (N, 0)
            "big_label": {"train_labels": big_label},
            "low_label": {"train_labels": low_label},
            "wrapping_lens": {"train_lens": np.array([2**63 - 1, 2**63 - 1, frames + 2])},  # int64 sum wraps to N
            "negative_lens": {"train_lens": np.array([frames + 3, -3])},
            "nan": {"train_embs": nan},
            "inf": {"train_embs": inf},
            "huge_value": {"train_embs": huge},
            "complex": {"train_embs": train_embs.astype(np.complex64)},
            "bool_labels": {"train_labels": train_labels > 0},
            "labels_2d": {"train_labels": train_labels[:, None]},
            "val_unlabelled": {"val_labels": np.full(sum(map(len, dataset[3])), -1)},
            "empty_lens": {"train_lens": np.zeros(0, dtype=np.int64)},
        }
        paths = {name: str(write_npz(folder / f"{name}.npz", dataset, **arrays)) for name, arrays in variants.items()}
        objects = folder / "objects.npz"
        arrays = dict(np.load(paths["good"]))
        arrays["train_lens"] = np.array([[1, 2], "x"], dtype=object)
        np.savez(objects, **arrays)
        paths["objects"] = str(objects)
        return paths


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return World(tmp_path_factory.mktemp("bad_inputs_apps"))


def case(name, args, *fragments):
    return lambda w: Case(name, [*args(w), "--no-progress"], fragments)


def no_cuda(build):
    """A case that only makes sense on a machine without CUDA."""
    return lambda w: None if torch.cuda.is_available() else build(w)


O = "--out"
CASES = {}


def add(name, args, *fragments):
    CASES[name] = case(name, args, *fragments)


# --- every command: the model source ---------------------------------------------------------------------------
for command, extra in {"embed": lambda w: [w.v0, O, f"{w.out}/e"],
                       "align": lambda w: [w.v0, w.v1, O, f"{w.out}/a.gif"],
                       "retrieve": lambda w: ["--query", f"{w.v0}:1", "--gallery", w.v1, O, f"{w.out}/r.png"],
                       "attention": lambda w: [w.v0, O, f"{w.out}/att"],
                       "progress": lambda w: ["--reference", str(w.root), "--video", w.v0, O, f"{w.out}/p.png"]}.items():
    add(f"{command}: NaN weights", lambda w, c=command, e=extra: [c, w.nan_ckpt, *e(w)], "NaN or Inf")
    add(f"{command}: garbage checkpoint", lambda w, c=command, e=extra: [c, w.garbage_ckpt, *e(w)], "garbage.pt",
        "not a readable")
    add(f"{command}: missing checkpoint", lambda w, c=command, e=extra: [c, f"{w.base}/nowhere.pt", *e(w)],
        "nowhere.pt", "not found")
CASES["embed: --device cuda without CUDA"] = no_cuda(
    case("embed: --device cuda without CUDA", lambda w: ["embed", w.ckpt, w.v0, O, f"{w.out}/e", "--device", "cuda"],
         "--device cuda", "no CUDA"))

# --- embed -----------------------------------------------------------------------------------------------------
add("embed: missing video", lambda w: ["embed", w.ckpt, f"{w.inputs}/absent.mp4", O, f"{w.out}/e"], "absent.mp4",
    "no such")
add("embed: undecodable video", lambda w: ["embed", w.ckpt, w.v0, w.broken, O, f"{w.out}/e"], "broken.mp4",
    "cannot decode")
add("embed: corrupt image in the second video", lambda w: ["embed", w.ckpt, str(w.mixed), O, f"{w.out}/e"],
    "b_corrupt", "cannot decode")
add("embed: one-frame video", lambda w: ["embed", w.ckpt, w.single, O, f"{w.out}/e"], "single.mp4", "has 1 frame")
add("embed: frame folder with a gap", lambda w: ["embed", w.ckpt, w.gap, O, f"{w.out}/e"], "gap",
    "frame 2 is missing")
add("embed: folder without videos", lambda w: ["embed", w.ckpt, str(w.empty), O, f"{w.out}/e"], "empty",
    "holds no videos")
add("embed: a file where the folder goes", lambda w: ["embed", w.ckpt, w.v0, O, w.text], "notes.txt",
    "is a file, not a folder")
add("embed: output under a file", lambda w: ["embed", w.ckpt, w.v0, O, f"{w.text}/e"], "notes.txt",
    "is a file, not a folder")
add("embed: output is the input frame folder", lambda w: ["embed", w.ckpt, w.frames, O, w.frames], "frames",
    "is one of the inputs")
add("embed: output inside the input dataset", lambda w: ["embed", w.ckpt, str(w.root), O, f"{w.root}/embs"],
    "embs", "inside the input folder")
add("embed: earlier output without --overwrite", lambda w: ["embed", w.ckpt, w.v0, O, f"{w.out}/embs"],
    "pour_000.npy", "already exists", "--overwrite")
add("embed: two inputs of one name", lambda w: ["embed", w.ckpt, w.v0, w.twin, O, f"{w.out}/e"], "also named")
add("embed: a line break in a file name", lambda w: ["embed", w.ckpt, w.two_lines, O, f"{w.out}/e"],
    "bad\\nname.mp4", "cannot decode")
add("embed: a file name too long", lambda w: ["embed", w.ckpt, w.long_name, O, f"{w.out}/e"], "xxxx",
    "File name too long")
add("embed: output folder too long a name", lambda w: ["embed", w.ckpt, w.v0, O, w.long_name], "xxxx",
    "File name too long")
add("embed: output is a file of the model", lambda w: ["embed", w.export, w.config_video, O, w.export, "--overwrite"],
    "config.json", "is one of the inputs")
add("embed: unknown --frames", lambda w: ["embed", w.ckpt, w.v0, O, f"{w.out}/e", "--frames", "stretch"],
    "--frames", "invalid choice")

# --- align -----------------------------------------------------------------------------------------------------
align_args = lambda w, *extra: ["align", w.ckpt, w.v0, w.v1, O, f"{w.out}/a.gif", *extra]
for value in ("1000000", str(DISPLAY_HEIGHTS[1] + 1), "0", str(DISPLAY_HEIGHTS[0] - 1), "-5", "abc", "1e3"):
    add(f"align: --height {value}", lambda w, v=value: align_args(w, "--height", v), "--height", value)
for value in ("nan", "inf", "-inf", "0", "-1", "0.09", "1e9", "x"):
    add(f"align: --fps {value}", lambda w, v=value: align_args(w, f"--fps={v}"), "--fps", value)
add("align: --method unknown", lambda w: align_args(w, "--method", "fast"), "--method", "invalid choice")
add("align: output not an animation", lambda w: ["align", w.ckpt, w.v0, w.v1, O, f"{w.out}/a.avi"], "a.avi",
    ".mp4 or .gif")
add("align: output is the reference", lambda w: ["align", w.ckpt, w.v0, w.v1, O, w.v0, "--overwrite"],
    "pour_000.mp4", "is one of the inputs")
add("align: output is the video aligned", lambda w: ["align", w.ckpt, w.v0, w.v1, O, w.v1, "--overwrite"],
    "pour_001.mp4", "is one of the inputs")
add("align: output is a link to the reference", lambda w: ["align", w.ckpt, w.v0, w.v1, O, f"{w.inputs}/link.mp4",
                                                          "--overwrite"], "link.mp4", "is one of the inputs")
add("align: output in a symbolic link loop", lambda w: ["align", w.ckpt, w.v0, w.v1, O, f"{w.inputs}/loop_a/a.gif"],
    "loop_a", "link")
add("align: side output exists", lambda w: ["align", w.ckpt, w.v0, w.v1, O, f"{w.out}/earlier.gif"],
    "earlier.gif", "already exists")
add("align: cost picture exists", lambda w: ["align", w.ckpt, w.v0, w.v1, O, f"{w.out}/earlier.mp4"],
    "earlier_cost.png", "already exists")
add("align: output is a folder", lambda w: ["align", w.ckpt, w.v0, w.v1, O, f"{w.out}/folder.gif", "--overwrite"],
    "folder.gif", "is a folder")
add("align: output under a file", lambda w: ["align", w.ckpt, w.v0, w.v1, O, f"{w.text}/a.gif"], "notes.txt",
    "is a file")
add("align: missing video", lambda w: ["align", w.ckpt, w.v0, f"{w.inputs}/absent.mp4", O, f"{w.out}/a.gif"],
    "absent.mp4", "no such")
add("align: one-frame video", lambda w: ["align", w.ckpt, w.v0, w.single, O, f"{w.out}/a.gif"], "single.mp4",
    "has 1 frame")
add("align: corrupt image in a frame folder", lambda w: ["align", w.ckpt, w.v0, f"{w.mixed}/b_corrupt", O,
                                                          f"{w.out}/a.gif"], "b_corrupt", "cannot decode")
add("align: a folder of videos as a video", lambda w: ["align", w.ckpt, w.v0, str(w.mixed), O, f"{w.out}/a.gif"],
    "mixed", "not a frame folder")
add("align: phase labels of another length", lambda w: ["align", w.ckpt, w.v0, f"{w.refs['short']}/videos/pour_001.mp4",
                                                         O, f"{w.out}/a.gif"], "labels/pour_001.csv", "rows but")

# --- retrieve --------------------------------------------------------------------------------------------------
retrieve_args = lambda w, query, *extra: ["retrieve", w.ckpt, "--query", query, "--gallery", str(w.root),
                                          O, f"{w.out}/r.png", *extra]
for value in ("0", "-3", str(MAX_K + 1), "100000000000", "2.5"):
    add(f"retrieve: -k {value}", lambda w, v=value: retrieve_args(w, f"{w.v0}:1", "-k", v), "-k")
for frame in ("999", "100000000000000000000000"):
    add(f"retrieve: frame {frame[:8]}", lambda w, f=frame: retrieve_args(w, f"{w.v0}:{f}"), "pour_000.mp4",
        "out of range")
for frame in ("-1", "x", "²", " 3", ""):
    add(f"retrieve: frame {frame!r}", lambda w, f=frame: retrieve_args(w, f"{w.v0}:{f}"), "VIDEO:FRAME")
add("retrieve: k above the gallery's frames", lambda w: ["retrieve", w.ckpt, "--query", f"{w.v0}:1", "--gallery",
                                                          w.v1, O, f"{w.out}/r.png", "-k", "100"],
    "k = 100", "gallery holds only")
add("retrieve: output inside the gallery", lambda w: ["retrieve", w.ckpt, "--query", f"{w.v0}:1", "--gallery",
                                                       str(w.root / "videos"), O, str(w.root / "videos" / "r.png")],
    "r.png", "inside the input folder")
add("retrieve: output not a png", lambda w: retrieve_args(w, f"{w.v0}:1")[:-1] + [f"{w.out}/r.jpg"], "r.jpg", ".png")
add("retrieve: table beside the sheet exists", lambda w: retrieve_args(w, f"{w.v0}:1")[:-1] + [f"{w.out}/sheet.png"],
    "sheet.csv", "already exists")
add("retrieve: empty gallery", lambda w: ["retrieve", w.ckpt, "--query", f"{w.v0}:1", "--gallery", str(w.empty), O,
                                          f"{w.out}/r.png"], "empty", "holds no videos")
add("retrieve: gallery holds only the query", lambda w: ["retrieve", w.ckpt, "--query", f"{w.v0}:1", "--gallery",
                                                          w.v0, O, f"{w.out}/r.png"],
    "no video but the query's", "--include-query-video")
add("retrieve: undecodable query", lambda w: retrieve_args(w, f"{w.broken}:1"), "broken.mp4", "cannot decode")

# --- attention -------------------------------------------------------------------------------------------------
attention_args = lambda w, *extra: ["attention", w.ckpt, w.v0, O, f"{w.out}/att", *extra]
for value in ("0", "-1", "100000", "1.5"):
    add(f"attention: --every {value}", lambda w, v=value: attention_args(w, "--every", v), "--every")
add("attention: --every beyond the video", lambda w: attention_args(w, "--every", "1000"), "every = 1000",
    "pour_000.mp4")
add("attention: --format unknown", lambda w: attention_args(w, "--format", "webm"), "--format", "invalid choice")
add("attention: output is the input frame folder", lambda w: ["attention", w.ckpt, w.frames, O, w.frames], "frames",
    "is one of the inputs")
add("attention: output folder is a file", lambda w: ["attention", w.ckpt, w.v0, O, w.text], "notes.txt",
    "is a file, not a folder")
add("attention: earlier output without --overwrite", lambda w: ["attention", w.ckpt, w.v0, O, f"{w.out}/attention"],
    "attention_strip.png", "already exists")
add("attention: model without spatial attention", lambda w: ["attention", w.cls_ckpt, w.v0, O, f"{w.out}/att"],
    "'cls'", "no spatial attention")
add("attention: one-frame video", lambda w: ["attention", w.ckpt, w.single, O, f"{w.out}/att"], "single.mp4",
    "has 1 frame")

# --- progress --------------------------------------------------------------------------------------------------
progress_args = lambda w, reference, *extra: ["progress", w.ckpt, "--reference", reference, "--video", w.v0,
                                              O, f"{w.out}/p.png", *extra]
add("progress: one phase labelled, four listed", lambda w: progress_args(w, w.refs["one_phase"]), "classes.txt",
    "lists 4 phases", "'tilt', 'pour', 'return'")
add("progress: every frame unlabelled", lambda w: progress_args(w, w.refs["unlabelled"]), "ref_unlabelled",
    "every label is -1")
add("progress: no labels", lambda w: progress_args(w, w.refs["no_labels"]), "ref_no_labels", "no frame labels")
add("progress: a video lacks a phase", lambda w: progress_args(w, w.refs["gap"]), "labels/pour_001.csv", "'tilt'")
add("progress: the video is the only labelled reference", lambda w: progress_args(w, w.refs["alone"])[:5]
    + [f"{w.refs['alone']}/videos/pour_000.mp4", O, f"{w.out}/p.png"], "pour_000.mp4", "only labelled reference")
add("progress: output inside the reference", lambda w: progress_args(w, str(w.root))[:-1]
    + [f"{w.root}/labels/pour_000.png", "--overwrite"], "pour_000.png", "inside the input folder")
add("progress: output not a png", lambda w: progress_args(w, str(w.root))[:-1] + [f"{w.out}/p.svg"], "p.svg", ".png")
add("progress: table beside the plot exists", lambda w: progress_args(w, str(w.root))[:-1] + [f"{w.out}/plot.png"],
    "plot.csv", "already exists")
add("progress: split with a path", lambda w: progress_args(w, str(w.root), "--reference-split", "../../x"), "'../../x'",
    "not a plain file name")
add("progress: split that does not exist", lambda w: progress_args(w, str(w.root), "--reference-split", "test"),
    "splits/test.txt", "does not exist")
add("progress: reference root missing", lambda w: progress_args(w, f"{w.base}/no_root"), "no_root", "does not exist")
add("progress: video missing", lambda w: progress_args(w, str(w.root))[:5] + [f"{w.inputs}/absent.mp4", O,
                                                                            f"{w.out}/p.png"], "absent.mp4", "no such")

# --- evaluate-embeddings ---------------------------------------------------------------------------------------
def scores_args(name, *extra):
    return lambda w: ["evaluate-embeddings", w.npz[name], *extra]


for name, fragments in {
    "no_values": ("train_embs", "(", "0)", "at least one value"),
    "big_label": ("train_labels", str(2**40)),
    "low_label": ("train_labels", "-5"),
    "wrapping_lens": ("train_lens", "sum to 18446744073709551", "frames but"),  # above 2**64: no wrap-around
    "negative_lens": ("train_lens", "below 1", "-3"),
    "empty_lens": ("train_lens", "empty"),
    "nan": ("train_embs", "NaN or Inf"),
    "inf": ("train_embs", "NaN or Inf"),
    "huge_value": ("train_embs", "1e+300"),
    "complex": ("train_embs", "complex64"),
    "bool_labels": ("train_labels", "bool"),
    "labels_2d": ("train_labels", "1-D"),
    "val_unlabelled": ("validation videos", "every label is -1", "nothing to score"),
    "objects": ("objects.npz", "cannot read"),
}.items():
    add(f"evaluate-embeddings: {name}", scores_args(name, "--fractions", "0.1", "1"), f"{name}.npz", *fragments)
for option, value in (("--stride", "0"), ("--ks", "0"), ("--ks", "1000000000000"), ("--fractions", "nan"),
                      ("--fractions", "1.5"), ("--fractions", "0"), ("--num-classes", "0"),
                      ("--num-classes", str(MAX_CLASSES + 1)), ("--classifier", "svm")):
    add(f"evaluate-embeddings: {option} {value}", scores_args("good", option, value), option)
add("evaluate-embeddings: --num-classes below a label", scores_args("good", "--num-classes", "2"), "good.npz",
    "label 2 is out of range")
add("evaluate-embeddings: --json is a folder", lambda w: scores_args("good", "--json", str(w.out))(w), "out",
    "is a folder")
add("evaluate-embeddings: --json is the input", lambda w: scores_args("good", "--json", w.npz["good"],
                                                                       "--overwrite")(w), "good.npz",
    "is one of the inputs")
add("evaluate-embeddings: --json exists", lambda w: scores_args("good", "--json", f"{w.out}/scores.json")(w),
    "scores.json", "already exists", "--overwrite")
add("evaluate-embeddings: --json under a file", lambda w: scores_args("good", "--json", f"{w.text}/s.json")(w),
    "notes.txt", "is a file")
add("evaluate-embeddings: --json folder missing", lambda w: scores_args("good", "--json", f"{w.out}/no/s.json")(w),
    "does not exist")
add("evaluate-embeddings: file is a folder", lambda w: ["evaluate-embeddings", str(w.out)], "out", "is a folder")
add("evaluate-embeddings: a file name too long", lambda w: ["evaluate-embeddings", w.long_name], "xxxx",
    "File name too long")
add("evaluate-embeddings: one file twice", lambda w: ["evaluate-embeddings", w.npz["good"], w.npz["good"]],
    "good.npz", "more than once")
add("evaluate-embeddings: a bad second file", lambda w: ["evaluate-embeddings", w.npz["good"], w.npz["nan"],
                                                          "--json", f"{w.out}/new.json"], "nan.npz", "NaN")


@pytest.mark.parametrize("name", CASES)
def test_bad_input_gives_one_line_and_changes_nothing(name, world, capsys):
    built = CASES[name](world)
    if built is None:
        pytest.skip("this machine has CUDA")
    run_case(Case(built.name, built.args, built.fragments, (world.base,)), capsys)


def test_the_cli_bounds_are_the_library_bounds(tmp_path):
    """The CLI refuses just outside the limits the library enforces, and accepts their edges."""
    parse = build_parser().parse_args
    low_height, high_height = DISPLAY_HEIGHTS
    low_fps, high_fps = viz.FRAME_RATES
    accepted = parse(["align", "c", "a", "b", O, "x.gif", "--height", str(high_height), "--fps", str(high_fps)])
    assert (accepted.height, accepted.fps) == (high_height, high_fps)
    assert parse(["align", "c", "a", "b", O, "x.gif", "--height", str(low_height), "--fps", str(low_fps)]).height == 16
    assert parse(["retrieve", "c", "--query", "a:1", "--gallery", "g", "-k", str(MAX_K)]).k == MAX_K
    assert parse(["evaluate-embeddings", "a.npz", "--num-classes", str(MAX_CLASSES)]).num_classes == MAX_CLASSES
