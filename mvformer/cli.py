"""The `mvformer` command. Thin: parses arguments and calls the library; user errors become one line."""

import argparse
import json
import os
import sys
from pathlib import Path
from typing import get_args

from mvformer.config import AlignMethod, AnimationFormat, AppFrames, Classifier, Device, Objective, Task
from mvformer.errors import MVFormerError
from mvformer.progress import NO_PROGRESS_VARIABLE


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are MVFormerError, so that main prints them as the one line every user
    error gets (exit status 2) instead of argparse's usage block."""

    def error(self, message: str):
        command = self.prog.partition(" ")[2]
        raise MVFormerError(f"{command + ': ' if command else ''}{message} (see {self.prog} --help)")


def int_in(low: int, high: int):
    """argparse type: a whole number in [low, high] (sizes and counts have sane upper bounds)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is outside [{low}, {high}]")
        return value
    return parse


def float_in(low: float, high: float, low_open: bool = False):
    """argparse type: a finite number in [low, high], or (low, high] with `low_open`."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (low < value <= high if low_open else low <= value <= high):  # NaN fails too
            raise argparse.ArgumentTypeError(f"{text} is outside {'(' if low_open else '['}{low:g}, {high:g}]")
        return value
    return parse


def _cmd_demo(args) -> None:
    from mvformer.demo import run_demo
    run_demo(Path(args.out), args.seeds, args.set, objectives=args.objective)


def _cmd_train(args) -> None:
    from mvformer.config import load_config
    from mvformer.train.loop import train
    config = load_config(args.config, args.set)
    result = train(config, resume=args.resume)
    print(f"checkpoint and metrics in {result.run_dir}")
    if result.final_metrics:
        print(json.dumps(result.final_metrics, indent=2))


def _cmd_evaluate(args) -> None:
    from mvformer.apps.evaluate import evaluate_checkpoint
    report = evaluate_checkpoint(args.checkpoint, data_roots=args.data, out_dir=args.out, overwrite=args.overwrite)
    print(report.table)
    print(f"wrote {report.out_dir / 'metrics.json'}, the embeddings (DATASET.npz) and alignment.png")


