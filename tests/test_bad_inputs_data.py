"""Bad datasets through the commands that read them: prepare (every format), synthetic, cache-features and train.

Each case breaks one thing in a copy of a small good dataset and runs one command on it through the CLI
(tests/bad_inputs.py): exit status 2, one line naming the file (and line or record) and the entry, no traceback,
and nothing changed in the dataset, in the folder `outside` beside it (what an escaping path would read or link)
or in the command's output, which must not even be created.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from bad_inputs import Case, run_case
from PIL import Image

from mvformer.data.video import write_video

SIZE = 32
LABELS = {"alpha": ["up"] * 3 + ["down"] * 3, "beta": [0, 0, 1, 1, 1], "gamma": ["up"] * 2 + ["down"] * 4}


def frames(num_frames: int, seed: int = 0) -> np.ndarray:
    """Distinct uint8 frames (T, SIZE, SIZE, 3): a gradient that brightens over time."""
    ramp = np.arange(SIZE)[None, :, None, None] + 8 * np.arange(num_frames)[:, None, None, None] + 30 * seed
    return np.broadcast_to(np.clip(ramp, 0, 255), (num_frames, SIZE, SIZE, 3)).astype(np.uint8)


def write_frame_folder(folder: Path, num_frames: int, seed: int = 0) -> None:
    folder.mkdir(parents=True)
    for number, frame in enumerate(frames(num_frames, seed), start=1):
        Image.fromarray(frame).save(folder / f"{number:06d}.jpg")


def write_labels(path: Path, labels: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("frame,label\n" + "".join(f"{frame},{label}\n" for frame, label in enumerate(labels)))


def dump(path: Path, content) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(content))


def carl_record(root: Path, name: str, num_frames: int, num_classes: int, folder: str = "videos") -> dict:
    write_video(root / folder / f"{name}.mp4", frames(num_frames))
    labels = np.arange(num_frames) * num_classes // num_frames
    return {"id": 0, "name": name, "video_file": f"{folder}/{name}.mp4", "frame_label": labels, "seq_len": num_frames}


def penn_pickle(records: list[dict], actions: dict[int, list[int]]) -> tuple:
    """(records, action_to_indices) with the given indices per action (13 actions, pushup is index 7)."""
    return records, [actions.get(action, []) for action in range(13)]


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    """Good datasets of every layout (copied by each case, then broken) and a folder `outside` of them."""
    base = tmp_path_factory.mktemp("sources")
    outside = base / "outside"
    write_video(outside / "secret.mp4", frames(6, seed=3))
    write_frame_folder(outside / "frames", 5, seed=3)
    write_labels(outside / "secret.csv", ["up"] * 6)
    (outside / "list.txt").write_text("alpha\n")
    np.save(outside / "phases.npy", np.array([0, 0, 0, 1, 1]))

    generic = base / "generic"
    write_video(generic / "videos" / "alpha.mp4", frames(6))
    write_frame_folder(generic / "videos" / "beta", 5, seed=1)
    write_video(generic / "videos" / "gamma.mp4", frames(6, seed=2))
    for name, labels in LABELS.items():
        write_labels(generic / "labels" / f"{name}.csv", labels)
    (generic / "classes.txt").write_text("up\ndown\n")
    (generic / "splits").mkdir()
    (generic / "splits" / "train.txt").write_text("alpha\nbeta\n")
    (generic / "splits" / "val.txt").write_text("gamma\n")

    pouring = base / "pouring"
    dump(pouring / "train.pkl", [carl_record(pouring, "p0", 6, 5), carl_record(pouring, "p1", 7, 5)])
    dump(pouring / "val.pkl", [carl_record(pouring, "p2", 6, 5)])

    penn = base / "penn"
    dump(penn / "train.pkl", penn_pickle([carl_record(penn, "0001_pushup", 6, 2)], {7: [0]}))
    dump(penn / "val.pkl", penn_pickle([carl_record(penn, "0002_pushup", 6, 2)], {7: [0]}))

    official = base / "penn_official"
    (official / "labels").mkdir(parents=True)
    (official / "phases").mkdir()
    for video_id, train in (("0001", 1), ("0002", -1)):
        write_frame_folder(official / "frames" / video_id, 5)
        scipy.io.savemat(official / "labels" / f"{video_id}.mat", {"action": "pushup", "train": train, "nframes": 5})
        np.save(official / "phases" / f"{video_id}.npy", np.array([0, 0, 1, 1, 1]))

    finegym = base / "finegym"
    dump(finegym / "gym99_train_v1.0.pkl", [carl_record(finegym, "e0", 6, 99, "processed_videos")])
    dump(finegym / "gym99_val.pkl", [carl_record(finegym, "e1", 6, 99, "processed_videos")])

    kinetics = base / "k400_carl"
    write_video(kinetics / "train" / "archery" / "aaa_000000_000010.mp4", frames(6))
    (kinetics / "train.csv").write_text("train/archery/aaa_000000_000010.mp4,archery\n")

    official_k400 = base / "k400_official"
    write_video(official_k400 / "train" / "archery" / "bbb_000000_000010.mp4", frames(6))
    (official_k400 / "annotations").mkdir()
    (official_k400 / "annotations" / "train.csv").write_text(
        "label,youtube_id,time_start,time_end,split\narchery,bbb,0,10,train\n")

    folder_k400 = base / "k400_folder"
    write_video(folder_k400 / "train" / "archery" / "ccc_000000_000010.mp4", frames(6))
    return base


@dataclass
class World:
    """One case's folder: copies of the sources it needs, and the commands' arguments and watched folders."""

    tmp: Path
    sources: Path

    @property
    def outside(self) -> Path:
        return self.tmp / "outside"

    def take(self, layout: str) -> Path:
        """A copy of a source dataset at tmp/data (with tmp/outside beside it)."""
        if not self.outside.exists():
            shutil.copytree(self.sources / "outside", self.outside, symlinks=True)
        root = self.tmp / "data"
        shutil.copytree(self.sources / layout, root, symlinks=True)
        return root

    def config(self, root: Path | str, **data) -> Path:
        path = self.tmp / "run.yaml"
        settings = {"root": str(root), "image_size": SIZE, "clip_len": 8, **data}
        path.write_text(f"base: demo\nbackbone: {{name: tiny, blocks: [3]}}\ndata: {json.dumps(settings)}\n"
                        f"train: {json.dumps({'device': 'cpu', 'output_dir': str(self.tmp / 'run')})}\n")
        return path

    def watched(self, *paths: Path) -> tuple[Path, ...]:
        return (self.tmp / "data", self.outside, *paths)

    def cache(self, root: Path | str, fragments: tuple[str, ...], *extra: str, **data) -> Case:
        out = self.tmp / "cache"
        return Case("", ["cache-features", str(self.config(root, **data)), "--out", str(out), *extra], fragments,
                    self.watched(out))

    def train(self, root: Path | str, fragments: tuple[str, ...], **data) -> Case:
        return Case("", ["train", str(self.config(root, **data)), "--set", "train.epochs=1", "--no-progress"],
                    fragments, self.watched(self.tmp / "run"))

    def prepare(self, format: str, src: Path | str, fragments: tuple[str, ...], *extra: str,
                dest: Path | str | None = None) -> Case:
        dest = self.tmp / "prepared" if dest is None else dest
        return Case("", ["prepare", format, str(src), str(dest), *extra, "--no-progress"], fragments,
                    self.watched(*([Path(dest)] if str(dest) else [])))


def link(path: Path, target: Path) -> None:
    """Replace `path` (a file or folder, if any) by a symbolic link to `target`."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()
    path.symlink_to(target)


