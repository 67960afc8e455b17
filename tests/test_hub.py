"""Hub ids as weights references (mvformer.hub): the rule that tells them from local paths, backbones and exports
read by id from a Hugging Face cache each test builds itself in the Hub's layout, and every refusal as one line.
Nothing here reaches the network: the suite runs offline (conftest.py), and the online cases talk to a stand-in
for the Hub on the loopback interface."""

import hashlib
import os
import socket
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants
from huggingface_hub import snapshot_download as real_snapshot_download
from huggingface_hub._tree_cache import TreeCacheEntry, write_tree_cache  # the library's own writer
from safetensors.torch import load_file
from transformers import ViTConfig, ViTModel

from bad_inputs import one_line_failure
from conftest import NetworkAccessError
from mvformer.checkpoint import load_model, trainable_weights
from mvformer.config import CONFIG_DIR, load_config
from mvformer.errors import MVFormerError
from mvformer.features.cache import backbone_fingerprint, cache_identity, default_cache_dir
import mvformer.hub
from mvformer.hub import HubId, parse_hub_id, resolve
from mvformer.model.backbone import build_backbone
from mvformer.model.mvformer import build_model
from mvformer.pretrained import load_pretrained, save_pretrained

COMMIT = "1" * 40
OTHER_COMMIT = "2" * 40
VIT_ID = "tiny-org/tiny-vit"
EXPORT_ID = "me/mvformer-demo"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache of this test's own: HF_HUB_CACHE as a user sets it, and the constant
    huggingface_hub read from it at import. The working directory holds no folder named like an id."""
    cache = tmp_path / "huggingface" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return cache


def publish(cache: Path, repo: str, folder: Path, commit: str, refs=("main",)) -> Path:
    """Lay `folder`'s files out as huggingface_hub caches a download of `repo` at `commit`: blobs named by their
    hash, snapshots/COMMIT/ linking to them, refs/NAME holding the commit. Returns the snapshot folder."""
    storage = cache / f"models--{repo.replace('/', '--')}"
    snapshot = storage / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (storage / "blobs").mkdir(exist_ok=True)
    for file in sorted(folder.iterdir()):
        data = file.read_bytes()
        blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    for ref in refs:
        (storage / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (storage / "refs" / ref).write_text(commit)  # as huggingface_hub writes it: no newline
    return snapshot


def tiny_vit_folder(folder: Path, seed: int) -> Path:
    """A 2-block ViT written by transformers' save_pretrained (config.json, model.safetensors)."""
    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       image_size=32, patch_size=8)
    torch.manual_seed(seed)
    ViTModel(config, add_pooling_layer=False).save_pretrained(folder)
    return folder


def features(path) -> tuple[torch.Tensor, torch.Tensor]:
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return build_backbone("vit", [0, 1], path=path, image_size=32)(pixels)


def assert_same_features(first, second):
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def demo_export(folder: Path, seed: int = 0) -> Path:
    """An mvformer export of a demo model (weight-free `patches` backbone) whose head differs from a fresh one."""
    config = load_config("demo", ["data.root=/data/pouring"])
    torch.manual_seed(seed)
    model = build_model(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.01)
    return save_pretrained(model.eval(), folder)


