"""Training end to end on a small synthetic set: the loss falls, alignment improves, checkpoints are safe."""

import json
import os
import shutil

import numpy as np
import pytest
import torch

import mvformer.train.loop
import mvformer.train.objectives
from mvformer.config import AugmentConfig, TrainConfig, load_config
from mvformer.data.datasets import VideoDataset
from mvformer.data.synthetic import generate_pouring_dataset
from mvformer.errors import MVFormerError
from mvformer.evaluation.embed import embed_split
from mvformer.evaluation.metrics import kendalls_tau
from mvformer.model.mvformer import build_model
from mvformer.train.clips import TrainingClips, augment_batch, epoch_batches
from mvformer.train.loop import learning_rate_factor, train
from mvformer.checkpoint import load_checkpoint, model_from_checkpoint
from mvformer.runs import read_log


@pytest.fixture(scope="module")
def pouring_root(tmp_path_factory):
    return generate_pouring_dataset(tmp_path_factory.mktemp("pouring"), num_train=12, num_val=4,
                                    min_frames=40, max_frames=56, seed=3)


@pytest.fixture(scope="module")
def splits(pouring_root):
    return (VideoDataset(pouring_root, "train", size=64, preload=True),
            VideoDataset(pouring_root, "val", size=64, preload=True))


def vision_only_config(root, out_dir, epochs, **extra):
    """The demo model without time encoding: any alignment it reaches must come from the frames."""
    overrides = [f"data.root={root}", f"train.output_dir={out_dir}", f"train.epochs={epochs}",
                 "model.time_encoding=none", "data.clip_len=24", "train.batch_size=1", "train.eval_every=1000"]
    return load_config("demo", overrides + [f"{k}={v}" for k, v in extra.items()])


@pytest.mark.slow
def test_training_lowers_the_loss_and_raises_tau_over_the_untrained_model(pouring_root, splits, tmp_path):
    train_set, val_set = splits
    config = vision_only_config(pouring_root, tmp_path / "run", epochs=20)
    torch.manual_seed(config.train.seed)
    untrained = build_model(config)
    tau_before = kendalls_tau(embed_split(untrained, val_set, torch.device("cpu")))

    result = train(config, train_set, val_set)
    losses = [r.loss for r in read_log(result.run_dir).epochs]
    tau_after = kendalls_tau(embed_split(result.model, val_set, torch.device("cpu")))
    assert np.mean(losses[-5:]) < 0.6 * losses[0]
    assert tau_after > tau_before + 0.3  # measured: about -0.01 before, 0.58 after
    assert result.final_metrics is not None and set(result.final_metrics) == {
        "classification", "progression", "kendalls_tau", "retrieval"}


def test_checkpoint_reloads_the_same_model_and_resume_continues(pouring_root, splits, tmp_path):
    train_set, val_set = splits
    config = vision_only_config(pouring_root, tmp_path / "run", epochs=2, **{"train.checkpoint_every": 1})
    result = train(config, train_set, val_set)
    assert not list(result.run_dir.glob("*.tmp"))
    reloaded = model_from_checkpoint(result.run_dir)
    frames = torch.randn(1, 5, 3, 64, 64)
    torch.testing.assert_close(reloaded(frames), result.model(frames))

    with pytest.raises(MVFormerError, match="already holds a checkpoint"):
        train(config, train_set, val_set)
    longer = vision_only_config(pouring_root, tmp_path / "run", epochs=3, **{"train.checkpoint_every": 1})
    with pytest.raises(MVFormerError, match="different config"):
        train(longer, train_set, val_set, resume=True)
    assert (load_checkpoint(result.run_dir)["epoch"], load_checkpoint(result.run_dir)["step"]) == (2, 0)


class Killed(Exception):
    pass


