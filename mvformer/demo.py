"""The embedded demo: synthetic pouring videos, three models and three controls, one table.

Rows: MV-Former; late fusion (one CLS vector per frame); MV-Former without time encoding (its tau can
only come from vision); and three controls that show what needs no seeing: the untrained MV-Former,
a time-only model (the same head trained with its visual input zeroed) and relative time alone
through the sinusoidal code.
"""

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mvformer.apps.pictures import write_demo_pictures
from mvformer.checkpoint import load_model
from mvformer.config import Config, apply_overrides, config_from_dict, load_config
from mvformer.data.datasets import VideoDataset, has_generic_split
from mvformer.data.synthetic import generate_pouring_dataset
from mvformer.evaluation.embed import evaluate_model
from mvformer.evaluation.time_only import time_only_metrics
from mvformer.model.backbone import build_backbone
from mvformer.model.mvformer import build_model
from mvformer.runs import read_log
from mvformer.runtime import resolve_device, seed_everything
from mvformer.train.loop import train
from mvformer.viz import plot_training_curves


@dataclass(frozen=True)
class Variant:
    label: str
    overrides: tuple[str, ...]
    trained: bool = True


VARIANTS = (
    Variant("MV-Former", ()),
    Variant("Late fusion (CLS)", ("model.pooling=cls", "model.num_tokens=1")),
    Variant("MV-Former, no time encoding", ("model.time_encoding=none",)),
    Variant("Control: untrained MV-Former", (), trained=False),
    Variant("Control: time only (visual input zeroed)", ("model.zero_visual_input=true",)),
)
OBJECTIVE_LABELS = {"scl": "SCL", "tcc": "TCC", "tcn": "TCN", "classification": "supervised"}


def demo_variants(objectives: list[str]) -> tuple[Variant, ...]:
    """The demo's rows: MV-Former trained with each objective (SCL alone: the classic table), then the baseline,
    the ablation and the controls, all with SCL."""
    if objectives == ["scl"]:
        return VARIANTS
    trained = tuple(Variant(f"MV-Former ({OBJECTIVE_LABELS[objective]})", (f"train.objective={objective}",))
                    for objective in objectives)
    return trained + VARIANTS[1:]
COLUMNS = (("classification", "classification", "1.0"), ("progression", "progression", "1.0"),
           ("tau", "kendalls_tau", None), ("AP@5", "retrieval", "5"), ("AP@10", "retrieval", "10"),
           ("AP@15", "retrieval", "15"))


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in label.lower()).strip("_").replace("__", "_")


def _row(metrics: dict) -> list[float]:
    return [metrics[group] if key is None else metrics[group][key] for _, group, key in COLUMNS]


def run_variant(variant: Variant, base: Config, seed: int, run_dir: Path, train_set: VideoDataset,
                val_set: VideoDataset, backbone) -> tuple[list[float], list[tuple[int, float]]]:
    """Train (or not) one variant with one seed; returns its metric row and its loss curve."""
    tree = apply_overrides(base.to_dict(), list(variant.overrides))
    tree["name"] = f"{variant.label} (seed {seed})"
    tree["train"].update(seed=seed, output_dir=str(run_dir / f"{_slug(variant.label)}_seed{seed}"))
    config = config_from_dict(tree, "demo")
    if not variant.trained:
        seed_everything(seed)
        device = resolve_device(config.train.device)
        model = build_model(config, backbone).to(device).eval()
        return _row(evaluate_model(model, train_set, val_set, config.eval, device)), []
    result = train(config, train_set, val_set, backbone=backbone)
    curve = [(record.epoch, record.loss) for record in read_log(result.run_dir).epochs]
    return _row(result.final_metrics), curve


def format_table(rows: dict[str, np.ndarray]) -> str:
    """Markdown table; with several seeds each cell is mean ± 2 standard deviations."""
    header = "| model | " + " | ".join(name for name, _, _ in COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(COLUMNS) + 1)]
    for label, values in rows.items():  # values (seeds, columns)
        if len(values) == 1:
            cells = [f"{v:.3f}" for v in values[0]]
        else:
            cells = [f"{m:.3f} ± {2 * s:.3f}" for m, s in zip(values.mean(0), values.std(0, ddof=1))]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_demo(out_dir: Path, seeds: list[int], config_overrides: list[str] = (), log=print,
             objectives: list[str] = ("scl",)) -> dict[str, np.ndarray]:
    """Generate the synthetic set (once), run every variant for every seed, write the results."""
    variants = demo_variants(list(objectives))
    out_dir = Path(out_dir)
    base = load_config("demo", [f"data.root={out_dir / 'data'}", *config_overrides])
    data_root = Path(base.data.root)
    started = time.perf_counter()
    if not has_generic_split(data_root, "val"):
        log(f"generating synthetic pouring videos in {data_root} ...")
        generate_pouring_dataset(data_root, seed=0, size=base.data.image_size)
    train_set = VideoDataset(data_root, "train", size=base.data.image_size, preload=True)
    val_set = VideoDataset(data_root, "val", size=base.data.image_size, preload=True)
    log(f"data: {len(train_set)} train / {len(val_set)} val videos, {train_set.num_classes} phases "
        f"({time.perf_counter() - started:.0f} s)")
    backbone = build_backbone(base.backbone.name, base.backbone.blocks, path=base.backbone.path,
                              image_size=base.data.image_size, chunk_size=base.backbone.chunk_size)
    rows, curves = {}, {}
    for variant in variants:
        results = []
        for seed in seeds:
            row, curve = run_variant(variant, base, seed, out_dir, train_set, val_set, backbone)
            results.append(row)
            if curve and seed == seeds[0]:
                curves[variant.label] = curve
            log(f"{variant.label} (seed {seed}): " + ", ".join(
                f"{name} {value:.3f}" for (name, _, _), value in zip(COLUMNS, row)))
        rows[variant.label] = np.array(results, dtype=float)
    time_only = time_only_metrics([r.labels for r in train_set.records], [r.labels for r in val_set.records],
                                  train_set.num_classes, base.model.hidden_size, base.data.clip_len, base.eval.fractions,
                                  base.eval.ks, base.eval.stride, classifier=base.eval.classifier)
    rows["Control: time only (relative time through the sinusoidal code)"] = np.array([_row(time_only)] * len(seeds))
    table = format_table(rows)
    seeds_text = f"seeds {', '.join(map(str, seeds))}; mean ± 2 std" if len(seeds) > 1 else f"seed {seeds[0]}"
    summary = (f"# mvformer demo: synthetic pouring, validation set ({seeds_text})\n\n{table}\n\n"
               f"classification and progression use all training videos (fraction 1.0); "
               f"tau and AP@K use stride {base.eval.stride}. Total time {time.perf_counter() - started:.0f} s.\n")
    (out_dir / "results.md").write_text(summary)
    (out_dir / "results.json").write_text(json.dumps({
        "seeds": seeds, "columns": [name for name, _, _ in COLUMNS],
        "rows": {label: values.tolist() for label, values in rows.items()}}, indent=2))
    plot_training_curves(curves, out_dir / "training_curves.png")
    log("\n" + summary)
    log(f"wrote {out_dir / 'results.md'}, {out_dir / 'results.json'}, {out_dir / 'training_curves.png'}")
    mvformer_run = out_dir / f"{_slug(variants[0].label)}_seed{seeds[0]}"
    write_demo_pictures(load_model(mvformer_run, base.train.device), data_root, out_dir / "pictures")
    log(f"wrote pictures of embed, align, retrieve, attention and progress in {out_dir / 'pictures'}")
    return rows