@pytest.fixture
def fake_hub(monkeypatch):
    """Go online against a stand-in for the Hub on 127.0.0.1 that knows no model, and of any model no 'v9'."""

    class Hub(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(404)
            self.send_header("X-Error-Code", "RevisionNotFound" if "/revision/v9" in self.path else "RepoNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_HEAD = do_GET

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    yield
    server.shutdown()
    server.server_close()
    thread.join()


def closed_port() -> int:
    """A loopback port nothing listens on: connecting to it is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_suite_is_offline_with_a_cache_of_its_own():
    assert constants.HF_HUB_OFFLINE is True
    assert Path(constants.HF_HUB_CACHE).is_relative_to(tempfile.gettempdir())
    assert "mvformer-test-hf-" in constants.HF_HUB_CACHE


def test_connecting_to_another_machine_fails_loudly_and_loopback_works():
    with pytest.raises(NetworkAccessError, match="192.0.2.1 port 443"):
        socket.create_connection(("192.0.2.1", 443), timeout=1)  # TEST-NET-1: refused before any packet leaves
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        with socket.create_connection(listener.getsockname(), timeout=5):
            pass
        with socket.create_connection(("localhost", listener.getsockname()[1]), timeout=5):
            pass


@pytest.mark.parametrize("reference, expected", [
    ("facebook/dino-vitb8", HubId("facebook/dino-vitb8")),
    ("facebook/dino-vitb8@v1.0", HubId("facebook/dino-vitb8", "v1.0")),
    (f"facebook/dinov2-base@{COMMIT}", HubId("facebook/dinov2-base", COMMIT)),
    ("org/name@refs/pr/1", HubId("org/name", "refs/pr/1")),
    ("weights/dino_vitbase8_pretrain.pth", None),
    ("weights/model.safetensors", None),
    ("/models/org/name", None),
    ("./org/name", None),
    ("~/org", None),
    ("runs/mine/checkpoint", None),
    ("dino", None),
    (None, None),
])
def test_which_references_are_hub_ids(hub_cache, reference, expected):
    assert parse_hub_id(reference) == expected


def test_an_existing_local_path_wins_over_the_id_it_spells(hub_cache):
    publish(hub_cache, VIT_ID, tiny_vit_folder(hub_cache.parent / "published", seed=0), COMMIT)
    local = tiny_vit_folder(Path(VIT_ID), seed=1)  # ./tiny-org/tiny-vit, other weights

    assert parse_hub_id(VIT_ID) is None and resolve(VIT_ID) == Path(VIT_ID)
    assert_same_features(features(VIT_ID), features(local.resolve()))
    cached = hub_cache / "models--tiny-org--tiny-vit" / "snapshots" / COMMIT
    assert not torch.equal(features(VIT_ID)[1], features(cached)[1])


@pytest.mark.parametrize("reference, reason", [
    ("facebook/dino--vitb8", "--"),
    ("facebook/dino-vitb8@", "nothing follows '@'"),
    ("face book/dino-vitb8", "alphanumeric"),
    ("facebook/dino-vitb8.git", "facebook/dino-vitb8.git"),
])
def test_a_malformed_id_is_one_line(hub_cache, reference, reason):
    with pytest.raises(MVFormerError) as error:
        parse_hub_id(reference)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{reference}: no such local path, and not a valid Hub id")
    assert reason in message and "ORG/NAME[@REVISION]" in message and "such as facebook/dino-vitb8" in message


def test_a_config_naming_a_malformed_id_fails_as_it_loads(hub_cache, capsys):
    with pytest.raises(MVFormerError, match=r"'backbone.path' facebook/dino--vitb8: no such local path"):
        load_config("penn_action", ["backbone.path=facebook/dino--vitb8"])
    one_line_failure(["train", "penn_action", "--set", "backbone.path=facebook/dino--vitb8"], capsys,
                     "'backbone.path'", "facebook/dino--vitb8", "not a valid Hub id")


def test_a_backbone_by_id_equals_the_folder_it_was_published_from(hub_cache):
    folder = tiny_vit_folder(hub_cache.parent / "published", seed=0)
    snapshot = publish(hub_cache, VIT_ID, folder, COMMIT, refs=("main", "v1"))

    from_folder = features(folder)
    for reference in (VIT_ID, f"{VIT_ID}@main", f"{VIT_ID}@v1", f"{VIT_ID}@{COMMIT}"):
        assert resolve(reference) == snapshot
        assert_same_features(features(reference), from_folder)


def test_an_id_is_looked_up_once_per_process_while_its_folder_exists(hub_cache, monkeypatch):
    """Online, each lookup asks the Hub: a run reads its backbone's id in several places (the model, the feature
    cache's identity and its check), one lookup serves them all."""
    snapshot = publish(hub_cache, VIT_ID, tiny_vit_folder(hub_cache.parent / "published", seed=0), "d" * 40)
    calls = []
    monkeypatch.setattr(mvformer.hub, "snapshot_download",
                        lambda *args, **kwargs: calls.append(args) or real_snapshot_download(*args, **kwargs))
    assert resolve(VIT_ID) == resolve(VIT_ID) == snapshot and len(calls) == 1
    assert resolve(f"{VIT_ID}@main") == snapshot and len(calls) == 2  # another id: its own lookup
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache.parent / "elsewhere"))
    with pytest.raises(MVFormerError):  # another cache: looked up there, where it is not
        resolve(VIT_ID)