def test_resume_reaches_the_uninterrupted_result(pouring_root, splits, tmp_path, monkeypatch):
    train_set, val_set = splits
    whole = vision_only_config(pouring_root, tmp_path / "whole", epochs=2, **{"train.checkpoint_every": 1})
    whole_state = train(whole, train_set, val_set).model.trainable_state_dict()

    cut = vision_only_config(pouring_root, tmp_path / "cut", epochs=2, **{"train.checkpoint_every": 1})
    real_save = mvformer.train.loop.save_checkpoint

    def save_then_die(path, state):
        real_save(path, state)
        raise Killed  # the process dies right after its first checkpoint

    monkeypatch.setattr(mvformer.train.loop, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        train(cut, train_set, val_set)
    monkeypatch.setattr(mvformer.train.loop, "save_checkpoint", real_save)
    assert load_checkpoint(tmp_path / "cut")["epoch"] == 1
    resumed_state = train(cut, train_set, val_set, resume=True).model.trainable_state_dict()
    for key, value in whole_state.items():
        assert torch.equal(resumed_state[key], value), key


def test_resume_from_a_mid_epoch_checkpoint_is_bit_exact(pouring_root, splits, tmp_path, monkeypatch):
    train_set, val_set = splits
    settings = {"train.checkpoint_every_steps": 5, "train.checkpoint_every": 1, "model.dropout": 0.3}
    whole = vision_only_config(pouring_root, tmp_path / "whole", epochs=2, **settings)
    whole_state = train(whole, train_set, val_set).model.trainable_state_dict()

    cut = vision_only_config(pouring_root, tmp_path / "cut", epochs=2, **settings)
    real_save, saves = mvformer.train.loop.save_checkpoint, []

    def save_then_die_on_the_third(path, state):
        real_save(path, state)
        saves.append((state["epoch"], state["step"]))
        if len(saves) == 3:
            raise Killed

    monkeypatch.setattr(mvformer.train.loop, "save_checkpoint", save_then_die_on_the_third)
    with pytest.raises(Killed):
        train(cut, train_set, val_set)
    monkeypatch.setattr(mvformer.train.loop, "save_checkpoint", real_save)
    assert saves == [(0, 5), (0, 10), (1, 0)]  # 12 videos, batch 1: steps 5 and 10, then the epoch's end
    resumed_state = train(cut, train_set, val_set, resume=True).model.trainable_state_dict()
    for key, value in whole_state.items():
        assert torch.equal(resumed_state[key], value), key


def test_clip_draws_depend_on_seed_epoch_and_index_only(splits):
    train_set, _ = splits
    def clips_of(seed):
        return TrainingClips(train_set, clip_len=16, max_stretch=1.5, seed=seed)

    clips = clips_of(0)
    first = clips[3]
    again = clips_of(0)[3]
    for key in ("steps", "frames", "augment_seed"):
        assert torch.equal(first[key], again[key]), key
    assert first["frames"].shape == (2, 16, 64, 64, 3) and first["frames"].dtype == torch.uint8
    assert not torch.equal(clips_of(1)[3]["steps"], first["steps"])
    clips.epoch = 1
    assert not torch.equal(clips[3]["steps"], first["steps"])
    expected = train_set.frames(3)[first["steps"].numpy()]  # (2, 16, 64, 64, 3) uint8
    np.testing.assert_array_equal(first["frames"].numpy(), expected)


def test_a_videos_augmentation_does_not_depend_on_its_batch(splits):
    frames = torch.from_numpy(np.stack([splits[0].frames(i, np.arange(8)) for i in range(3)]))  # (3, 8, 64, 64, 3)
    frames = frames[:, None].expand(3, 2, 8, 64, 64, 3)  # two views each
    seeds = torch.tensor([11, 12, 13])
    config = AugmentConfig()
    whole = augment_batch(frames, seeds, 32, config, (0.5,) * 3, (0.25,) * 3)  # (3, 2, 8, 3, 32, 32)
    assert whole.shape == (3, 2, 8, 3, 32, 32)
    alone = augment_batch(frames[1:2], seeds[1:2], 32, config, (0.5,) * 3, (0.25,) * 3)
    torch.testing.assert_close(alone[0], whole[1])
    assert not torch.allclose(whole[0, 0], whole[0, 1])  # the two views of a video differ


def test_epoch_batches_cover_each_video_once_and_depend_on_the_epoch():
    first, again, other = (epoch_batches(10, 3, seed=0, epoch=e) for e in (0, 0, 1))
    assert first.shape == (3, 3) and len(set(first.ravel().tolist())) == 9
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    with pytest.raises(MVFormerError, match="larger than the training set"):
        epoch_batches(2, 3, seed=0, epoch=0)


def test_an_unreadable_video_is_skipped_and_counted(pouring_root, tmp_path):
    broken_root = tmp_path / "data"
    shutil.copytree(pouring_root, broken_root)
    shutil.rmtree(broken_root / "labels")  # an unlabelled set, as large pre-training sets are
    train_set = VideoDataset(broken_root, "train", size=64)
    victim = train_set.records[2].path
    victim.write_bytes(victim.read_bytes()[:2000])  # truncated after the dataset was indexed
    config = vision_only_config(broken_root, tmp_path / "run", epochs=1)
    result = train(config, train_set, VideoDataset(broken_root, "val", size=64))
    record = read_log(result.run_dir).epochs[0]
    assert record.skipped_videos == 1 and np.isfinite(record.loss)


def test_nonfinite_steps_are_skipped_and_too_many_stop_the_run(pouring_root, splits, tmp_path, monkeypatch):
    train_set, val_set = splits
    real_loss = mvformer.train.objectives.sequence_contrastive_loss
    calls = []

    def loss_nan_on_steps_2_and_3(*args):
        calls.append(1)
        loss = real_loss(*args)
        return loss * float("nan") if len(calls) in (2, 3) else loss

    monkeypatch.setattr(mvformer.train.objectives, "sequence_contrastive_loss", loss_nan_on_steps_2_and_3)
    result = train(vision_only_config(pouring_root, tmp_path / "run", epochs=1), train_set, val_set)
    record = read_log(result.run_dir).epochs[0]
    assert record.nonfinite_steps == 2 and np.isfinite(record.loss)
    assert all(torch.isfinite(v).all() for v in load_checkpoint(result.run_dir)["model"].values()
               if v.is_floating_point())

    monkeypatch.setattr(mvformer.train.objectives, "sequence_contrastive_loss", lambda *args: real_loss(*args) * float("inf"))
    config = vision_only_config(pouring_root, tmp_path / "dies", epochs=1, **{"train.max_nonfinite_steps": 3})
    with pytest.raises(MVFormerError, match="step 2: loss or gradient not finite for 3 consecutive steps"):
        train(config, train_set, val_set)
    assert not (tmp_path / "dies" / "checkpoint.pt").exists()


def test_warmup_cosine_schedule_warms_up_then_decays_to_zero():
    schedule = TrainConfig(epochs=10, schedule="warmup_cosine", warmup_epochs=2)
    factors = [learning_rate_factor(epoch, schedule) for epoch in range(10)]
    assert factors[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert all(a > b for a, b in zip(factors[2:], factors[3:]))
    assert learning_rate_factor(10, schedule) == pytest.approx(0.0)


def test_published_schedule_is_cosine_annealing_over_epochs_plus_one_stepped_per_epoch():
    """Published: torch's CosineAnnealingLR(T_max=epochs + 1), stepped once per epoch, no warm-up."""
    epochs = 7
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([parameter], lr=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs + 1)
    published = []
    for _ in range(epochs):
        published.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    ours = [1e-4 * learning_rate_factor(epoch, TrainConfig(epochs=epochs)) for epoch in range(epochs)]
    assert ours == pytest.approx(published, rel=1e-12)
    assert ours[0] == 1e-4 and ours[-1] > 0  # no warm-up; the last epoch still learns (T_max = epochs + 1)


def test_bf16_autocast_trains_to_a_finite_checkpoint(pouring_root, splits, tmp_path):
    train_set, val_set = splits
    config = vision_only_config(pouring_root, tmp_path / "run", epochs=1, **{"train.precision": "bf16"})
    result = train(config, train_set, val_set)
    losses = [r.loss for r in read_log(result.run_dir).epochs]
    assert np.isfinite(losses).all()
    state = load_checkpoint(result.run_dir)["model"]
    assert all(torch.isfinite(value).all() for value in state.values() if value.is_floating_point())


@pytest.mark.parametrize("precision, dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16),
                                              ("fp16", torch.float16)])
def test_train_precision_decides_what_the_step_computes_in(pouring_root, splits, tmp_path, monkeypatch, precision,
                                                         dtype):
    """The head's layers run in the configured precision under autocast (seen from inside the training steps),
    and a reduced precision gives other losses than fp32: were train.precision ignored, both checks would fail."""
    train_set, val_set = splits
    seen, built = set(), []

    def build_and_watch(*args):
        built.append(build_model(*args))
        built[-1].head.to_hidden.register_forward_hook(  # training steps only: evaluation embeds in fp32
            lambda module, inputs, output: seen.add(output.dtype) if module.training else None)
        return built[-1]
    monkeypatch.setattr(mvformer.train.loop, "build_model", build_and_watch)
    config = vision_only_config(pouring_root, tmp_path / precision, epochs=1, **{"train.precision": precision})
    losses = [r.loss for r in read_log(train(config, train_set, val_set).run_dir).epochs]
    assert seen == {dtype} and np.isfinite(losses).all()
    monkeypatch.undo()
    reference = vision_only_config(pouring_root, tmp_path / "fp32_reference", epochs=1)
    reference_losses = [r.loss for r in read_log(train(reference, train_set, val_set).run_dir).epochs]
    assert (losses == reference_losses) == (precision == "fp32")


def test_checkpoint_whose_weights_do_not_fit_its_config_is_one_clear_error(pouring_root, splits, tmp_path):
    train_set, val_set = splits
    config = vision_only_config(pouring_root, tmp_path / "run", epochs=1)
    train(config, train_set, val_set)
    path = tmp_path / "run" / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    state["config"]["model"]["num_tokens"] = 5  # weights of a 3-token model under a 5-token config
    torch.save(state, path)
    with pytest.raises(MVFormerError, match="checkpoint.pt: ") as error:
        model_from_checkpoint(path)
    assert "\n" not in str(error.value)


def test_training_reads_a_matching_feature_cache_and_says_so(pouring_root, splits, tmp_path, capsys):
    from mvformer.features.build import cache_features
    train_set, val_set = splits
    settings = {"data.augment.enabled": "false", "train.lr": 0.0}  # frozen weights: every step sees the same model
    plain = vision_only_config(pouring_root, tmp_path / "plain", epochs=2, **settings)
    cached = vision_only_config(pouring_root, tmp_path / "cached", epochs=2,
                                **settings, **{"data.feature_cache": tmp_path / "cache"})
    cache_features(cached, note=lambda line: None)
    train(plain, train_set, val_set)
    assert "feature cache" not in capsys.readouterr().err
    train(cached, train_set, val_set)
    assert f"using feature cache at {tmp_path / 'cache'}" in capsys.readouterr().err
    plain_losses, cached_losses = ([r.loss for r in read_log(tmp_path / name).epochs]
                                   for name in ("plain", "cached"))
    # The same clips through the same model: only the tokens' float16 rounding (relative 2^-11) differs, so the
    # losses agree within float16's epsilon; other clips give losses 5% apart.
    np.testing.assert_allclose(cached_losses, plain_losses, rtol=torch.finfo(torch.float16).eps)


def test_fp16_with_a_gradient_scaler_trains_and_checkpoints_the_scaler(pouring_root, splits, tmp_path):
    train_set, val_set = splits
    config = vision_only_config(pouring_root, tmp_path / "run", epochs=1, **{"train.precision": "fp16"})
    result = train(config, train_set, val_set)
    state = load_checkpoint(result.run_dir)
    assert state["scaler"]["scale"] > 0 and np.isfinite([r.loss for r in read_log(result.run_dir).epochs]).all()


def test_init_from_starts_at_the_given_weights_with_a_fresh_optimiser(pouring_root, splits, tmp_path):
    train_set, val_set = splits
    source = train(vision_only_config(pouring_root, tmp_path / "pretrained", epochs=1), train_set, val_set)
    frozen = {"train.lr": 0.0, "train.init_from": str(tmp_path / "pretrained")}
    tuned = train(vision_only_config(pouring_root, tmp_path / "tuned", epochs=1, **frozen), train_set, val_set)
    for key, value in source.model.trainable_state_dict().items():
        if "running_" not in key and "num_batches" not in key:  # lr 0: weights stay as loaded
            assert torch.equal(tuned.model.trainable_state_dict()[key], value), key
    state = load_checkpoint(tmp_path / "tuned")
    assert state["epoch"] == 1  # its own schedule and epochs, not the source's
    assert all(moments["step"] == len(train_set) for moments in state["optimizer"]["state"].values())
    with pytest.raises(MVFormerError, match="do not fit"):  # another architecture: one clear line
        other = {"train.init_from": str(tmp_path / "pretrained"), "model.embedding_size": 16}
        train(vision_only_config(pouring_root, tmp_path / "other", epochs=1, **other), train_set, val_set)


def test_training_and_evaluate_score_through_one_path(pouring_root, splits, tmp_path, capsys):
    from mvformer.cli import main
    train_set, val_set = splits
    result = train(vision_only_config(pouring_root, tmp_path / "run", epochs=1), train_set, val_set)
    assert main(["evaluate", str(tmp_path / "run"), "--out", str(tmp_path / "eval")]) == 0
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert evaluated["mean"] == result.final_metrics  # the same numbers, to the last digit
    assert main(["evaluate", str(tmp_path / "run"), "--out", str(tmp_path / "eval")]) == 2  # no silent replace
    assert "--overwrite" in capsys.readouterr().err


def test_a_skipped_step_leaves_batch_norm_statistics_as_they_were(pouring_root, splits, tmp_path, monkeypatch):
    train_set, val_set = splits
    config = vision_only_config(pouring_root, tmp_path / "run", epochs=1, **{"train.max_nonfinite_steps": 100})
    torch.manual_seed(config.train.seed)
    initial = {k: v.clone() for k, v in build_model(config).trainable_state_dict().items() if "running_" in k}
    real_loss = mvformer.train.objectives.sequence_contrastive_loss
    monkeypatch.setattr(mvformer.train.objectives, "sequence_contrastive_loss", lambda *a: real_loss(*a) * float("nan"))
    built = []
    monkeypatch.setattr(mvformer.train.loop, "build_model", lambda *args: built.append(build_model(*args)) or built[-1])
    with pytest.raises(MVFormerError, match=f"the loss or gradient of every step \\({len(train_set)}\\) was NaN"):
        train(config, train_set, val_set)  # an epoch of nothing but skipped steps ends the run
    for key, value in initial.items():  # every step was skipped: nothing moved, statistics included
        assert torch.equal(built[0].trainable_state_dict()[key], value), key


def test_a_run_folder_is_locked_and_never_appended_to(pouring_root, splits, tmp_path):
    train_set, val_set = splits
    config = vision_only_config(pouring_root, tmp_path / "run", epochs=1)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".lock").write_text(str(os.getpid()))  # a live process holds it
    with pytest.raises(MVFormerError, match="another mvformer process"):
        train(config, train_set, val_set)
    (tmp_path / "run" / ".lock").write_text("999999999")  # a dead one: taken over
    train(config, train_set, val_set)
    assert not (tmp_path / "run" / ".lock").exists()
    (tmp_path / "run" / "checkpoint.pt").unlink()
    with pytest.raises(MVFormerError, match="holds files of another run"):  # no appending to its metrics.jsonl
        train(config, train_set, val_set)


def test_resume_of_a_moved_run_and_a_changed_config_name_the_key(pouring_root, splits, tmp_path):
    train_set, val_set = splits
    train(vision_only_config(pouring_root, tmp_path / "run", epochs=1), train_set, val_set)
    shutil.move(tmp_path / "run", tmp_path / "moved")
    moved = vision_only_config(pouring_root, tmp_path / "moved", epochs=1)
    train(moved, train_set, val_set, resume=True)  # output_dir differs from the stored one: fine
    with pytest.raises(MVFormerError, match="first: 'model.dropout'"):
        train(vision_only_config(pouring_root, tmp_path / "moved", epochs=1, **{"model.dropout": 0.3}),
              train_set, val_set, resume=True)
