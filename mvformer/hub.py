"""Hugging Face Hub ids wherever mvformer reads weights: `ORG/NAME` or `ORG/NAME@REVISION` beside local paths.

The rule that tells an id from a local path: a reference that exists on the local disk is that path, always. One
that does not exist is a Hub id when it has the id's shape: relative, ORG/NAME with exactly one slash before an
optional @REVISION (a branch, tag or commit; it may hold slashes, as refs/pr/1 does), not starting with '.' or '~',
not ending in a weights-file suffix. Everything else is a local path, and fails as a missing one where it is read.

An id resolves to its snapshot folder in the standard Hugging Face cache (HF_HUB_CACHE, or HF_HOME/hub):
downloaded there once when online, read from there when offline (HF_HUB_OFFLINE=1). The folder is named after
the revision's commit, so another revision is another folder with its own files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import constants, is_offline_mode, snapshot_download
from huggingface_hub.errors import (
    HFValidationError,
    HfHubHTTPError,
    IncompleteSnapshotError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import repo_folder_name
from huggingface_hub.utils import validate_repo_id

from mvformer.errors import MVFormerError

WEIGHTS_FILE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")  # a name ending so is a file, never an id
SNAPSHOT_FILES = ("*.json",)  # configs: transformers' config.json, an mvformer export's config.json
SNAPSHOT_WEIGHTS = ("*.safetensors", "*.bin")  # the first format a repository holds is the one downloaded
ID_FORM = "ORG/NAME[@REVISION]"


@dataclass(frozen=True)
class HubId:
    """A model repository on the Hub and the revision to read (None: its default branch)."""

    repo: str
    revision: str | None = None

    def __str__(self) -> str:
        return self.repo if self.revision is None else f"{self.repo}@{self.revision}"


def _has_id_shape(text: str) -> bool:
    repo = text.partition("@")[0]
    return (repo.count("/") == 1 and "\\" not in text and not text.startswith((".", "~", "/"))
            and not repo.lower().endswith(WEIGHTS_FILE_SUFFIXES))


def parse_hub_id(reference: str | Path | None) -> HubId | None:
    """The Hub id `reference` names under the module's rule; None when it names a local path (or is None).

    A reference of the id's shape that the Hub would refuse (e.g. 'org/na--me', 'org/name@') is an MVFormerError.
    """
    if reference is None or Path(reference).exists() or not _has_id_shape(str(reference)):
        return None
    text = str(reference)
    repo, at, revision = text.partition("@")
    try:
        validate_repo_id(repo)
    except HFValidationError as error:
        raise _malformed(text, str(error).splitlines()[0].rstrip(".")) from None
    if at and not revision.strip():
        raise _malformed(text, "nothing follows '@'")
    return HubId(repo, revision if at else None)


def _malformed(text: str, reason: str) -> MVFormerError:
    return MVFormerError(f"{text}: no such local path, and not a valid Hub id {ID_FORM} ({reason}); give an "
                         f"existing folder or weights file, or an id such as facebook/dino-vitb8")


_resolved: dict[tuple, Path] = {}  # (id, cache, offline, endpoint) -> snapshot folder, for this process


def resolve(reference: str | Path) -> Path:
    """Where `reference` lies on the local disk: the path itself, or a Hub id's snapshot folder holding the
    repository's JSON files and one weights format (safetensors, else PyTorch .bin), downloaded when missing.

    An id is looked up once per process (online, each lookup asks the Hub), while its folder exists."""
    hub_id = parse_hub_id(reference)
    if hub_id is None:
        return Path(reference)
    key = (hub_id, constants.HF_HUB_CACHE, is_offline_mode(), constants.ENDPOINT)
    if key in _resolved and _resolved[key].is_dir():
        return _resolved[key]
    for weights in SNAPSHOT_WEIGHTS:
        folder = _snapshot(hub_id, [*SNAPSHOT_FILES, weights])
        if any(folder.glob(weights)):
            break
    _resolved[key] = folder
    return folder


def _snapshot(hub_id: HubId, patterns: list[str]) -> Path:
    """snapshot_download of the files matching `patterns`, its failures as one line naming the id and a remedy."""
    try:
        return Path(snapshot_download(hub_id.repo, revision=hub_id.revision, allow_patterns=patterns))
    except RevisionNotFoundError:
        raise MVFormerError(f"{hub_id}: the Hub model {hub_id.repo} has no revision '{hub_id.revision}'; name a "
                            f"branch, tag or commit it has") from None
    except RepositoryNotFoundError:
        raise MVFormerError(f"{hub_id}: no such local path, and no Hub model {hub_id.repo} this machine may read "
                            f"(check the name; a private or gated model needs `hf auth login`)") from None
    except IncompleteSnapshotError:
        raise MVFormerError(f"{hub_id}: its snapshot in the Hugging Face cache {constants.HF_HUB_CACHE} is "
                            f"incomplete (an interrupted download); run once with network access to finish it") \
            from None
    except LocalEntryNotFoundError as error:
        raise _not_cached(hub_id, error) from None
    except HfHubHTTPError as error:
        raise MVFormerError(f"{hub_id}: the Hub refused the download ({str(error).splitlines()[0]})") from None


def _not_cached(hub_id: HubId, error: LocalEntryNotFoundError) -> MVFormerError:
    """Not in the cache and not fetched: while offline (the revision or the whole model missing), or unreachable."""
    cache = Path(constants.HF_HUB_CACHE)
    cached = _cached_revisions(cache, hub_id.repo)
    revision = hub_id.revision or constants.DEFAULT_REVISION
    if not is_offline_mode():
        cause = error.__cause__ or error
        reason = f"{type(cause).__name__}: {str(cause).splitlines()[0]}" if str(cause) else type(cause).__name__
        return MVFormerError(f"{hub_id}: no such local path, revision '{revision}' of {hub_id.repo} is not in the "
                             f"Hugging Face cache {cache}, and the Hub cannot be reached ({reason}); connect once "
                             f"to download it, or give a local folder or weights file")
    if cached:
        return MVFormerError(f"{hub_id}: revision '{revision}' of {hub_id.repo} is not in the Hugging Face cache "
                             f"{cache} (cached: {', '.join(cached)}) and HF_HUB_OFFLINE=1 forbids asking the Hub; "
                             f"name a cached revision, or run once online to download it")
    return MVFormerError(f"{hub_id}: no such local path, and the Hub model {hub_id.repo} is not in the Hugging "
                         f"Face cache {cache} while offline (HF_HUB_OFFLINE=1); run once online to download it, or "
                         f"give a local folder or weights file")


def _cached_revisions(cache: Path, repo: str) -> list[str]:
    """The branch and tag names, then the commits, that the cache holds for `repo` (none when it holds nothing)."""
    storage = cache / repo_folder_name(repo_id=repo, repo_type="model")
    refs = sorted(str(ref.relative_to(storage / "refs")) for ref in (storage / "refs").rglob("*") if ref.is_file())
    snapshots = sorted(entry.name for entry in (storage / "snapshots").glob("*") if entry.is_dir())
    return refs + snapshots