def test_a_repository_holding_only_pytorch_weights_loads(hub_cache):
    """Older repositories hold pytorch_model.bin alone; the id falls back to it."""
    folder = tiny_vit_folder(hub_cache.parent / "published", seed=0)
    expected = features(folder)
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    publish(hub_cache, VIT_ID, folder, COMMIT)

    assert_same_features(features(VIT_ID), expected)


def test_backbone_refusals_are_one_line_naming_the_id_and_the_remedy(hub_cache):
    with pytest.raises(MVFormerError) as not_cached:
        features("facebook/dino-vitb8")
    assert str(not_cached.value) == (
        f"facebook/dino-vitb8: no such local path, and the Hub model facebook/dino-vitb8 is not in the Hugging Face "
        f"cache {hub_cache} while offline (HF_HUB_OFFLINE=1); run once online to download it, or give a local "
        f"folder or weights file")

    publish(hub_cache, VIT_ID, tiny_vit_folder(hub_cache.parent / "published", seed=0), COMMIT, refs=("main", "v1"))
    for revision in ("v2", OTHER_COMMIT):
        with pytest.raises(MVFormerError) as missing_revision:
            features(f"{VIT_ID}@{revision}")
        assert str(missing_revision.value) == (
            f"{VIT_ID}@{revision}: revision '{revision}' of {VIT_ID} is not in the Hugging Face cache {hub_cache} "
            f"(cached: main, v1, {COMMIT}) and HF_HUB_OFFLINE=1 forbids asking the Hub; name a cached revision, "
            f"or run once online to download it")


def test_an_interrupted_download_is_named_as_such(hub_cache):
    """The tree listing huggingface_hub caches with a download names a weights file the snapshot lacks."""
    folder = tiny_vit_folder(hub_cache.parent / "published", seed=0)
    (folder / "model.safetensors").unlink()
    snapshot = publish(hub_cache, VIT_ID, folder, COMMIT)
    listing = {name: TreeCacheEntry(size=1, blob_id="0" * 40) for name in ("config.json", "model.safetensors")}
    write_tree_cache(str(snapshot.parent.parent), COMMIT, listing)

    with pytest.raises(MVFormerError) as incomplete:
        resolve(VIT_ID)
    assert str(incomplete.value) == (
        f"{VIT_ID}: its snapshot in the Hugging Face cache {hub_cache} is incomplete (an interrupted download); "
        f"run once with network access to finish it")


def test_an_export_by_id_equals_its_folder(hub_cache):
    folder = demo_export(hub_cache.parent / "export")
    publish(hub_cache, EXPORT_ID, folder, COMMIT)
    frames = torch.randn(2, 7, 3, 64, 64, generator=torch.Generator().manual_seed(1))

    from_folder = load_pretrained(folder)(frames)
    assert torch.equal(load_pretrained(EXPORT_ID)(frames), from_folder)
    trained = load_model(EXPORT_ID, "cpu")
    assert trained.device == torch.device("cpu") and torch.equal(trained.model(frames), from_folder)
    assert trained.run_dir is None and trained.inputs == []  # an export's files lie in the Hugging Face cache
    by_id, by_folder = trainable_weights(EXPORT_ID), trainable_weights(folder)
    assert by_id.keys() == by_folder.keys() and all(torch.equal(by_id[key], by_folder[key]) for key in by_id)


