"""The benchmark datasets in the layouts their publishers distribute, read in place or converted to the generic one.

`open_dataset(root, split, format, subset)` reads any of them as a VideoDataset; `prepare(format, src, dest)` writes
the generic layout of mvformer.data.datasets (hard links where possible, resumable). Accepted layouts, ROOT being
the folder you pass; record keys are those of the CARL (minghchen/CARL_code) and MV-Former
(facebookresearch/video_rep_learning) downloads:

penn_action   13 actions (PENN_ACTION_PHASES); each is its own dataset for evaluation (subset=ACTION), all of them
              pooled when subset is None. Frame labels are per-action phase indices 0..C-1.
  (a) preprocessed pickles (CARL / MV-Former download):
      ROOT/train.pkl, ROOT/val.pkl   the tuple (records, action_to_indices); action_to_indices is a list of 13 lists
                                     of record indices, in PENN_ACTION_PHASES order
      record: {"id": int, "name": "0001_baseball_pitch", "video_file": "videos/0001_baseball_pitch.mp4" (relative to
               ROOT), "frame_label": int tensor/array (seq_len,), "seq_len": int, "action_label": int}
  (b) official release (upenn.box.com/PennAction) plus per-frame phase labels:
      ROOT/frames/NNNN/NNNNNN.jpg    one folder of numbered frames per video
      ROOT/labels/NNNN.mat           MATLAB file with (among others) `action` (e.g. "pushup"), `nframes` and
                                     `train` (1 = training video, -1 = test video, used as val)
      ROOT/phases/**/NNNN.npy        phase labels: a 1-D integer array (nframes,) per video, found anywhere below
                                     ROOT/phases/ (or ROOT/penn_action_labels/); the CARL/TCC label download
                                     penn_action_labels/{train,val}/ACTION/NNNN.npy fits as it is, and there its
                                     train/ or val/ folder decides the split instead of the `train` flag.
      Videos are named NNNN_ACTION. jump_rope and strum_guitar (no published phases) are left out; a video of the
      13 actions without a phase file is left out and listed in `dataset.skipped`.
pouring       ROOT/train.pkl, ROOT/val.pkl, ROOT/test.pkl: a list of records {"id", "name", "video_file",
              "frame_label", "seq_len"} as above; 5 phases.
finegym       subset "99" or "288" (FineGym99 / FineGym288, required):
              ROOT/gym{99,288}_train_v1.0.pkl (or _v1.1) split train, ROOT/gym{99,288}_val.pkl split val,
              ROOT/additional_v1.0.pkl split additional (MV-Former's extra event videos);
              a list of records {"id", "name" (event id), "video_file": "processed_videos/EVENT.mp4",
              "seq_len", "frame_label": float or int (seq_len,), the sub-action class 0..98 / 0..287 of each frame,
              -1 between sub-actions, "event_label"}.
kinetics400   unlabelled, for pre-training; unreadable or missing videos are skipped and counted in
              `dataset.skipped`, never fatal:
              ROOT/annotations/SPLIT.csv or ROOT/SPLIT.csv with the official header label,youtube_id,time_start,
                  time_end,split: videos ROOT/SPLIT/[LABEL/]{youtube_id}_{time_start:06d}_{time_end:06d}.mp4;
              or such a CSV without header (CARL's list): first column a video path relative to ROOT, or to the
                  folder above when it starts with ROOT's name (CARL: Kinetics400/train/CLASS/ID.mp4);
              or no CSV: ROOT/SPLIT/CLASS/*.mp4 (class sub-folders) or ROOT/SPLIT/*.mp4.

Every record's length is checked against its video (frames counted from packets, or images of a frame folder):
a video that is missing, unreadable, or disagrees with its labels is an error naming the file, except in kinetics400.
Every path a layout names (pickle video_file, Kinetics list or CSV entry, Penn Action frames and phase files, the
pickles and lists themselves) must resolve inside ROOT (symbolic links followed; see mvformer.data.datasets), and
a split that lists no video, or the same name twice, is an error naming its file.
Pickles are read with a restricted unpickler: plain containers, numbers, strings, numpy arrays and torch tensors only.

One module per layout (penn_action, pouring, finegym, kinetics), records.py for what they share (the restricted
unpickler, record checks), prepare.py for `mvformer prepare`; this module is the registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mvformer.config import DataFormat, check_registry
from mvformer.data.datasets import (
    VideoDataset,
    VideoRecord,
    check_name,
    check_root,
    frame_count_inside,
    has_generic_split,
    inside_root,
)
from mvformer.data.formats import finegym, kinetics, penn_action, pouring
from mvformer.data.formats.penn_action import penn_action_actions
from mvformer.data.formats.records import Entry, Skipped
from mvformer.data.video import index_video
from mvformer.errors import MVFormerError
from mvformer.progress import progress_bar

__all__ = ["FORMATS", "DatasetFormat", "SplitRecords", "has_split", "open_dataset", "penn_action_actions"]


@dataclass(frozen=True)
class DatasetFormat:
    """How to read one published layout: which splits it has and, per split, its videos and labels."""

    name: str
    splits: Callable[[Path, str | None], list[str]]
    entries: Callable[[Path, str, str | None], tuple[list[Entry], Skipped]]
    num_classes: Callable[[str | None], int | None]
    subsets: tuple[str, ...] = ()  # allowed subset values; empty: no subsets
    subset_required: bool = False
    skip_unreadable: bool = False  # unlabelled pre-training sets: unreadable videos are skipped and counted

    def check_subset(self, subset: str | int | None) -> str | None:
        """The subset as a string (FineGym's 99 may come as a number), if this format has it."""
        subset = None if subset is None else str(subset)
        if subset is None and self.subset_required:
            raise MVFormerError(f"format {self.name} needs a subset: one of {', '.join(self.subsets)}")
        if subset is not None and subset not in self.subsets:
            allowed = f"one of {', '.join(self.subsets)}" if self.subsets else "none"
            raise MVFormerError(f"format {self.name} has no subset {subset!r} (subsets: {allowed})")
        return subset

    def read(self, root: str | Path, split: str, subset: str | None = None) -> SplitRecords:
        """The videos of one split, each inside the root, counted and checked against its labels (slow part: one
        index per video). A split whose videos were all left out is an error (each reader refuses an empty file);
        a subset may leave a split empty."""
        root, subset = check_root(root), self.check_subset(subset)
        entries, skipped = self.entries(root, split, subset)
        sources: dict[str, str] = {}
        for entry in entries:
            check_name(entry.name, entry.source)
            if entry.name in sources:
                raise MVFormerError(f"{entry.source}: video name {entry.name!r} appears twice in split {split} "
                                    f"(also {sources[entry.name]})")
            sources[entry.name] = entry.source
            inside_root(root, entry.path, entry.source)
        records, groups = [], []
        for entry in progress_bar(entries, desc=f"indexing {split} videos", unit="video"):
            try:
                num_frames = (frame_count_inside(root, entry.path, entry.source) if entry.path.is_dir()
                              else index_video(entry.path).num_frames)
            except MVFormerError as error:
                if not self.skip_unreadable:
                    raise
                skipped.append((entry.path, str(error).removeprefix(f"{entry.path}: ")))
                continue
            if entry.length is not None and entry.length != num_frames:
                raise MVFormerError(f"{entry.source}: says the video has {entry.length} frames but {entry.path} has "
                                    f"{num_frames}")
            if entry.labels is not None and len(entry.labels) != num_frames:
                raise MVFormerError(f"{entry.source}: has {len(entry.labels)} frame labels but {entry.path} has "
                                    f"{num_frames} frames")
            records.append(VideoRecord(entry.name, entry.path, num_frames, entry.labels))
            groups.append(entry.group)
        if skipped and not records:
            path, reason = skipped[0]
            raise MVFormerError(f"{root}: split {split} holds no readable videos: all {len(skipped)} were left out, "
                                f"e.g. {path} ({reason})")
        return SplitRecords(records, self.num_classes(subset), skipped, groups)


@dataclass
class SplitRecords:
    """A split as a format reader returns it, ready for VideoDataset.from_records."""

    records: list[VideoRecord]
    num_classes: int | None
    skipped: Skipped = field(default_factory=list)
    groups: list[str | None] = field(default_factory=list)  # per record: its Penn Action action

    def action(self, action: str) -> SplitRecords:
        """The videos of one Penn Action action."""
        keep = [i for i, group in enumerate(self.groups) if group == action]
        return SplitRecords([self.records[i] for i in keep], penn_action.num_classes(action), [], [action] * len(keep))


FORMATS = {
    "penn_action": DatasetFormat("penn_action", penn_action.splits, penn_action.entries, penn_action.num_classes,
                                 subsets=tuple(penn_action.PENN_ACTIONS)),
    "pouring": DatasetFormat("pouring", pouring.splits, pouring.entries, lambda subset: pouring.POURING_PHASES),
    "finegym": DatasetFormat("finegym", finegym.splits, finegym.entries, lambda subset: int(subset),
                             subsets=finegym.FINEGYM_SUBSETS, subset_required=True),
    "kinetics400": DatasetFormat("kinetics400", kinetics.splits, kinetics.entries, lambda subset: None,
                                 skip_unreadable=True),
}
check_registry(DataFormat, {"generic", *FORMATS})


def format_named(name: str) -> DatasetFormat:
    if name not in FORMATS:
        raise MVFormerError(f"unknown dataset format {name!r} (formats: generic, {', '.join(FORMATS)})")
    return FORMATS[name]


def open_dataset(root: str | Path, split: str, format: str = "generic", subset: str | None = None,
                 size: int | None = None, preload: bool = False) -> VideoDataset:
    """One split of a dataset in any accepted layout (module docstring) as a VideoDataset.

    subset: the Penn Action action (None: all 13 pooled) or FineGym "99" / "288".
    size, preload: as VideoDataset. Unreadable Kinetics videos are left out and listed in `dataset.skipped`.
    """
    if format == "generic":
        if subset is not None:
            raise MVFormerError(f"{root}: the generic layout has no subsets (got {subset!r})")
        return VideoDataset(root, split, size, preload)
    data = format_named(format).read(root, split, subset)
    return VideoDataset.from_records(root, split, data.records, size=size, preload=preload,
                                     num_classes=data.num_classes, skipped=data.skipped)



def has_split(root: str | Path, format: str, split: str) -> bool:
    """Whether the dataset has `split` (only the generic layout can lack one)."""
    return format != "generic" or has_generic_split(root, split)
