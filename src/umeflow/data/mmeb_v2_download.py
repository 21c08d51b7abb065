"""``umeflow data mmeb-v2``: MMEB-V2 as a user downloads it from the Hugging Face hub, turned into the evaluation
root that ``umeflow evaluate --tasks mmeb-v2 --data-root DIR`` reads, with a ``manifest.json`` DVC can track.

    umeflow data mmeb-v2 --hub-dir HUB --out DIR [--tasks mmeb-v2|image|video|visdoc|NAME,...] [--download] [--verify]

Input, ``--hub-dir HUB``: one folder per dataset repo, ``HUB/<owner>/<repo>/``, exactly as ``hf download <owner>/<repo>
--repo-type dataset --local-dir HUB/<owner>/<repo>`` (or ``snapshot_download(..., local_dir=...)``) writes it. Which
repos, configs, splits and archives each task reads is in ``umeflow.data.mmeb_hub``; ``--download`` fetches exactly
those first (network; off by default). ``--tasks`` takes the spec ``umeflow evaluate`` takes.

Output, ``--out DIR``; every destination comes from the task registry (``TaskMeta.file`` and ``media_root``):
- image   ``<file>.parquet`` (the config's ``test`` shards, merged in shard order); ``mmeb_v1.tar.gz`` unpacked into
          ``media_root`` (``image-tasks/``) without its top ``MMEB/`` folder;
- video   ``<file>.parquet`` (MVBench: its 20 configs in VLM2Vec's order, each row tagged with the ``subset`` column
          VLM2Vec adds); the task's folder of its frame archive unpacked into ``media_root``;
- visdoc  ``<file>/{queries,corpus,qrels}.parquet``; every corpus page written once to ``media_root`` under the
          name VLM2Vec caches it under (``<corpus-id>.png``; VisRAG: a shortened id), byte for byte when already in
          that format, the corpus ``image`` column holding the name;
- ``manifest.json``: per task its files (rows, bytes, sha256), its media folders and the hub files read; per media
  folder its file count, bytes, a sha256 over every file's path and sha256, the archive parts (bytes, sha256) and
  the names it put in the folder (``entries``: what a reconversion removes when the new download lacks them; the
  annotation files beside the media in ``image-tasks/`` and the visdoc folders are not among them).

Safe and resumable: archives are streamed through tarfile's ``data`` filter (no member lands outside its folder);
outputs are built under ``DIR/.staging`` or a temporary sibling and renamed into place, and a task enters the manifest
only when all its outputs are in place. A rerun skips each task and media folder whose manifest entry still matches
(the same sha256 of every hub file read, remembered by size and mtime in ``HUB/.umeflow/sha256.json``, and the same
sha256 of every output annotation file). A missing repo, config, shard or archive stops the run before any work
with one line naming it and the ``hf download`` command that fetches it. ``--verify`` then loads every task as
``umeflow evaluate`` does. Version the result with ``dvc add DIR``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from tqdm.auto import tqdm

from umeflow.data import archives, mmeb_hub
from umeflow.data.mmeb_hub import IMAGE_ARCHIVE, MEDIA_REPO, TAGGED_CONFIGS, Archive, HubDir
from umeflow.errors import RecordError, UserError
from umeflow.evaluate.tasks import TaskMeta
from umeflow.io import atomic_path, iter_parquet_rows, sha256_file, write_json

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = "umeflow-mmeb-v2-root/1"


@dataclass(frozen=True)
class Media:
    """One media folder of the output: an archive's content (``folder`` inside it after its top folder, or all of
    it when None), or (``archive`` None) the page images of a visdoc corpus."""

    dest: str
    archive: Archive | None = None
    folder: str | None = None


@dataclass
class Plan:
    """What one task reads (hub files per output part and config, in order) and which media folder it needs."""

    meta: TaskMeta
    parts: dict[str, list[tuple[str, list[Path]]]]
    media: Media
    media_sources: list[Path] = field(default_factory=list)

    def sources(self) -> list[Path]:
        return [p for configs in self.parts.values() for _, files in configs for p in files]


def convert(hub_dir: str | Path, out: str | Path, spec: str = "mmeb-v2", *, download: bool = False,
            verify: bool = False) -> dict:
    """Build (or bring up to date) the evaluation root ``out`` from the hub folder; returns the manifest."""
    hub, out = HubDir(hub_dir), Path(out)
    tasks = select_mmeb_tasks(out, spec)
    if download:
        mmeb_hub.download(hub, tasks)
    manifest = load_manifest(out)
    plans, missing = [], []
    for meta in tasks:  # resolve every input first: a missing one stops the run before any work
        try:
            plans.append(plan_task(hub, meta))
        except UserError as e:  # fine for a task converted before whose outputs are intact
            if not (_files_intact(out, manifest["tasks"].get(meta.name)) and (out / meta.media_root).is_dir()):
                missing.append(str(e))
                continue
            log.info("mmeb-v2: %s kept as converted before (its hub files are no longer in %s)", meta.name, hub.root)
    if missing:
        more = f" (and inputs of {len(missing) - 1} more task(s) are missing)" if len(missing) > 1 else ""
        raise UserError(missing[0] + more)
    stage = out / ".staging"
    try:
        todo = [p for p in plans if not _task_current(hub, out, manifest, p)]
        log.info("mmeb-v2: %d of %d tasks to convert into %s", len(todo), len(tasks), out)
        shutil.rmtree(stage, ignore_errors=True)  # left by a killed run; nothing in it was ever recorded
        _unpack_archives(hub, out, stage, manifest, todo)
        for plan in tqdm(todo, desc="mmeb-v2 tasks", unit="task"):
            _convert_task(hub, out, stage, manifest, plan)
            write_json(out / MANIFEST, manifest)
        write_json(out / MANIFEST, manifest)
    finally:
        hub.save_memory()
        shutil.rmtree(stage, ignore_errors=True)
    log.info("mmeb-v2: %d converted, %d already up to date -> %s", len(todo), len(tasks) - len(todo), out / MANIFEST)
    if verify:
        verify_tasks(out, tasks)
    return manifest


def select_mmeb_tasks(out: Path, spec: str) -> list[TaskMeta]:
    from umeflow.evaluate.mmeb_v2 import MMEB_V2_TASKS
    from umeflow.evaluate.tasks import select_tasks

    words = {w.strip() for w in (spec or "").split(",")}
    if not spec or words & {"offline", "all"}:
        raise UserError(f"--tasks {spec!r}: this command converts MMEB-V2 tasks only (mmeb-v2, image, video, visdoc "
                        "or MMEB-V2 task names); the offline suite comes from `umeflow data build`")
    registry = {t.name for t in MMEB_V2_TASKS}
    picked = select_tasks(out, spec)
    other = [t.name for t in picked if t.name not in registry]
    if other:
        raise UserError(f"--tasks: {other} are not MMEB-V2 tasks")
    return picked


def plan_task(hub: HubDir, meta: TaskMeta) -> Plan:
    """Resolve every hub file the task reads; raises UserError (one line, with the fetch command) if one is missing."""
    parts = {part: [(config, hub.split_files(meta.dataset_name, config, split)) for config, split in pairs]
             for part, pairs in mmeb_hub.annotation_parts(meta).items()}
    if meta.modality == "image":
        media = Media(meta.media_root, IMAGE_ARCHIVE)
    elif meta.modality == "video":
        archive, folder = mmeb_hub.frame_archive(meta)
        media = Media(meta.media_root, archive, folder)
    else:
        return Plan(meta, parts, Media(meta.media_root), [p for _, files in parts["corpus"] for p in files])
    return Plan(meta, parts, media, hub.archive_parts(media.archive))


# ----------------------------------------------------------------------------------------------------- manifest

def load_manifest(out: Path) -> dict:
    path = out / MANIFEST
    if not path.is_file():
        from umeflow.evaluate.mmeb_v2 import MMEB_V2_VERSION

        return {"format": FORMAT, "benchmark": MMEB_V2_VERSION, "tasks": {}, "media": {}}
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RecordError(path, e.lineno, None, f"malformed JSON: {e.msg}; delete it to rebuild {out}") from None
    if not isinstance(manifest, dict):
        raise RecordError(path, None, None, f"expected a JSON object; delete it to rebuild {out}")
    if manifest.get("format") != FORMAT:
        raise RecordError(path, None, "format", f"expected {FORMAT!r}: not written by `umeflow data mmeb-v2`")
    _check_manifest(path, manifest)
    return manifest


def _check_manifest(path: Path, manifest: dict) -> None:
    """The fields a rerun reads, so that a hand-edited manifest is one line naming the field, not a KeyError."""
    def bad(field: str, expected: str) -> RecordError:
        return RecordError(path, None, field, f"expected {expected}; delete the manifest to rebuild {path.parent}")

    for section in ("tasks", "media"):
        if not isinstance(manifest.get(section), dict):
            raise bad(section, "an object")
        for name, entry in manifest[section].items():
            if not isinstance(entry, dict):
                raise bad(f"{section}.{name}", "an object")
            if not isinstance(entry.get("sources"), dict):
                raise bad(f"{section}.{name}.sources", "an object of hub file -> bytes and sha256")
    for name, entry in manifest["tasks"].items():
        files = entry.get("files")
        if not isinstance(files, dict) or not all(isinstance(f, dict) and isinstance(f.get("sha256"), str)
                                                  for f in files.values()):
            raise bad(f"tasks.{name}.files", "an object of output file -> rows, bytes and sha256")
    for dest, entry in manifest["media"].items():
        names = entry.get("entries")
        if not isinstance(names, list) or not all(isinstance(n, str) and n not in ("", ".", "..")
                                                  and "/" not in n and "\\" not in n for n in names):
            raise bad(f"media.{dest}.entries", "a list of the names the folder's media have in it")


def _sources(hub: HubDir, paths: list[Path]) -> dict[str, dict]:
    """Hub-relative path -> bytes and sha256 of the hub files an output was made from."""
    return {path.relative_to(hub.root).as_posix(): {"bytes": path.stat().st_size, "sha256": hub.sha256(path)}
            for path in paths}


def _files_intact(out: Path, entry: dict | None) -> bool:
    return bool(entry) and all((out / rel).is_file() and sha256_file(out / rel) == info["sha256"]
                               for rel, info in entry["files"].items())


def _media_current(hub: HubDir, out: Path, manifest: dict, plan: Plan) -> bool:
    entry = manifest["media"].get(plan.media.dest)
    return bool(entry) and (out / plan.media.dest).is_dir() and entry.get("folder") == plan.media.folder \
        and entry["sources"] == _sources(hub, plan.media_sources)


def _task_current(hub: HubDir, out: Path, manifest: dict, plan: Plan) -> bool:
    entry = manifest["tasks"].get(plan.meta.name)
    return bool(entry) and entry["sources"] == _sources(hub, plan.sources()) and _files_intact(out, entry) \
        and _media_current(hub, out, manifest, plan)


def _tree_summary(folder: Path) -> dict:
    """File count, bytes and one sha256 over every file's relative path and sha256 (sorted)."""
    digest, count, size = hashlib.sha256(), 0, 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder).as_posix()}\0{sha256_file(path)}\n".encode())
        count, size = count + 1, size + path.stat().st_size
    return {"files": count, "bytes": size, "sha256": digest.hexdigest()}


