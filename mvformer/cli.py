"""The `mvformer` command. Thin: parses arguments and calls the library; user errors become one line."""

import argparse
import json
import os
import sys
from pathlib import Path

from mvformer.errors import MVFormerError
from mvformer.progress import NO_PROGRESS_VARIABLE


def _cmd_demo(args) -> None:
    from mvformer.demo import run_demo
    run_demo(Path(args.out), args.seeds, args.set)


def _cmd_train(args) -> None:
    from mvformer.config import load_config
    from mvformer.train import train
    config = load_config(args.config, args.set)
    result = train(config, resume=args.resume)
    print(f"checkpoint and metrics in {result.run_dir}")
    if result.final_metrics:
        print(json.dumps(result.final_metrics, indent=2))


def _cmd_evaluate(args) -> None:
    from mvformer.evaluation.report import evaluate_checkpoint
    evaluate_checkpoint(args.checkpoint, data_roots=args.data, out_dir=args.out)


def _cmd_evaluate_embeddings(args) -> None:
    from mvformer.evaluation.embeddings_io import format_table, score_files
    if args.json and not Path(args.json).parent.is_dir():
        raise MVFormerError(f"{args.json}: the folder to write it in does not exist")
    result = score_files(args.files, stride=args.stride, fractions=args.fractions, ks=args.ks, tasks=args.tasks,
                         classifier=args.classifier, num_classes=args.num_classes,
                         note=lambda line: print(line, file=sys.stderr))
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")


def _cmd_synthetic(args) -> None:
    from mvformer.data.synthetic import generate_pouring_dataset
    root = generate_pouring_dataset(args.dest, num_train=args.train, num_val=args.val, seed=args.seed, size=args.size)
    print(f"wrote synthetic pouring videos in {root}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mvformer", description=__doc__.splitlines()[0].split(". ")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def add(name: str, handler, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        sub.add_argument("--no-progress", action="store_true", help="no progress bars")
        return sub

    demo = add("demo", _cmd_demo, "synthetic videos, five models, one metrics table (minutes on a CPU)")
    demo.add_argument("--out", default="runs/demo", help="run folder (default: runs/demo)")
    demo.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (table shows mean ± 2 std)")
    demo.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override demo.yaml")

    train = add("train", _cmd_train, "self-supervised SCL training from a YAML config")
    train.add_argument("config", help="a YAML file or a shipped config name (e.g. penn_action, demo)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="dotted override, e.g. --set model.num_tokens=5 (repeatable)")
    train.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint")

    evaluate = add("evaluate", _cmd_evaluate, "embed every frame of a dataset with a checkpoint and score it")
    evaluate.add_argument("checkpoint", help="checkpoint.pt or a run folder holding one")
    evaluate.add_argument("--data", nargs="+", metavar="ROOT",
                          help="dataset roots, each reported on its own and averaged (e.g. the 13 Penn Action "
                               "actions; default: the dataset the model was trained on)")
    evaluate.add_argument("--out", help="output folder (default: RUN/eval)")

    scores = add("evaluate-embeddings", _cmd_evaluate_embeddings,
                 "score frame embeddings of any model saved as .npz (one file per dataset)")
    scores.add_argument("files", nargs="+", metavar="FILE.npz",
                        help="train_/val_ embs (frames, D), labels (frames,), lens (videos,); e.g. embeddings.npz")
    scores.add_argument("--stride", type=int, default=1, help="tau and AP@K use every stride-th frame (default: 1)")
    scores.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.5, 1.0],
                        help="training-video fractions for classification and progression (default: 0.1 0.5 1.0)")
    scores.add_argument("--ks", type=int, nargs="+", default=[5, 10, 15], help="AP@K values (default: 5 10 15)")
    scores.add_argument("--tasks", nargs="+", choices=("classification", "progression", "kendalls_tau", "retrieval"),
                        metavar="TASK", help="any of %(choices)s (default: all)")
    scores.add_argument("--classifier", choices=("logistic", "sgd-linear"), default="logistic",
                        help="classification probe: logistic regression, or FineGym's linear layer trained with SGD")
    scores.add_argument("--num-classes", type=int, help="phases (default: largest label in train or val + 1)")
    scores.add_argument("--json", metavar="OUT", help="also write the scores as JSON")

    synthetic = add("synthetic", _cmd_synthetic, "write the synthetic pouring dataset (generic layout)")
    synthetic.add_argument("dest")
    synthetic.add_argument("--train", type=int, default=48)
    synthetic.add_argument("--val", type=int, default=24)
    synthetic.add_argument("--size", type=int, default=64)
    synthetic.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.no_progress:
        os.environ[NO_PROGRESS_VARIABLE] = "1"
    try:
        args.handler(args)
    except MVFormerError as error:
        print(f"mvformer: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mvformer: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
