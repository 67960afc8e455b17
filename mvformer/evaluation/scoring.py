"""Scoring a model's embeddings the way every result of this project is reported: the protocol metrics beside
the controls a sceptical reader asks for. The one scorer of training's evaluation and `mvformer evaluate`."""

from collections.abc import Callable

from mvformer.config import EvalConfig
from mvformer.evaluation.embed import EvaluationSet, score_sets
from mvformer.evaluation.metrics import mean_of_metrics
from mvformer.evaluation.spread import embedding_spread, health_record, warning_line
from mvformer.evaluation.time_only import no_gain_line, time_only_metrics
from mvformer.model.mvformer import MVFormer
from mvformer.progress import note


def score_with_controls(sets: list[EvaluationSet], embedded: list[tuple[list, list]], model: MVFormer,
                        cfg: EvalConfig, say: Callable[[str], None] = note) -> dict:
    """`score_sets` plus the time-only row (the same videos embedded by relative time alone through `model`'s
    sinusoidal code, no training) and each set's spread (a collapsed embedding is flagged and the metrics it
    makes meaningless are marked); warnings go to `say`, one line each.

    {"datasets": ..., "mean": ..., "time_only": {"datasets", "mean"}, "health": {name: record}, "collapsed"}."""
    result = score_sets(sets, embedded, cfg)
    time_only = {dataset.name: time_only_metrics(
        [r.labels for r in dataset.train.records], [r.labels for r in dataset.val.records], dataset.train.num_classes,
        model.model_cfg.hidden_size, model.train_len, cfg.fractions, cfg.ks, cfg.stride, cfg.tasks, cfg.classifier)
        for dataset in sets}
    result["time_only"] = {"datasets": time_only, "mean": mean_of_metrics(list(time_only.values()))}
    result["health"] = {}
    for dataset, (train_embs, val_embs) in zip(sets, embedded):
        spread = embedding_spread(train_embs + val_embs)
        result["health"][dataset.name] = health_record(result["datasets"][dataset.name], spread)
        line = warning_line(spread, result["health"][dataset.name]["unreliable"])
        if line:
            say(f"{dataset.name}: {line}")
    result["collapsed"] = any(health["collapsed"] for health in result["health"].values())
    line = no_gain_line(result["mean"], result["time_only"]["mean"])
    if line:
        say(line)
    return result