def _install_media(out: Path, manifest: dict, dest: str, staged: Path, folder: str | None, sources: dict) -> None:
    """Move every entry of ``staged`` into ``out/dest`` (each renamed at once, replacing what is there) and record
    the folder in the manifest.

    A media folder owns the entries its installs put there (``entries`` in the manifest): those the new set lacks
    are removed, so the folder holds what the manifest describes. Nothing else is touched: ``image-tasks/`` and
    most visdoc folders also hold the tasks' annotation files, beside the media. The names are recorded before
    anything moves (with no sources, so the entry is not current), so a run killed halfway still knows them."""
    summary = _tree_summary(staged)
    names = sorted(entry.name for entry in staged.iterdir())
    before = manifest["media"].get(dest, {}).get("entries", [])
    manifest["media"][dest] = {"folder": folder, "entries": sorted({*before, *names}), "sources": {}}
    write_json(out / MANIFEST, manifest)
    target = out / dest
    target.mkdir(parents=True, exist_ok=True)
    for name in sorted(set(before) - set(names)):
        _remove(target / name)
    for name in names:
        _remove(target / name)
        os.replace(staged / name, target / name)
    manifest["media"][dest] = {"folder": folder, **summary, "entries": names, "sources": sources}


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


# ------------------------------------------------------------------------------------------------------- media