# --- the generic layout: (name, break the copy at root -> fragments the error line must hold) -------------------

Breaker = Callable[[World, Path], tuple[str, ...]]


def split_line(root: Path, line: str) -> None:
    (root / "splits" / "train.txt").write_text(f"alpha\n{line}\n")


def split_climbs_out(w: World, root: Path) -> tuple[str, ...]:
    split_line(root, "../../../outside/secret")
    return "splits/train.txt line 2", "'../../../outside/secret'", "not a plain file name"


def split_absolute(w: World, root: Path) -> tuple[str, ...]:
    split_line(root, str(w.outside / "secret"))
    return "splits/train.txt line 2", str(w.outside / "secret")


def split_subfolder(w: World, root: Path) -> tuple[str, ...]:
    split_line(root, "sub/alpha")
    return "splits/train.txt line 2", "'sub/alpha'"


def split_backslashes(w: World, root: Path) -> tuple[str, ...]:
    split_line(root, "..\\..\\outside\\secret")
    return "splits/train.txt line 2", "not a plain file name"


def split_hidden_name(w: World, root: Path) -> tuple[str, ...]:
    split_line(root, ".alpha")
    return "splits/train.txt line 2", "'.alpha'"


def split_file_links_out(w: World, root: Path) -> tuple[str, ...]:
    link(root / "splits" / "train.txt", w.outside / "list.txt")
    return "splits/train.txt resolves to", str(w.outside / "list.txt"), "outside the dataset root"