@pytest.mark.parametrize("reference, fragments", [
    ("nobody/missing", ("nobody/missing: no such local path", "not in the Hugging Face cache",
                        "HF_HUB_OFFLINE=1", "run once online to download it")),
    (f"{EXPORT_ID}@v9", (f"{EXPORT_ID}@v9: revision 'v9'", f"(cached: main, {COMMIT})", "name a cached revision")),
    ("nobody/bad--name", ("nobody/bad--name: no such local path, and not a valid Hub id", "ORG/NAME[@REVISION]")),
])
def test_commands_taking_an_export_refuse_a_bad_id_in_one_line(hub_cache, capsys, reference, fragments):
    publish(hub_cache, EXPORT_ID, demo_export(hub_cache.parent / "export"), COMMIT)
    out = hub_cache.parent / "eval"

    one_line_failure(["evaluate", reference, "--out", str(out)], capsys, *fragments)
    assert not out.exists()


def test_online_the_hub_answers_unknown_models_and_revisions(hub_cache, fake_hub):
    with pytest.raises(MVFormerError) as unknown_revision:
        resolve(f"{VIT_ID}@v9")
    assert str(unknown_revision.value) == (
        f"{VIT_ID}@v9: the Hub model {VIT_ID} has no revision 'v9'; name a branch, tag or commit it has")
    with pytest.raises(MVFormerError) as unknown_model:
        resolve("nobody/missing")
    assert str(unknown_model.value) == (
        "nobody/missing: no such local path, and no Hub model nobody/missing this machine may read (check the "
        "name; a private or gated model needs `hf auth login`)")


def test_an_unreachable_hub_falls_back_to_the_cache_and_else_says_so(hub_cache, monkeypatch):
    snapshot = publish(hub_cache, VIT_ID, tiny_vit_folder(hub_cache.parent / "published", seed=0), COMMIT)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{closed_port()}")

    assert resolve(VIT_ID) == snapshot
    with pytest.raises(MVFormerError) as unreachable:
        resolve("facebook/dino-vitb8")
    message = str(unreachable.value)
    assert "\n" not in message and message.startswith(
        f"facebook/dino-vitb8: no such local path, revision 'main' of facebook/dino-vitb8 is not in the Hugging Face "
        f"cache {hub_cache}, and the Hub cannot be reached (ConnectError: ")
    assert message.endswith("connect once to download it, or give a local folder or weights file")


def test_the_feature_cache_tells_revisions_apart(hub_cache):
    first = publish(hub_cache, VIT_ID, tiny_vit_folder(hub_cache.parent / "first", seed=0), COMMIT)
    second = publish(hub_cache, VIT_ID, tiny_vit_folder(hub_cache.parent / "second", seed=1), OTHER_COMMIT,
                     refs=("v2",))

    def config(path):
        return load_config("demo", ["data.root=/data/pouring", "backbone.name=vit", f"backbone.path={path}"])

    assert cache_identity(config(VIT_ID))["backbone_path"] == str(first)
    assert cache_identity(config(f"{VIT_ID}@v2"))["backbone_path"] == str(second)
    assert default_cache_dir(config(VIT_ID)) == default_cache_dir(config(f"{VIT_ID}@{COMMIT}"))
    assert default_cache_dir(config(VIT_ID)) != default_cache_dir(config(f"{VIT_ID}@v2"))
    fingerprint = backbone_fingerprint(str(first))
    assert sorted(fingerprint) == ["config.json", "model.safetensors"]
    assert fingerprint["model.safetensors"][0] == (hub_cache.parent / "first" / "model.safetensors").stat().st_size


def test_the_paper_configs_name_their_hub_ids():
    """Every shipped DINO / DINOv2 config, by the id of the architecture it describes (the ResNet-50 ablation keeps
    the published BYOL file, which is not on the Hub)."""
    backbones = {path.stem: load_config(path.stem).backbone for path in CONFIG_DIR.glob("*.yaml")}
    by_id = {name: backbone.path for name, backbone in backbones.items() if backbone.name in ("vit", "dinov2")}
    assert by_id.pop("ablation_vits16") == "facebook/dino-vits16"
    assert by_id.pop("ablation_dinov2") == "facebook/dinov2-base"
    assert set(by_id.values()) == {"facebook/dino-vitb8"} and {"penn_action", "pouring", "finegym99"} <= set(by_id)
    assert backbones["ablation_resnet50"].path == "weights/BYOL_1000.pth"