def _cmd_evaluate_embeddings(args) -> None:
    from mvformer.evaluation.embeddings_io import format_table, score_files
    from mvformer.evaluation.time_only import no_gain_line, time_only_files
    from mvformer.files import check_outputs, write_text
    from mvformer.progress import note
    if args.json:
        check_outputs([args.json], args.overwrite, inputs=args.files)
        if not Path(args.json).parent.is_dir():
            raise MVFormerError(f"{args.json}: the folder to write it in does not exist")
    options = {"stride": args.stride, "fractions": args.fractions, "ks": args.ks, "tasks": args.tasks,
               "classifier": args.classifier, "num_classes": args.num_classes}
    result = score_files(args.files, **options)
    result["time_only"] = time_only_files(args.files, **options)
    print(format_table(result, {"time only": result["time_only"]["mean"]}))
    line = no_gain_line(result["mean"], result["time_only"]["mean"])
    if line:
        note(line)
    if args.json:
        write_text(args.json, json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")


def _cmd_export(args) -> None:
    from mvformer.checkpoint import export_checkpoint
    out = export_checkpoint(args.checkpoint, args.out, overwrite=args.overwrite)
    print(f"wrote config.json, model.safetensors and README.md in {out}")


def _cmd_cache_features(args) -> None:
    from mvformer.config import load_config
    from mvformer.features.build import cache_features
    cache_features(load_config(args.config, args.set), out_dir=args.out, copies=args.copies)


def _cmd_prepare(args) -> None:
    from mvformer.data.formats.prepare import prepare
    dest = prepare(args.format, args.src, args.dest, subset=args.subset)
    print(f"generic layout in {dest}")


def _cmd_embed(args) -> None:
    from mvformer.apps.embed import embed_command
    written = embed_command(args.checkpoint, args.videos, args.out, overwrite=args.overwrite, device=args.device,
                            frames=args.frames)
    print(f"wrote {len(written)} embedding files (.npy, frames x D, each with a .json) in {args.out}")


def _cmd_align(args) -> None:
    from mvformer.apps.align import align_command, align_outputs
    align_command(args.checkpoint, args.reference, args.videos, args.out, method=args.method, overwrite=args.overwrite,
                  device=args.device, frames=args.frames, height=args.height, fps=args.fps)
    print("wrote " + ", ".join(map(str, align_outputs(Path(args.out)))))


def _cmd_retrieve(args) -> None:
    from mvformer.apps.retrieve import parse_frame_reference, retrieve_command
    video, frame = parse_frame_reference(args.query)
    matches = retrieve_command(args.checkpoint, video, frame, args.gallery, args.out, k=args.k,
                               include_query_video=args.include_query_video, overwrite=args.overwrite,
                               device=args.device, frames=args.frames)
    for rank, match in enumerate(matches, start=1):
        print(f"{rank:3d}  {match.video.source}:{match.frame}  distance {match.distance:.4f}")
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.csv')}")


def _cmd_attention(args) -> None:
    from mvformer.apps.attention import attention_command, attention_outputs
    attention_command(args.checkpoint, args.video, args.out, overwrite=args.overwrite, device=args.device,
                      frames=args.frames, every=args.every, animation=args.format)
    print("wrote " + ", ".join(map(str, attention_outputs(Path(args.out), args.format))))


def _cmd_progress(args) -> None:
    from mvformer.apps.progress import progress_command
    result = progress_command(args.checkpoint, args.reference, args.video, args.out, split=args.reference_split,
                              overwrite=args.overwrite, device=args.device, frames=args.frames)
    heldout = "none, one labelled reference video" if result.heldout_r2 is None else f"{result.heldout_r2:.3f}"
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.csv')} (regressor R^2 on reference videos left out "
          f"of the fit in turn: {heldout})")


def _cmd_label(args) -> None:
    from mvformer.apps.label import label_command, split_videos
    videos = args.videos if args.split is None else split_videos(args.reference, args.split)
    labelled = label_command(args.checkpoint, args.reference, videos, args.out, method=args.method,
                             references=args.references, split=args.reference_split, score=args.score,
                             overwrite=args.overwrite, device=args.device, frames=args.frames)
    print(f"labelled {len(labelled)} videos: a dataset in {args.out} (split 'all'; per-frame confidence in "
          f"confidence/, summary in transfer.json)")


def _cmd_report(args) -> None:
    from mvformer.apps.report import report_command
    index = report_command(args.checkpoint, args.out, videos=args.videos, overwrite=args.overwrite,
                           device=args.device, frames=args.frames, frame=args.frame)
    print(f"wrote {index} (open it in a browser; no server needed)")


def _cmd_synthetic(args) -> None:
    from mvformer.data.synthetic import generate_pouring_dataset
    root = generate_pouring_dataset(args.dest, num_train=args.train, num_val=args.val, seed=args.seed, size=args.size,
                                    overwrite=args.overwrite)
    print(f"wrote synthetic pouring videos in {root}")