def video_links_out(w: World, root: Path) -> tuple[str, ...]:
    link(root / "videos" / "alpha.mp4", w.outside / "secret.mp4")
    return "splits/train.txt line 1", "videos/alpha.mp4 resolves to", "outside the dataset root"


def frame_folder_links_out(w: World, root: Path) -> tuple[str, ...]:
    link(root / "videos" / "beta", w.outside / "frames")
    return "splits/train.txt line 2", "videos/beta resolves to", "outside the dataset root"


def frame_image_links_out(w: World, root: Path) -> tuple[str, ...]:
    link(root / "videos" / "beta" / "000003.jpg", w.outside / "frames" / "000003.jpg")
    return "splits/train.txt line 2", "videos/beta/000003.jpg resolves to", "outside the dataset root"


def videos_folder_links_out(w: World, root: Path) -> tuple[str, ...]:
    shutil.copytree(root / "videos", w.outside / "videos")
    link(root / "videos", w.outside / "videos")
    return "splits/train.txt line 1", "videos/alpha.mp4 resolves to", "outside the dataset root"


def label_file_links_out(w: World, root: Path) -> tuple[str, ...]:
    link(root / "labels" / "alpha.csv", w.outside / "secret.csv")
    return "labels/alpha.csv resolves to", str(w.outside / "secret.csv")


def labels_folder_links_out(w: World, root: Path) -> tuple[str, ...]:
    shutil.copytree(root / "labels", w.outside / "labels")
    link(root / "labels", w.outside / "labels")
    return "labels/alpha.csv resolves to", "outside the dataset root"


def classes_link_out(w: World, root: Path) -> tuple[str, ...]:
    link(root / "classes.txt", w.outside / "list.txt")
    return "classes.txt resolves to", "outside the dataset root"


def video_link_loop(w: World, root: Path) -> tuple[str, ...]:
    link(root / "videos" / "alpha.mp4", root / "videos" / "alpha.mp4")
    return "splits/train.txt line 1", "videos/alpha.mp4 cannot be resolved"


def split_empty(w: World, root: Path) -> tuple[str, ...]:
    (root / "splits" / "train.txt").write_text("\n  \n")
    return "splits/train.txt is empty", "lists no videos"


def split_duplicate(w: World, root: Path) -> tuple[str, ...]:
    (root / "splits" / "train.txt").write_text("alpha\nbeta\nalpha\n")
    return "splits/train.txt line 3", "'alpha' is listed twice (first on line 1)"


def split_not_utf8(w: World, root: Path) -> tuple[str, ...]:
    (root / "splits" / "train.txt").write_bytes(b"alpha\n\xff\xfe\n")
    return "splits/train.txt is not UTF-8 text",


def split_names_a_missing_video(w: World, root: Path) -> tuple[str, ...]:
    split_line(root, "ghost")
    return "splits/train.txt line 2", "'ghost'", "no videos/ghost.mp4"


def video_ambiguous(w: World, root: Path) -> tuple[str, ...]:
    shutil.copyfile(root / "videos" / "alpha.mp4", root / "videos" / "alpha.mkv")
    return "video 'alpha' is ambiguous", "alpha.mkv, alpha.mp4"


def video_corrupt(w: World, root: Path) -> tuple[str, ...]:
    (root / "videos" / "alpha.mp4").write_bytes(b"not a video" * 50)
    return "alpha.mp4: cannot decode video",


def frame_folder_gap(w: World, root: Path) -> tuple[str, ...]:
    (root / "videos" / "beta" / "000003.jpg").unlink()
    return "videos/beta", "frame 3 is missing"


def labels_too_short(w: World, root: Path) -> tuple[str, ...]:
    write_labels(root / "labels" / "alpha.csv", ["up"] * 5)
    return "labels/alpha.csv has 5 rows but videos/alpha.mp4 has 6 frames",


def labels_too_long(w: World, root: Path) -> tuple[str, ...]:
    write_labels(root / "labels" / "beta.csv", [0] * 9)
    return "labels/beta.csv has 9 rows but videos/beta has 5 frames",


def label_beyond_classes(w: World, root: Path) -> tuple[str, ...]:
    write_labels(root / "labels" / "alpha.csv", ["up", "up", 2, "down", "down", "down"])
    return "labels/alpha.csv line 4", "label '2'", "[-1, 1]"


