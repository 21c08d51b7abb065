"""Reading MMEB-V2 as the Hugging Face hub serves it: which repo, config, split and archive each task needs, the
parquet shards of one split merged in shard order, and the ``hf download`` command that fetches what is missing.

The hub folder (``--hub-dir``) holds one folder per dataset repo, ``<hub-dir>/<owner>/<repo>/``, exactly as
``huggingface_hub.snapshot_download(repo_id, repo_type="dataset", local_dir=<hub-dir>/<owner>/<repo>)`` or
``hf download <owner>/<repo> --repo-type dataset --local-dir <hub-dir>/<owner>/<repo>`` writes it. Inside a repo, the
files of a config's split are the ones its ``README.md`` header lists under ``configs: data_files`` (the hub's own
definition); a repo without that header follows the ``push_to_hub`` convention
``<config>/<split>-NNNNN-of-MMMMM.parquet`` (``data/`` for the default config).

What each task reads (facts of VLM2Vec @6e1e1d4, used by ``umeflow.data.mmeb_v2_download``):
- annotations: ``TaskMeta.dataset_name`` / ``hf_subset`` / ``split`` (``src/constant/dataset_hf_path.py``; image tasks
  ``ziyjiang/MMEB_Test_Instruct``, config = task name, split ``test``); MVBench loads each of its 20 configs and adds a
  ``subset`` column itself (``src/data/eval_dataset/mvbench_dataset.py`` ``subset_meta``,
  ``src/utils/dataset_utils.py`` ``load_hf_dataset_multiple_subset``); visdoc tasks read the BEIR configs
  ``queries`` / ``corpus`` / ``qrels`` (``vidore_dataset.py``, ``visrag_dataset.py``);
- media: ``TIGER-Lab/MMEB-V2`` archives, unpacked as ``experiments/public/data/download_data.sh`` does:
  ``image-tasks/mmeb_v1.tar.gz`` (members under ``MMEB/``, moved up into ``image-tasks/``),
  ``video-tasks/frames/{video_cls,video_ret}.tar.gz`` (no top folder: unpacked with ``-C video_cls|video_ret``),
  ``video-tasks/frames/video_mret.tar.gz`` and the split ``video_qa.tar.gz-00`` … ``-04`` (concatenated in order),
  whose members already sit under ``video_mret/`` / ``video_qa/``.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pyarrow as pa

from umeflow.errors import RecordError, UserError
from umeflow.evaluate.tasks import TaskMeta
from umeflow.io import arrow_read_errors, sha256_file, write_json

log = logging.getLogger(__name__)

MEDIA_REPO = "TIGER-Lab/MMEB-V2"
BEIR_CONFIGS = ("queries", "corpus", "qrels")

# MVBench configs in the order VLM2Vec concatenates them (mvbench_dataset.py:24-45 subset_meta keys @6e1e1d4).
MVBENCH_CONFIGS = (
    "episodic_reasoning", "action_sequence", "action_prediction", "action_antonym", "fine_grained_action",
    "unexpected_action", "object_existence", "object_interaction", "object_shuffle", "moving_direction",
    "action_localization", "scene_transition", "action_count", "moving_count", "moving_attribute", "state_change",
    "fine_grained_pose", "character_order", "egocentric_navigation", "counterfactual_inference",
)
# parser -> configs loaded one by one, each row tagged with its config in the column ``subset``
TAGGED_CONFIGS = {"mvbench": MVBENCH_CONFIGS}

_SHARD = re.compile(r"-(\d+)-of-(\d+)\.[^/]+$")
_TABLE_SUFFIXES = (".parquet", ".jsonl")


@dataclass(frozen=True)
class Archive:
    """A media archive of ``TIGER-Lab/MMEB-V2``: its parts (concatenated in order) and the folder its members sit
    under, which extraction strips (download_data.sh ``mv MMEB/* .``; the frame archives that carry their group)."""

    parts: tuple[str, ...]  # paths inside the repo
    top: str = ""


IMAGE_ARCHIVE = Archive(("image-tasks/mmeb_v1.tar.gz",), top="MMEB")
# keyed by the frame group, the folder above a video task's media_root (video-tasks/frames/<group>/<Dataset>)
FRAME_ARCHIVES = {
    "video_cls": Archive(("video-tasks/frames/video_cls.tar.gz",)),
    "video_ret": Archive(("video-tasks/frames/video_ret.tar.gz",)),
    "video_mret": Archive(("video-tasks/frames/video_mret.tar.gz",), top="video_mret"),
    "video_qa": Archive(tuple(f"video-tasks/frames/video_qa.tar.gz-{i:02d}" for i in range(5)), top="video_qa"),
}


def frame_archive(meta: TaskMeta) -> tuple[Archive, str]:
    """The archive holding a video task's frames and the folder inside it (the frame_root name of video.yaml, which
    is the last part of ``media_root``)."""
    media = PurePosixPath(meta.media_root)
    archive = FRAME_ARCHIVES.get(media.parent.name)
    if archive is None:
        raise UserError(f"task {meta.name}: media_root {meta.media_root} is not under a known frame group "
                        f"({', '.join(FRAME_ARCHIVES)})")
    return archive, media.name


def annotation_parts(meta: TaskMeta) -> dict[str, list[tuple[str, str]]]:
    """Output part -> the (config, split) pairs merged into it, in order. Image and video tasks have one part
    (``""``: the file ``<meta.file>.parquet``); visdoc tasks have ``queries`` / ``corpus`` / ``qrels``."""
    if meta.modality == "visdoc":
        return {part: [(part, meta.split)] for part in BEIR_CONFIGS}
    configs = TAGGED_CONFIGS.get(meta.loader, (meta.hf_subset,))
    return {"": [(config, meta.split) for config in configs]}


class HubDir:
    """A folder of downloaded hub dataset repos, ``<root>/<owner>/<repo>/``.

    sha256s of its files are remembered in ``<root>/.umeflow/sha256.json`` by size and mtime, so a rerun compares
    tens of gigabytes of archives without reading them again."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._memo_path = self.root / ".umeflow" / "sha256.json"
        self._memo: dict[str, list] | None = None

    def _key(self, path: Path) -> tuple[str, list]:
        stat = path.stat()
        return path.relative_to(self.root).as_posix(), [stat.st_size, stat.st_mtime_ns]

    def _memory(self) -> dict[str, list]:
        if self._memo is None:
            try:
                memo = json.loads(self._memo_path.read_text())
            except (OSError, ValueError):  # none yet, or unreadable: hashes are recomputed
                memo = {}
            self._memo = memo if isinstance(memo, dict) else {}
        return self._memo

    def sha256(self, path: Path) -> str:
        rel, key = self._key(path)
        known = self._memory().get(rel)
        if known and known[:2] == key:
            return known[2]
        return self.remember(path, sha256_file(path))

    def remember(self, path: Path, digest: str) -> str:
        rel, key = self._key(path)
        self._memory()[rel] = [*key, digest]
        return digest

    def save_memory(self) -> None:
        if self._memo is None:
            return
        try:
            write_json(self._memo_path, self._memo)
        except OSError as e:  # a read-only download is fine: the next run hashes again
            log.warning("could not save %s (%s); the next run will hash the hub files again", self._memo_path, e)

    def repo(self, repo: str) -> Path:
        return self.root / repo

    def fetch_hint(self, repo: str, include: str) -> str:
        return (f"get it with `hf download {repo} --repo-type dataset --local-dir {self.repo(repo)} "
                f"--include '{include}'` (or rerun with --download)")

    def _require_repo(self, repo: str) -> Path:
        path = self.repo(repo)
        if not path.is_dir():
            raise UserError(f"missing hub repo {repo}: {path} does not exist; get it with `hf download {repo} "
                            f"--repo-type dataset --local-dir {path}` (or rerun with --download)")
        return path

    def split_files(self, repo: str, config: str, split: str) -> list[Path]:
        """The data files of one config's split, in shard order; every shard ``i`` of ``-of-N`` must be present."""
        repo_dir = self._require_repo(repo)
        patterns = _readme_patterns(repo_dir, config, split) or _conventional_patterns(config, split)
        matched = sorted({p for pattern in patterns for p in repo_dir.glob(pattern) if p.is_file()})
        files = [p for p in matched if p.name.endswith(_TABLE_SUFFIXES)]
        what = f"{repo} config {config or 'default'} split {split}"
        if matched and not files:
            raise UserError(f"{what}: {matched[0]} is neither .parquet nor .jsonl, the formats this command reads")
        if not files:
            raise UserError(f"missing {what}: no .parquet/.jsonl file matches {patterns} under {repo_dir}; "
                            + self.fetch_hint(repo, patterns[0]))
        for count, (seen, example) in _shard_sets(files).items():
            for index in sorted(set(range(count)) - seen):
                missing = _shard_path(example, index)
                raise UserError(f"missing shard {index + 1} of {count} of {what}: {missing}; "
                                + self.fetch_hint(repo, missing.relative_to(repo_dir).as_posix()))
        return files

    def archive_parts(self, archive: Archive) -> list[Path]:
        paths = [self.repo(MEDIA_REPO) / part for part in archive.parts]  # the repo is huge: name the part to get
        for part, path in zip(archive.parts, paths):
            if not path.is_file():
                raise UserError(f"missing archive {MEDIA_REPO}/{part}: {path} does not exist; "
                                + self.fetch_hint(MEDIA_REPO, part))
        return paths

    def read_table(self, files: list[Path]) -> pa.Table:
        """The rows of ``files`` (one split's shards) as one table, in order; shards whose columns differ only by
        all-null columns are reconciled, other differences name the shard."""
        tables = [_read_one(path) for path in files]
        try:
            return pa.concat_tables(tables, promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            reason = " ".join(str(e).split())
            raise RecordError(files[-1], None, None, f"columns do not match the other shards of the split ({reason})") \
                from None


def _read_one(path: Path) -> pa.Table:
    import pyarrow.json as pj
    import pyarrow.parquet as pq

    with arrow_read_errors(path, path.suffix[1:]):
        return pq.read_table(path) if path.suffix == ".parquet" else pj.read_json(path)


def _shard_sets(files: list[Path]) -> dict[int, tuple[set[int], Path]]:
    """``{N: (indices seen, one of them)}`` for files named ``…-i-of-N.*``; a file without shard numbers is whole."""
    sets: dict[int, tuple[set[int], Path]] = {}
    for path in files:
        match = _SHARD.search(path.name)
        if match:
            sets.setdefault(int(match[2]), (set(), path))[0].add(int(match[1]))
    return sets


def _shard_path(example: Path, index: int) -> Path:
    """``example`` renamed to shard ``index`` (same zero padding), to name a missing shard."""
    match = _SHARD.search(example.name)
    return example.with_name(f"{example.name[:match.start(1)]}{index:0{len(match[1])}d}{example.name[match.end(1):]}")


def _conventional_patterns(config: str, split: str) -> list[str]:
    folders = [config] if config else ["data", "default"]
    return [f"{folder}/{split}-*" for folder in folders] + [f"{folder}/{split}/*" for folder in folders]


def _readme_patterns(repo_dir: Path, config: str, split: str) -> list[str]:
    """The ``data_files`` globs the dataset card declares for ``config``/``split``; [] when it declares none."""
    import yaml

    readme = repo_dir / "README.md"
    if not readme.is_file():
        return []
    text = readme.read_text(encoding="utf-8")
    if not text.startswith("---"):
        return []
    header = text[3:].split("\n---", 1)[0]
    try:
        card = yaml.safe_load(header) or {}
    except yaml.YAMLError as e:
        raise RecordError(readme, None, "configs", f"unreadable YAML header: {e}") from None
    configs = card.get("configs") if isinstance(card, dict) else None
    for entry in configs or []:
        if not isinstance(entry, dict) or entry.get("config_name", "default") != (config or "default"):
            continue
        data_files = entry.get("data_files")
        if isinstance(data_files, (str, list)) and not (isinstance(data_files, list) and data_files
                                                         and isinstance(data_files[0], dict)):
            return [data_files] if isinstance(data_files, str) else list(data_files)  # one unnamed split
        for item in data_files or []:
            if isinstance(item, dict) and item.get("split") == split:
                path = item.get("path")
                return [path] if isinstance(path, str) else list(path or [])
    return []


def download_plan(tasks: list[TaskMeta]) -> dict[str, list[str]]:
    """Repo -> ``allow_patterns`` for ``snapshot_download``: the annotation files and archives the tasks read."""
    plan: dict[str, set[str]] = {}
    for meta in tasks:
        if meta.modality == "image":
            plan.setdefault(meta.dataset_name, {"README.md"}).add(f"{meta.hf_subset}/*")
            plan.setdefault(MEDIA_REPO, set()).update(IMAGE_ARCHIVE.parts)
            continue
        # annotation repos are small next to their media, but some carry videos: fetch tables and the card only
        plan.setdefault(meta.dataset_name, set()).update({"README.md", "*.parquet", "*.jsonl"})
        if meta.modality == "video":
            plan.setdefault(MEDIA_REPO, set()).update(frame_archive(meta)[0].parts)
    return {repo: sorted(patterns) for repo, patterns in plan.items()}


def download(hub: HubDir, tasks: list[TaskMeta]) -> None:
    """Fetch what ``tasks`` need into the hub folder (network; never called by default or in tests)."""
    from huggingface_hub import snapshot_download

    by_repo = {t.dataset_name: t.revision or None for t in tasks}
    for repo, patterns in download_plan(tasks).items():
        try:
            snapshot_download(repo, repo_type="dataset", local_dir=hub.repo(repo), allow_patterns=patterns,
                              revision=by_repo.get(repo))
        except Exception as e:  # network, auth and hub errors come in many types; each is the user's to fix
            raise UserError(f"download of {repo} ({', '.join(patterns)}) failed: {type(e).__name__}: {e}") from e