def _unpack_archives(hub: HubDir, out: Path, stage: Path, manifest: dict, todo: list[Plan]) -> None:
    """One streamed pass per archive, extracting the folders of every task that needs it (image tasks: all of it)."""
    wanted: dict[Archive, dict[str, Plan]] = {}
    for plan in todo:
        if plan.media.archive is not None and not _media_current(hub, out, manifest, plan):
            wanted.setdefault(plan.media.archive, {}).setdefault(plan.media.dest, plan)
    for archive, plans in wanted.items():
        staged = {plan.media.folder: stage / "media" / dest for dest, plan in plans.items()}

        def route(name: str, archive=archive, staged=staged) -> tuple[Path, str] | None:
            parts = PurePosixPath(name).parts
            if archive.top and parts[:1] == (archive.top,):
                parts = parts[1:]
            if None in staged:  # the whole archive
                return (staged[None], "/".join(parts)) if parts else None
            if len(parts) > 1 and parts[0] in staged:
                return staged[parts[0]], "/".join(parts[1:])
            return None

        parts = hub.archive_parts(archive)
        digests = archives.extract(parts, route, stage, shown=f"{MEDIA_REPO}/{archive.parts[0]}")
        for path, digest in zip(parts, digests):
            hub.remember(path, digest)
        for plan in plans.values():
            if not staged[plan.media.folder].is_dir():
                inside = "/".join(x for x in (archive.top, plan.media.folder) if x)
                raise UserError(f"{MEDIA_REPO}/{archive.parts[0]} has no folder {inside}/, where task "
                                f"{plan.meta.name} reads its media")
        for dest, plan in plans.items():
            _install_media(out, manifest, dest, staged[plan.media.folder], plan.media.folder, _sources(hub, parts))
        write_json(out / MANIFEST, manifest)