def label_unknown_name(w: World, root: Path) -> tuple[str, ...]:
    write_labels(root / "labels" / "alpha.csv", ["up"] * 5 + ["sideways"])
    return "labels/alpha.csv line 7", "'sideways'"


def label_overflows_int64(w: World, root: Path) -> tuple[str, ...]:
    (root / "classes.txt").unlink()
    write_labels(root / "labels" / "alpha.csv", [0, 0, 0, 1, 1, 1])
    write_labels(root / "labels" / "beta.csv", [0, 0, 1, 1, 10**30])
    return "labels/beta.csv line 6", "is not an integer in [-1, 9999] (there is no classes.txt)"


def labels_not_utf8(w: World, root: Path) -> tuple[str, ...]:
    (root / "labels" / "alpha.csv").write_bytes(b"frame,label\n0,\xe9t\xe9\n")
    return "labels/alpha.csv is not UTF-8 text",


def labels_not_csv(w: World, root: Path) -> tuple[str, ...]:
    (root / "labels" / "alpha.csv").write_text("frame,label\n0,\"" + "up" * 70_000 + "\"\n")
    return "labels/alpha.csv is not a CSV file", "field larger than field limit"


def label_holds_a_nul(w: World, root: Path) -> tuple[str, ...]:
    write_labels(root / "labels" / "alpha.csv", ["up"] * 5 + ["do\0wn"])
    return "labels/alpha.csv line 7", "label 'do\\x00wn' is not a name in classes.txt"


def labels_header(w: World, root: Path) -> tuple[str, ...]:
    (root / "labels" / "alpha.csv").write_text("frame,phase\n" + "".join(f"{i},up\n" for i in range(6)))
    return "labels/alpha.csv must start with the header 'frame,label'",


def labels_file_missing(w: World, root: Path) -> tuple[str, ...]:
    (root / "labels" / "beta.csv").unlink()
    return "labels/ exists but labels/beta.csv does not",


def labels_not_a_folder(w: World, root: Path) -> tuple[str, ...]:
    shutil.rmtree(root / "labels")
    (root / "labels").write_text("alpha,up\n")
    return "labels is not a folder",


def classes_duplicate(w: World, root: Path) -> tuple[str, ...]:
    (root / "classes.txt").write_text("up\ndown\nup\n")
    return "classes.txt line 3", "'up' is listed twice"


def classes_empty(w: World, root: Path) -> tuple[str, ...]:
    (root / "classes.txt").write_text("\n")
    return "classes.txt is empty", "lists no classes"


def classes_integer_names_swapped(w: World, root: Path) -> tuple[str, ...]:
    (root / "classes.txt").write_text("1\n0\n")
    return "classes.txt line 1", "class 0 is named '1'"


def root_missing(w: World, root: Path) -> tuple[str, ...]:
    shutil.rmtree(root)
    return f"{root}: dataset root does not exist",


def root_is_a_file(w: World, root: Path) -> tuple[str, ...]:
    shutil.rmtree(root)
    root.write_text("not a folder")
    return f"{root}: dataset root is a file",


def root_without_splits(w: World, root: Path) -> tuple[str, ...]:
    shutil.rmtree(root / "splits")
    return f"{root}: has no splits/ folder",


GENERIC_BREAKS: list[Breaker] = [
    split_climbs_out, split_absolute, split_subfolder, split_backslashes, split_hidden_name, split_file_links_out,
    video_links_out, frame_folder_links_out, frame_image_links_out, videos_folder_links_out, label_file_links_out,
    labels_folder_links_out, classes_link_out, video_link_loop, split_empty, split_duplicate, split_not_utf8,
    split_names_a_missing_video, video_ambiguous, video_corrupt, frame_folder_gap, labels_too_short, labels_too_long,
    label_beyond_classes, label_unknown_name, label_overflows_int64, labels_not_utf8, labels_not_csv, label_holds_a_nul,
    labels_header,
    labels_file_missing, labels_not_a_folder, classes_duplicate, classes_empty, classes_integer_names_swapped,
    root_missing, root_is_a_file, root_without_splits,
]
TRAIN_BREAKS: list[Breaker] = [
    split_climbs_out, split_absolute, video_links_out, frame_image_links_out, label_file_links_out, split_duplicate,
    labels_too_short, label_overflows_int64, classes_integer_names_swapped, root_is_a_file, root_without_splits,
]