def _cmd_convert_backbone(args) -> None:
    from mvformer.model.weights import convert_backbone
    summary = convert_backbone(args.file, args.out_dir, num_heads=args.num_heads, overwrite=args.overwrite)
    print(f"wrote config.json and model.safetensors in {args.out_dir} ({summary}); set backbone.path to that folder")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mvformer", description=__doc__.splitlines()[0].split(". ")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def add(name: str, handler, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        sub.add_argument("--no-progress", action="store_true", help="no progress bars")
        return sub

    demo = add("demo", _cmd_demo, "synthetic videos, three models and three controls, one metrics table (minutes)")
    demo.add_argument("--out", default="runs/demo", help="run folder (default: runs/demo)")
    demo.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (table shows mean ± 2 std)")
    demo.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override demo.yaml")
    demo.add_argument("--objective", nargs="+", default=["scl"], choices=get_args(Objective),
                      help="train MV-Former with each objective, one row each (default: scl)")

    train = add("train", _cmd_train, "training (SCL, TCC, TCN or supervised: train.objective) from a YAML config")
    train.add_argument("config", help="a YAML file or a shipped config name (e.g. penn_action, demo)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="dotted override, e.g. --set model.num_tokens=5 (repeatable)")
    train.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint")

    evaluate = add("evaluate", _cmd_evaluate, "embed every frame of a dataset with a checkpoint and score it")
    evaluate.add_argument("checkpoint", help="a run folder, its checkpoint.pt, an export folder or an export's "
                                             "Hub id (ORG/NAME[@REVISION])")
    evaluate.add_argument("--data", nargs="+", metavar="ROOT",
                          help="dataset roots, each reported on its own and averaged (e.g. the 13 Penn Action "
                               "actions; default: the dataset the model was trained on)")
    evaluate.add_argument("--out", help="output folder (default: RUN/eval)")
    evaluate.add_argument("--overwrite", action="store_true", help="replace the results already in the folder")

    scores = add("evaluate-embeddings", _cmd_evaluate_embeddings,
                 "score frame embeddings of any model saved as .npz (one file per dataset)")
    scores.add_argument("files", nargs="+", metavar="FILE.npz",
                        help="train_/val_ embs (frames, D), labels (frames,), lens (videos,); e.g. embeddings.npz")
    scores.add_argument("--stride", type=int_in(1, 100_000), default=1,
                        help="tau and AP@K use every stride-th frame (default: 1)")
    scores.add_argument("--fractions", type=float_in(0, 1, low_open=True), nargs="+", default=[0.1, 0.5, 1.0],
                        help="training-video fractions for classification and progression (default: 0.1 0.5 1.0)")
    scores.add_argument("--ks", type=int_in(1, 100_000), nargs="+", default=[5, 10, 15],
                        help="AP@K values (default: 5 10 15)")
    scores.add_argument("--tasks", nargs="+", choices=get_args(Task),
                        metavar="TASK", help="any of %(choices)s (default: all)")
    scores.add_argument("--classifier", choices=get_args(Classifier), default="logistic",
                        help="classification probe: logistic regression, or FineGym's linear layer trained with SGD")
    scores.add_argument("--num-classes", type=int_in(1, 10_000),
                        help="phases (default: largest label in train or val + 1)")
    scores.add_argument("--json", metavar="OUT", help="also write the scores as JSON")
    scores.add_argument("--overwrite", action="store_true", help="replace the JSON file if it exists")

    export = add("export", _cmd_export, "save a training checkpoint as a shareable folder (JSON config, "
                 "safetensors weights, model card)")
    export.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT", help="checkpoint.pt or a run folder holding one")
    export.add_argument("--out", required=True, metavar="DIR", help="folder to write")
    export.add_argument("--overwrite", action="store_true", help="replace an earlier export")

    cache = add("cache-features", _cmd_cache_features, "run the frozen backbone once over a dataset and store its "
                "tokens; train and evaluate then read them when the config matches")
    cache.add_argument("config", help="a YAML file or a shipped config name")
    cache.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="dotted override (repeatable)")
    cache.add_argument("--copies", type=int, default=0, metavar="K",
                       help="also store K augmented copies of every training frame (default: 0)")
    cache.add_argument("--out", metavar="DIR", help="cache folder (default: data.feature_cache, or one under "
                       "$MVFORMER_CACHE_DIR or ~/.cache/mvformer)")

    prep = add("prepare", _cmd_prepare, "convert a benchmark download into the generic layout (hard links, "
               "resumable, never overwrites files it did not write)")
    prep.add_argument("format", metavar="FORMAT", help="penn_action, pouring, finegym or kinetics400")
    prep.add_argument("src", metavar="SRC", help="the dataset as published (see mvformer/data/formats.py)")
    prep.add_argument("dest", metavar="DEST", help="folder to write (penn_action: one root per action and all/)")
    prep.add_argument("--subset", help="Penn Action action (default: all, each in its own root) or FineGym 99 / 288")

    def add_app(name: str, handler, help_text: str) -> argparse.ArgumentParser:
        """A command that runs a trained model on videos: checkpoint first, shared options."""
        sub = add(name, handler, help_text)
        sub.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT", help="checkpoint.pt, a run folder holding one, "
                         "an export folder or an export's Hub id (ORG/NAME[@REVISION])")
        sub.add_argument("--frames", choices=get_args(AppFrames), default="squash",
                         help="fit frames to the model's square input as its training data was (default: "
                              "squashed, or for a data.frames native model its central square at native size) or "
                              "by a centre crop")
        sub.add_argument("--device", choices=get_args(Device), default="auto")
        sub.add_argument("--overwrite", action="store_true", help="replace outputs that already exist")
        return sub

    embed = add_app("embed", _cmd_embed, "per-frame embeddings of any videos, saved as .npy (frames x D) + .json")
    embed.add_argument("videos", nargs="+", metavar="VIDEO",
                       help="video files, frame folders, or folders of them (a dataset root: its videos/)")
    embed.add_argument("--out", required=True, metavar="DIR", help="folder for NAME.npy and NAME.json")

    align = add_app("align", _cmd_align, "align videos to a reference; side-by-side video, path CSV, cost matrix PNG")
    align.add_argument("reference", metavar="A", help="the reference video; the output follows its timeline")
    align.add_argument("videos", nargs="+", metavar="B", help="videos to align to A (several: a grid)")
    align.add_argument("--out", required=True, metavar="FILE", help=".mp4 or .gif; FILE_path.csv and FILE_cost.png "
                       "are written beside it")
    align.add_argument("--method", choices=get_args(AlignMethod), default="dtw",
                       help="dynamic time warping (monotone) or each frame's nearest neighbour (default: dtw)")
    align.add_argument("--height", type=int_in(16, 4096), default=192,
                       help="pixel height of each video in the output, 16 to 4096 (default: 192)")
    align.add_argument("--fps", type=float_in(0.1, 1000),
                       help="frame rate of the output, 0.1 to 1000 (default: the reference's)")

    retrieve = add_app("retrieve", _cmd_retrieve, "the K nearest frames to a query frame across a folder of videos")
    retrieve.add_argument("--query", required=True, metavar="VIDEO:FRAME", help="query video and 0-based frame")
    retrieve.add_argument("--gallery", required=True, nargs="+", metavar="DIR",
                          help="folders of videos (or video files) to search")
    retrieve.add_argument("-k", type=int_in(1, 100), default=8, help="frames to retrieve, 1 to 100 (default: 8)")
    retrieve.add_argument("--include-query-video", action="store_true",
                          help="search the query's own video too (by default it is left out: its neighbouring "
                               "frames, the query first, would fill the sheet)")
    retrieve.add_argument("--out", default="retrieval.png", metavar="FILE.png",
                          help="contact sheet; FILE.csv beside it (default: retrieval.png)")

    attention = add_app("attention", _cmd_attention, "each entity token's pooling attention over the frames "
                        "(LSTP models)")
    attention.add_argument("video")
    attention.add_argument("--out", required=True, metavar="DIR",
                           help="folder for attention.npy, attention_strip.png and the animation")
    attention.add_argument("--every", type=int_in(1, 10_000), default=1, metavar="N",
                           help="animate every N-th frame (default: 1)")
    attention.add_argument("--format", choices=get_args(AnimationFormat), default="mp4",
                           help="animation format (default: mp4, H.264; a gif is many times larger and slower)")

    progress = add_app("progress", _cmd_progress, "phase progress of a video, regressed from labelled reference "
                       "videos")
    progress.add_argument("--reference", required=True, metavar="ROOT",
                          help="labelled dataset root in the generic layout (videos/, labels/, splits/)")
    progress.add_argument("--reference-split", default="train", metavar="NAME",
                          help="split of ROOT to fit on (default: train)")
    progress.add_argument("--video", required=True)
    progress.add_argument("--out", default="progress.png", metavar="FILE.png",
                          help="plot; FILE.csv beside it (default: progress.png)")

    label = add_app("label", _cmd_label, "label every frame of videos from labelled reference videos, along "
                    "their alignment; writes a dataset")
    label.add_argument("--reference", required=True, metavar="ROOT",
                       help="labelled dataset root in the generic layout (videos/, labels/, splits/)")
    label.add_argument("--reference-split", default="train", metavar="NAME",
                       help="split of ROOT whose videos lend their labels (default: train)")
    targets = label.add_mutually_exclusive_group(required=True)
    targets.add_argument("--videos", nargs="+", metavar="VIDEO",
                         help="video files, frame folders, or folders of them (a dataset root: its videos/)")
    targets.add_argument("--split", metavar="NAME",
                         help="label the videos of split NAME of ROOT (e.g. val; with --score, their hand labels "
                              "are the truth)")
    label.add_argument("--out", required=True, metavar="DIR", help="folder to write the labelled dataset in")
    label.add_argument("--method", choices=get_args(AlignMethod), default="dtw",
                       help="pair frames by dynamic time warping or nearest neighbours (default: dtw)")
    label.add_argument("--references", type=int, metavar="K",
                       help="only the K references of least alignment cost vote (default: all)")
    label.add_argument("--score", action="store_true",
                       help="compare with the videos' hand labels (ROOT/labels/NAME.csv) and with transfer by "
                            "relative time alone")

    report = add_app("report", _cmd_report, "an HTML report of a run: metrics with the time-only row, training "
                     "curves, an alignment viewer, retrieval, attention")
    report.add_argument("--videos", nargs="+", metavar="VIDEO",
                        help="videos for the alignment viewer, the first the reference (default: the first "
                             "validation videos of the run's dataset)")
    report.add_argument("--out", required=True, metavar="DIR", help="folder for index.html and its files")
    report.add_argument("--frame", type=int, metavar="N",
                        help="reference frame of the retrieval sheet (default: the middle one)")

    synthetic = add("synthetic", _cmd_synthetic, "write the synthetic pouring dataset (generic layout)")
    synthetic.add_argument("dest")
    synthetic.add_argument("--train", type=int, default=48)
    synthetic.add_argument("--val", type=int, default=24)
    synthetic.add_argument("--size", type=int, default=64)
    synthetic.add_argument("--seed", type=int, default=0)
    synthetic.add_argument("--overwrite", action="store_true",
                           help="replace DEST when it already holds a dataset (never a folder holding other files)")

    convert = add("convert-backbone", _cmd_convert_backbone, "write an original DINO / timm ViT or torchvision "
                  "ResNet weights file (.pth, .safetensors) as a transformers save_pretrained folder")
    convert.add_argument("file", metavar="FILE", help="e.g. dino_vitbase8_pretrain.pth or a DINO training checkpoint")
    convert.add_argument("out_dir", metavar="OUT_DIR", help="folder for config.json and model.safetensors")
    convert.add_argument("--num-heads", type=int, metavar="H",
                         help="ViT attention heads (default: from the width; 384 -> 6, 768 -> 12)")
    convert.add_argument("--overwrite", action="store_true", help="replace a model already in OUT_DIR")
    return parser


def _user_error(message: str) -> int:
    """Print a user error as its one line (line breaks in a file name shown as \\n) and return exit status 2."""
    print(f"mvformer: error: {message}".replace("\r", "\\r").replace("\n", "\\n"), file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.no_progress:
            os.environ[NO_PROGRESS_VARIABLE] = "1"
        args.handler(args)
    except MVFormerError as error:
        return _user_error(str(error))
    except OSError as error:  # a path the system refuses (too long, no permission, disk full): still one line
        if error.filename is None:
            raise
        return _user_error(f"{error.filename}: {error.strerror or error}")
    except KeyboardInterrupt:
        print("mvformer: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