def _write_page(folder: Path, name: str, data: bytes) -> None:
    """The page under VLM2Vec's file name. VLM2Vec saves the decoded page in the format of the name's extension
    (vidore_dataset.py:60-63, visrag_dataset.py:66-71 @6e1e1d4): bytes already in that format are written as they
    are (the same pixels), others are re-encoded as VLM2Vec does."""
    target = Image.registered_extensions().get(PurePosixPath(name).suffix.lower())
    with Image.open(io.BytesIO(data)) as image:
        if target is None or image.format == target:
            (folder / name).write_bytes(data)
        else:
            image.save(folder / name)


def _corpus_pages(plan: Plan, hub: HubDir, folder: Path) -> pa.Table:
    """Write each corpus page's image once to ``folder``; the corpus rows with ``image`` = that file's name."""
    from umeflow.evaluate.loaders import vlm2vec_page_file  # one definition of VLM2Vec's names

    folder.mkdir(parents=True, exist_ok=True)
    rows, by_id, owner = [], {}, {}
    for _, files in plan.parts["corpus"]:
        for path in files:
            for line, rec in enumerate(_records(hub, path), 1):
                if "corpus-id" not in rec:
                    raise RecordError(path, line, "corpus-id", "required field is missing")
                cid = str(rec["corpus-id"])
                if cid not in by_id:
                    name = vlm2vec_page_file(plan.meta.loader, cid)
                    if "/" in name or "\\" in name or name.startswith(".") or owner.get(name, cid) != cid:
                        raise RecordError(path, line, "corpus-id", f"page file name {name!r} is not a safe, "
                                                                   "unique file name")
                    image = rec.get("image")
                    data = image.get("bytes") if isinstance(image, dict) else image
                    if not isinstance(data, bytes) or not data:
                        raise RecordError(path, line, "image", "expected image bytes or an HF image struct with bytes")
                    try:
                        _write_page(folder, name, data)
                    except Exception as e:  # PIL raises several types for bytes that are not an image
                        raise RecordError(path, line, "image", f"not a readable image ({type(e).__name__})") from None
                    by_id[cid], owner[name] = name, cid
                rows.append({**rec, "image": by_id[cid]})
    return pa.Table.from_pylist(rows)