def generic_case(command: str, breaker: Breaker) -> Callable[[World], Case]:
    def build(w: World) -> Case:
        root = w.take("generic")
        return getattr(w, command)(root, breaker(w, root))
    build.__name__ = f"{command}-{breaker.__name__}"
    return build


# --- cache-features: its own output, and the benchmark formats through a config -------------------------------


def cache_into_the_dataset(w: World) -> Case:
    root = w.take("generic")
    return Case("", ["cache-features", str(w.config(root)), "--out", str(root)],
                (str(root), "the feature cache must lie outside the dataset root"), w.watched())


def cache_inside_the_dataset(w: World) -> Case:
    root = w.take("generic")
    return Case("", ["cache-features", str(w.config(root)), "--out", str(root / "cache")],
                ("cache", "must lie outside the dataset root"), w.watched())


def cache_holding_the_dataset(w: World) -> Case:
    root = w.take("generic")
    return Case("", ["cache-features", str(w.config(root)), "--out", str(w.tmp)],
                ("must lie outside the dataset root", "must not hold it"), w.watched())


def cache_into_a_file(w: World) -> Case:
    root, out = w.take("generic"), w.tmp / "cache"
    out.write_text("results")
    return Case("", ["cache-features", str(w.config(root)), "--out", str(out)],
                (f"{out}: exists and is not a folder",), w.watched(out))


def cache_into_a_folder_of_other_files(w: World) -> Case:
    root, out = w.take("generic"), w.tmp / "cache"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    return Case("", ["cache-features", str(w.config(root)), "--out", str(out)],
                (f"{out}: is not empty and holds no feature cache",), w.watched(out))


def cache_out_empty(w: World) -> Case:
    root = w.take("generic")
    return Case("", ["cache-features", str(w.config(root)), "--out", ""], ("--out is empty",), w.watched())


def cache_copies_too_many(w: World) -> Case:
    return w.cache(w.take("generic"), ("--copies must be in [0, 1000], got 1000000000",), "--copies", "1000000000")


def cache_root_unset(w: World) -> Case:
    w.take("generic")
    return w.cache("", ("data.root is not set",))


def cache_pouring_record_climbs_out(w: World) -> Case:
    root = w.take("pouring")
    records = pickle.loads((root / "train.pkl").read_bytes())
    records[1]["video_file"] = "../outside/secret.mp4"
    dump(root / "train.pkl", records)
    return w.cache(root, ("train.pkl record 1 (p1)", "video_file '../outside/secret.mp4'"), format="pouring")


def cache_kinetics_list_names_an_absolute_path(w: World) -> Case:
    root = w.take("k400_carl")
    (root / "train.csv").write_text(f"{w.outside / 'secret.mp4'},archery\n")
    return w.cache(root, ("train.csv line 1", str(w.outside / "secret.mp4"), "must be a path relative"),
                   format="kinetics400")


def train_kinetics_list_climbs_out(w: World) -> Case:
    root = w.take("k400_carl")
    (root / "train.csv").write_text("train/archery/aaa_000000_000010.mp4,archery\n../outside/secret.mp4,x\n")
    return w.train(root, ("train.csv line 2", "'../outside/secret.mp4'"), format="kinetics400")


# --- prepare, every format --------------------------------------------------------------------------------------


def edit_records(path: Path, edit: Callable[[list], None]) -> None:
    content = pickle.loads(path.read_bytes())
    edit(content[0] if isinstance(content, tuple) else content)
    dump(path, content)


def pouring_record(w: World, edit: Callable[[list], None], fragments: tuple[str, ...]) -> Case:
    root = w.take("pouring")
    edit_records(root / "train.pkl", edit)
    return w.prepare("pouring", root, fragments)


def prepare_pouring_record_climbs_out(w: World) -> Case:
    return pouring_record(w, lambda records: records[0].update(video_file="../outside/secret.mp4"),
                          ("train.pkl record 0 (p0)", "'../outside/secret.mp4'", "must be a path relative"))


def prepare_pouring_record_absolute(w: World) -> Case:
    absolute = str(w.tmp / "outside" / "secret.mp4")
    return pouring_record(w, lambda records: records[0].update(video_file=absolute),
                          ("train.pkl record 0 (p0)", absolute))


def prepare_pouring_record_name_is_a_path(w: World) -> Case:
    return pouring_record(w, lambda records: records[1].update(name="../p1"),
                          ("train.pkl record 1", "video name '../p1' is not a plain file name"))