def _records(hub: HubDir, path: Path) -> Iterator[dict]:
    """The rows of one corpus shard; parquet is streamed in small batches (a batch of page images is megabytes)."""
    if path.suffix == ".parquet":
        return iter_parquet_rows(path, batch_size=64)
    return iter(hub.read_table([path]).to_pylist())


# ------------------------------------------------------------------------------------------------- annotations

def _merged(hub: HubDir, meta: TaskMeta, configs: list[tuple[str, list[Path]]]) -> pa.Table:
    tables = []
    for config, files in configs:
        table = hub.read_table(files)
        if meta.loader in TAGGED_CONFIGS:  # VLM2Vec dataset_utils.load_hf_dataset_multiple_subset adds `subset`
            if "subset" in table.column_names:
                raise RecordError(files[0], None, "subset", "already present; the converter adds it per config")
            table = table.append_column("subset", pa.array([config] * table.num_rows, pa.string()))
        tables.append(table)
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        reason = " ".join(str(e).split())
        raise RecordError(configs[-1][1][0], None, None, f"columns do not match the other configs ({reason})") from None


def _write_parquet(out: Path, rel: str, table: pa.Table) -> dict:
    other = out / (rel[: -len(".parquet")] + ".jsonl")
    if other.exists():  # the loaders read <file>.jsonl before <file>.parquet
        raise UserError(f"{other} would be read instead of the converted {rel}; remove it")
    with atomic_path(out / rel) as tmp:
        pq.write_table(table, tmp)
    return {"rows": table.num_rows, "bytes": (out / rel).stat().st_size, "sha256": sha256_file(out / rel)}


def _convert_task(hub: HubDir, out: Path, stage: Path, manifest: dict, plan: Plan) -> None:
    meta = plan.meta
    if meta.modality == "visdoc":
        folder = stage / "pages" / meta.name
        tables = {f"{meta.file}/{part}.parquet": (_corpus_pages(plan, hub, folder) if part == "corpus"
                                                   else _merged(hub, meta, configs))
                  for part, configs in plan.parts.items()}
        _install_media(out, manifest, meta.media_root, folder, None, _sources(hub, plan.media_sources))
    else:
        tables = {f"{meta.file}.parquet": _merged(hub, meta, plan.parts[""])}
    files = {rel: _write_parquet(out, rel, table) for rel, table in tables.items()}
    main = f"{meta.file}/queries.parquet" if meta.modality == "visdoc" else f"{meta.file}.parquet"
    manifest["tasks"][meta.name] = {
        "modality": meta.modality, "repo": meta.dataset_name, "split": meta.split, "rows": files[main]["rows"],
        "files": files, "media": [meta.media_root], "sources": _sources(hub, plan.sources())}


def verify_tasks(out: Path, tasks: list[TaskMeta]) -> dict[str, int]:
    """Load every task as ``umeflow evaluate`` does (raises on the first bad row); queries per task."""
    from umeflow.evaluate.tasks import load_task

    # load_task itself warns when a task's count differs from the published one (TaskMeta.num_queries)
    return {meta.name: len(load_task(meta, out).queries) for meta in tqdm(tasks, desc="verify", unit="task")}