def prepare_pouring_duplicate_names(w: World) -> Case:
    return pouring_record(w, lambda records: records[1].update(name="p0"),
                          ("train.pkl record 1 (p0)", "'p0' appears twice in split train"))


def prepare_pouring_video_links_out(w: World) -> Case:
    root = w.take("pouring")
    link(root / "videos" / "p0.mp4", w.outside / "secret.mp4")
    return w.prepare("pouring", root, ("train.pkl record 0 (p0)", "videos/p0.mp4 resolves to",
                                       "outside the dataset root"))


def prepare_pouring_pickle_links_out(w: World) -> Case:
    root = w.take("pouring")
    shutil.copyfile(root / "train.pkl", w.outside / "train.pkl")
    link(root / "train.pkl", w.outside / "train.pkl")
    return w.prepare("pouring", root, ("train.pkl resolves to", "outside the dataset root"))


def prepare_pouring_empty_pickle(w: World) -> Case:
    root = w.take("pouring")
    dump(root / "train.pkl", [])
    return w.prepare("pouring", root, ("train.pkl: holds no video records",))


def prepare_into_the_source(w: World) -> Case:
    root = w.take("pouring")
    return w.prepare("pouring", root, ("destination must lie outside the source",), dest=root)


def prepare_inside_the_source(w: World) -> Case:
    root = w.take("pouring")
    return w.prepare("pouring", root, ("destination must lie outside the source",), dest=root / "generic")


def prepare_around_the_source(w: World) -> Case:
    root = w.take("pouring")
    return w.prepare("pouring", root, ("must not hold it",), dest=w.tmp)


def prepare_into_a_file(w: World) -> Case:
    root, dest = w.take("pouring"), w.tmp / "prepared"
    dest.write_text("results")
    return w.prepare("pouring", root, (f"{dest}: exists and is not a folder",), dest=dest)


def prepare_source_unset(w: World) -> Case:
    w.take("pouring")
    return w.prepare("pouring", "", ("SRC is not set",))


def prepare_destination_unset(w: World) -> Case:
    return w.prepare("pouring", w.take("pouring"), ("DEST is not set",), dest="")


def prepare_penn_no_record_in_any_action(w: World) -> Case:
    root = w.take("penn")
    content = pickle.loads((root / "train.pkl").read_bytes())
    dump(root / "train.pkl", penn_pickle(content[0], {}))
    return w.prepare("penn_action", root, ("train.pkl: action_to_indices assigns no record",))


def prepare_penn_indices_not_numbers(w: World) -> Case:
    root = w.take("penn")
    content = pickle.loads((root / "val.pkl").read_bytes())
    dump(root / "val.pkl", penn_pickle(content[0], {7: ["0"]}))
    return w.prepare("penn_action", root, ("val.pkl: action_to_indices of pushup must be a list of record indices",))


def prepare_penn_record_climbs_out(w: World) -> Case:
    root = w.take("penn")
    edit_records(root / "val.pkl", lambda records: records[0].update(video_file="videos/../../outside/secret.mp4"))
    return w.prepare("penn_action", root, ("val.pkl record 0 (0002_pushup)", "must be a path relative"))


def prepare_penn_official_phases_link_out(w: World) -> Case:
    root = w.take("penn_official")
    link(root / "phases" / "0001.npy", w.outside / "phases.npy")
    return w.prepare("penn_action", root, ("labels/0001.mat", "phases/0001.npy resolves to",
                                           "outside the dataset root"))


def prepare_penn_official_frames_link_out(w: World) -> Case:
    root = w.take("penn_official")
    link(root / "frames" / "0002", w.outside / "frames")
    return w.prepare("penn_action", root, ("labels/0002.mat", "frames/0002 resolves to", "outside the dataset root"))


def prepare_penn_official_frame_image_links_out(w: World) -> Case:
    root = w.take("penn_official")
    link(root / "frames" / "0001" / "000002.jpg", w.outside / "frames" / "000002.jpg")
    return w.prepare("penn_action", root, ("labels/0001.mat", "frames/0001/000002.jpg resolves to"))


def prepare_penn_official_label_file_links_out(w: World) -> Case:
    root = w.take("penn_official")
    shutil.copyfile(root / "labels" / "0002.mat", w.outside / "0002.mat")
    link(root / "labels" / "0002.mat", w.outside / "0002.mat")
    return w.prepare("penn_action", root, ("labels/0002.mat resolves to", "outside the dataset root"))


def prepare_finegym_record_climbs_out(w: World) -> Case:
    root = w.take("finegym")
    edit_records(root / "gym99_train_v1.0.pkl", lambda records: records[0].update(video_file="../outside/x.mp4"))
    return w.prepare("finegym", root, ("gym99_train_v1.0.pkl record 0 (e0)", "'../outside/x.mp4'"), "--subset", "99")


def prepare_finegym_empty_val(w: World) -> Case:
    root = w.take("finegym")
    dump(root / "gym99_val.pkl", [])
    return w.prepare("finegym", root, ("gym99_val.pkl: holds no video records",), "--subset", "99")


def kinetics_list(w: World, text: str, fragments: tuple[str, ...]) -> Case:
    root = w.take("k400_carl")
    (root / "train.csv").write_text(text)
    return w.prepare("kinetics400", root, fragments)


def prepare_kinetics_list_absolute(w: World) -> Case:
    secret = w.tmp / "outside" / "secret.mp4"
    return kinetics_list(w, f"train/archery/aaa_000000_000010.mp4,archery\n{secret},archery\n",
                         ("train.csv line 2", str(secret), "must be a path relative"))


def prepare_kinetics_list_climbs_out(w: World) -> Case:
    return kinetics_list(w, "train/archery/../../../outside/secret.mp4,archery\n",
                         ("train.csv line 1", "'train/archery/../../../outside/secret.mp4'"))


def prepare_kinetics_list_empty_path(w: World) -> Case:
    return kinetics_list(w, " ,archery\n", ("train.csv line 1", "video path ''", "(it is empty)"))


def prepare_kinetics_list_path_holds_a_nul(w: World) -> Case:
    return kinetics_list(w, "train/a\x00b.mp4,archery\n", ("train.csv line 1", "(it holds a NUL character)"))


def prepare_kinetics_list_not_csv(w: World) -> Case:
    return kinetics_list(w, '"' + "x" * 200_000 + '",archery\n', ("train.csv: is not a CSV file", "field limit"))


def prepare_kinetics_list_not_utf8(w: World) -> Case:
    root = w.take("k400_carl")
    (root / "train.csv").write_bytes(b"train/\xff.mp4,archery\n")
    return w.prepare("kinetics400", root, ("train.csv: is not UTF-8 text",))


def prepare_kinetics_list_links_out(w: World) -> Case:
    root = w.take("k400_carl")
    (w.outside / "train.csv").write_text("train/archery/aaa_000000_000010.mp4,archery\n")
    link(root / "train.csv", w.outside / "train.csv")
    return w.prepare("kinetics400", root, ("train.csv resolves to", "outside the dataset root"))


def prepare_kinetics_all_unreadable(w: World) -> Case:
    return kinetics_list(w, "train/archery/gone.mp4,archery\ntrain/archery/lost.mp4,archery\n",
                         ("split train holds no readable videos: all 2 were left out",))


def official_csv(w: World, row: str, fragments: tuple[str, ...]) -> Case:
    root = w.take("k400_official")
    (root / "annotations" / "train.csv").write_text(f"label,youtube_id,time_start,time_end,split\n{row}\n")
    return w.prepare("kinetics400", root, fragments)


def prepare_kinetics_youtube_id_is_a_path(w: World) -> Case:
    return official_csv(w, "archery,../../../outside/secret,0,10,train",
                        ("annotations/train.csv line 2", "youtube_id '../../../outside/secret'"))


def prepare_kinetics_label_is_a_path(w: World) -> Case:
    return official_csv(w, "../../outside,bbb,0,10,train", ("annotations/train.csv line 2", "label '../../outside'"))


def prepare_kinetics_time_is_infinite(w: World) -> Case:
    return official_csv(w, "archery,bbb,0,inf,train", ("annotations/train.csv line 2", "whole-second"))


def prepare_kinetics_header_only(w: World) -> Case:
    root = w.take("k400_official")
    (root / "annotations" / "train.csv").write_text("label,youtube_id,time_start,time_end,split\n")
    return w.prepare("kinetics400", root, ("annotations/train.csv: holds only its header",))


def prepare_kinetics_class_folder_links_out(w: World) -> Case:
    root = w.take("k400_folder")
    link(root / "train" / "archery" / "ccc_000000_000010.mp4", w.outside / "secret.mp4")
    return w.prepare("kinetics400", root, ("train/archery/ccc_000000_000010.mp4 resolves to",
                                           "outside the dataset root"))


def prepare_kinetics_empty_folder(w: World) -> Case:
    root = w.take("k400_folder")
    shutil.rmtree(root / "train" / "archery")
    return w.prepare("kinetics400", root, ("train: holds no videos",))


# --- synthetic ----------------------------------------------------------------------------------------------------


def synthetic(w: World, dest: Path, *extra: str, fragments: tuple[str, ...]) -> Case:
    return Case("", ["synthetic", str(dest), "--train", "1", "--val", "1", "--size", "16", *extra, "--no-progress"],
                fragments, w.watched(dest))


def synthetic_into_an_existing_dataset(w: World) -> Case:
    root = w.take("generic")
    return synthetic(w, root, fragments=(f"{root}: already exists; pass --overwrite",))


def synthetic_overwrite_never_deletes_other_files(w: World) -> Case:
    root = w.take("generic")
    (root / "notes.txt").write_text("mine")
    return synthetic(w, root, "--overwrite", fragments=(f"{root}: exists and is not an earlier output",
                                                        "holds notes.txt", "even with --overwrite"))


def synthetic_into_a_file(w: World) -> Case:
    dest = w.tmp / "data"
    dest.write_text("results")
    return synthetic(w, dest, fragments=(f"{dest}: exists and is not a folder",))


def synthetic_negative_seed(w: World) -> Case:
    return synthetic(w, w.tmp / "data", "--seed", "-1", fragments=("seed must be in [0, 2**63), got -1",))


def synthetic_odd_size(w: World) -> Case:
    return synthetic(w, w.tmp / "data", "--size", "33", fragments=("size must be an even number", "got 33"))


def synthetic_huge_size(w: World) -> Case:
    return synthetic(w, w.tmp / "data", "--size", "100000", fragments=("[16, 512], got 100000",))


def synthetic_no_train_videos(w: World) -> Case:
    return synthetic(w, w.tmp / "data", "--train", "0", fragments=("need 1 to 100000 train and val videos",))


def synthetic_too_many_videos(w: World) -> Case:
    return synthetic(w, w.tmp / "data", "--val", "10000000", fragments=("got 1, 10000000",))


CASES: list[Callable[[World], Case]] = [
    *(generic_case("cache", breaker) for breaker in GENERIC_BREAKS),
    *(generic_case("train", breaker) for breaker in TRAIN_BREAKS),
    cache_into_the_dataset, cache_inside_the_dataset, cache_holding_the_dataset, cache_into_a_file,
    cache_into_a_folder_of_other_files, cache_out_empty, cache_copies_too_many, cache_root_unset, cache_pouring_record_climbs_out,
    cache_kinetics_list_names_an_absolute_path, train_kinetics_list_climbs_out,
    prepare_pouring_record_climbs_out, prepare_pouring_record_absolute, prepare_pouring_record_name_is_a_path,
    prepare_pouring_duplicate_names, prepare_pouring_video_links_out, prepare_pouring_pickle_links_out,
    prepare_pouring_empty_pickle, prepare_into_the_source, prepare_inside_the_source, prepare_around_the_source,
    prepare_into_a_file, prepare_source_unset, prepare_destination_unset, prepare_penn_no_record_in_any_action, prepare_penn_indices_not_numbers,
    prepare_penn_record_climbs_out, prepare_penn_official_phases_link_out, prepare_penn_official_frames_link_out,
    prepare_penn_official_frame_image_links_out, prepare_penn_official_label_file_links_out,
    prepare_finegym_record_climbs_out, prepare_finegym_empty_val, prepare_kinetics_list_absolute,
    prepare_kinetics_list_climbs_out, prepare_kinetics_list_empty_path, prepare_kinetics_list_path_holds_a_nul,
    prepare_kinetics_list_not_csv,
    prepare_kinetics_list_not_utf8, prepare_kinetics_list_links_out, prepare_kinetics_all_unreadable,
    prepare_kinetics_youtube_id_is_a_path, prepare_kinetics_label_is_a_path, prepare_kinetics_time_is_infinite,
    prepare_kinetics_header_only, prepare_kinetics_class_folder_links_out, prepare_kinetics_empty_folder,
    synthetic_into_an_existing_dataset, synthetic_overwrite_never_deletes_other_files, synthetic_into_a_file,
    synthetic_negative_seed, synthetic_odd_size, synthetic_huge_size, synthetic_no_train_videos,
    synthetic_too_many_videos,
]


@pytest.mark.parametrize("build", CASES, ids=lambda build: build.__name__)
def test_bad_dataset_input(build, sources, tmp_path, capsys):
    case = build(World(tmp_path, sources))
    case.name = build.__name__
    run_case(case, capsys)
