"""The 78 MMEB-V2 tasks as typed metadata (method.md §3.1, VLM2Vec ``experiments/public/eval/*.yaml``).

Benchmark version assumed: **MMEB-V2 after the 2025-11-03 fix** of the ViDoSeek-page / MMLongBench-page tasks (HF
repos ``VLM2Vec/ViDoSeek-page-fixed`` and ``VLM2Vec/MMLongBench-page-fixed``), with MomentSeeker de-duplicated
(2025-07-31) and the 24 scored visdoc tasks using the *multilingual* ViDoRe-V2 variants. Embed-RL's published numbers
use this version; UME-R1's predate the page fix, so compare those two tasks with care (method.md §3.6, §4.11).

``revision`` is ``"main"`` for every task: the exact HF dataset commits behind the published score files are not
recorded anywhere we can read, so the registry does not pretend to pin them. A user who knows the commit they
downloaded can override it per task with ``dataclasses.replace``; reports print the revision next to each score.

Local layout (relative to the data root, local or ``s3://``; see ``umeflow.evaluate.loaders`` for the row fields):
``image-tasks/<Task>.jsonl|parquet`` + images under ``image-tasks/``; ``video-tasks/<Task>.jsonl|parquet`` + frames
under ``video-tasks/frames/<group>/<Dataset>/``; ``visdoc-tasks/<Task>/{queries,corpus,qrels}.jsonl|parquet`` + page
images under ``visdoc-tasks/<image folder>/`` (VLM2Vec's ``image_root``: the task name, except the four ViDoRe-V2
tasks, ``VISDOC_IMAGE_FOLDERS``).

Each task is built as VLM2Vec @6e1e1d4 builds it, with the per-task knobs of its eval yamls (``VIDEO_KNOBS``):
SmthSmthV2 keeps its first 1,000 rows, MomentSeeker feeds every frame of a clip, and the video classification tasks
rank against their dataset's full class list. ``leaderboard_note`` says where umeflow deliberately differs.
"""

from __future__ import annotations

from umeflow.evaluate.tasks import TaskMeta

MMEB_V2_VERSION = "MMEB-V2 post-2025-11-03 (page-fixed ViDoSeek/MMLongBench, multilingual ViDoRe-V2)"
REVISION = "main"  # placeholder: upstream score files do not record dataset commits

IMAGE_ANNOTATIONS = "ziyjiang/MMEB_Test_Instruct"

# The 20 image tasks that are also in MMEB-train (report_score_v2_mode.py "Image-InD"); the other 16 are OOD.
IMAGE_IN_DOMAIN = frozenset({
    "ImageNet-1K", "N24News", "HatefulMemes", "VOC2007", "SUN397", "OK-VQA", "A-OKVQA", "DocVQA", "InfographicsVQA",
    "ChartQA", "Visual7W", "VisDial", "CIRR", "VisualNews_t2i", "VisualNews_i2t", "MSCOCO_t2i", "MSCOCO_i2t",
    "NIGHTS", "WebQA", "MSCOCO",
})

# (task, category, parser, #queries); every image task is local, 1,000 queries, subset = task name, split test.
_IMAGE = [
    *[(t, "I-CLS", "image_cls") for t in ("ImageNet-1K", "N24News", "HatefulMemes", "VOC2007", "SUN397", "Place365",
                                         "ImageNet-A", "ImageNet-R", "ObjectNet", "Country211")],
    *[(t, "I-QA", "image_qa") for t in ("OK-VQA", "A-OKVQA", "DocVQA", "InfographicsVQA", "ChartQA", "Visual7W",
                                       "ScienceQA", "VizWiz", "GQA", "TextVQA")],
    ("VisDial", "I-RET", "image_t2i"), ("CIRR", "I-RET", "image_i2i_vg"), ("VisualNews_t2i", "I-RET", "image_t2i"),
    ("VisualNews_i2t", "I-RET", "image_i2t"), ("MSCOCO_t2i", "I-RET", "image_t2i"),
    ("MSCOCO_i2t", "I-RET", "image_i2t"), ("NIGHTS", "I-RET", "image_i2i_vg"), ("WebQA", "I-RET", "image_t2i"),
    ("FashionIQ", "I-RET", "image_i2i_vg"), ("Wiki-SS-NQ", "I-RET", "image_t2i"), ("OVEN", "I-RET", "image_i2i_vg"),
    ("EDIS", "I-RET", "image_t2i"),
    *[(t, "I-GD", "image_i2i_vg") for t in ("MSCOCO", "RefCOCO", "RefCOCO-Matching", "Visual7W-Pointing")],
]

# Video classification instructions (VLM2Vec video_classification_utils.DATASET_INSTRUCTION, keyed by dataset).
VIDEO_CLS_INSTRUCTIONS = {
    "K700": "Recognize the category of the video content.",
    "SmthSmthV2": "What actions or object interactions are being performed by the person in the video?",
    "UCF101": "What activities or sports are being performed by the person in the video?",
    "HMDB51": "What actions or objects interactions are the person in the video doing?",
    "Breakfast": "Recognize the breakfast type that the person is cooking in the video.",
}

# (task, category, parser, eval_type, #queries, HF repo, HF subset, split, frame group, frame folder) from video.yaml
_VIDEO = [
    ("K700", "V-CLS", "video_classification", "global", 1000, "VLM2Vec/Kinetics-700", "", "test", "video_cls", "K700"),
    ("SmthSmthV2", "V-CLS", "ssv2", "local", 1000, "VLM2Vec/SmthSmthV2", "", "test", "video_cls", "SSv2"),
    ("HMDB51", "V-CLS", "video_classification", "global", 1000, "VLM2Vec/HMDB51", "", "test", "video_cls", "HMDB51"),
    ("UCF101", "V-CLS", "video_classification", "global", 1000, "VLM2Vec/UCF101", "", "test", "video_cls", "UCF101"),
    ("Breakfast", "V-CLS", "video_classification", "global", 433, "VLM2Vec/Breakfast", "", "test", "video_cls",
     "Breakfast"),
    ("MVBench", "V-QA", "mvbench", "local", 4000, "VLM2Vec/MVBench", "", "train", "video_qa", "MVBench"),
    ("Video-MME", "V-QA", "videomme", "local", 2700, "VLM2Vec/Video-MME", "", "test", "video_qa", "Video-MME"),
    ("NExTQA", "V-QA", "nextqa", "local", 8564, "VLM2Vec/NExTQA", "MC", "test", "video_qa", "NExTQA"),
    ("EgoSchema", "V-QA", "egoschema", "local", 500, "VLM2Vec/EgoSchema", "Subset", "test", "video_qa", "EgoSchema"),
    ("ActivityNetQA", "V-QA", "activitynetqa", "local", 1000, "VLM2Vec/ActivityNetQA", "", "test", "video_qa",
     "ActivityNetQA"),
    ("DiDeMo", "V-RET", "didemo", "global", 1004, "VLM2Vec/DiDeMo", "", "test", "video_ret", "DiDeMo"),
    ("MSR-VTT", "V-RET", "msrvtt", "global", 1000, "VLM2Vec/MSR-VTT", "test_1k", "test", "video_ret", "MSR-VTT"),
    ("MSVD", "V-RET", "msvd", "global", 670, "VLM2Vec/MSVD", "", "test", "video_ret", "MSVD"),
    ("VATEX", "V-RET", "vatex", "global", 4478, "VLM2Vec/VATEX", "", "test", "video_ret", "VATEX"),
    ("YouCook2", "V-RET", "youcook2", "global", 3179, "lmms-lab/YouCook2", "", "val", "video_ret", "YouCook2"),
    ("QVHighlight", "V-MRET", "moment_retrieval", "local", 1083, "VLM2Vec/QVHighlight", "", "test", "video_mret",
     "QVHighlight"),
    ("Charades-STA", "V-MRET", "moment_retrieval", "local", 727, "VLM2Vec/Charades-STA", "", "test", "video_mret",
     "Charades_STA"),
    ("MomentSeeker", "V-MRET", "momentseeker", "local", 1602, "VLM2Vec/MomentSeeker", "", "test", "video_mret",
     "MomentSeeker"),
]

# (task, category, parser, #queries, HF repo, split); all global, ndcg_linear@5, BEIR queries/corpus/qrels.
_VISDOC = [
    ("ViDoRe_arxivqa", "VDRv1", "vidore", 500, "vidore/arxivqa_test_subsampled_beir", "test"),
    ("ViDoRe_docvqa", "VDRv1", "vidore", 451, "vidore/docvqa_test_subsampled_beir", "test"),
    ("ViDoRe_infovqa", "VDRv1", "vidore", 494, "vidore/infovqa_test_subsampled_beir", "test"),
    ("ViDoRe_tabfquad", "VDRv1", "vidore", 280, "vidore/tabfquad_test_subsampled_beir", "test"),
    ("ViDoRe_tatdqa", "VDRv1", "vidore", 1646, "vidore/tatdqa_test_beir", "test"),
    ("ViDoRe_shiftproject", "VDRv1", "vidore", 100, "vidore/shiftproject_test_beir", "test"),
    *[(f"ViDoRe_syntheticDocQA_{d}", "VDRv1", "vidore", 100, f"vidore/syntheticDocQA_{d}_test_beir", "test")
      for d in ("artificial_intelligence", "energy", "government_reports", "healthcare_industry")],
    ("ViDoRe_esg_reports_human_labeled_v2", "VDRv2", "vidore", 52, "vidore/esg_reports_human_labeled_v2", "test"),
    ("ViDoRe_biomedical_lectures_v2_multilingual", "VDRv2", "vidore", 640, "vidore/biomedical_lectures_v2", "test"),
    ("ViDoRe_economics_reports_v2_multilingual", "VDRv2", "vidore", 232, "vidore/economics_reports_v2", "test"),
    ("ViDoRe_esg_reports_v2_multilingual", "VDRv2", "vidore", 228, "vidore/esg_reports_v2", "test"),
    ("VisRAG_ArxivQA", "VR", "visrag", 816, "openbmb/VisRAG-Ret-Test-ArxivQA", "train"),
    ("VisRAG_ChartQA", "VR", "visrag", 63, "openbmb/VisRAG-Ret-Test-ChartQA", "train"),
    ("VisRAG_MP-DocVQA", "VR", "visrag", 591, "openbmb/VisRAG-Ret-Test-MP-DocVQA", "train"),
    ("VisRAG_SlideVQA", "VR", "visrag", 556, "openbmb/VisRAG-Ret-Test-SlideVQA", "train"),
    ("VisRAG_InfoVQA", "VR", "visrag", 718, "openbmb/VisRAG-Ret-Test-InfoVQA", "train"),
    ("VisRAG_PlotQA", "VR", "visrag", 863, "openbmb/VisRAG-Ret-Test-PlotQA", "train"),
    ("ViDoSeek-page", "OOD", "vidore", 1142, "VLM2Vec/ViDoSeek-page-fixed", "test"),
    ("ViDoSeek-doc", "OOD", "vidore", 1142, "VLM2Vec/ViDoSeek", "test"),
    ("MMLongBench-page", "OOD", "vidore", 838, "VLM2Vec/MMLongBench-page-fixed", "test"),
    ("MMLongBench-doc", "OOD", "vidore", 838, "VLM2Vec/MMLongBench-doc", "test"),
]


def _image_task(name: str, category: str, parser: str) -> TaskMeta:
    return TaskMeta(
        name=name, modality="image", category=category, metric="hit@1", eval_type="local", parser=parser,
        file=f"image-tasks/{name}", media_root="image-tasks", num_queries=1000, dataset_name=IMAGE_ANNOTATIONS,
        hf_subset=name, split="test", revision=REVISION, in_domain=name in IMAGE_IN_DOMAIN,
        description=f"MMEB-V1 {category} task ({'in' if name in IMAGE_IN_DOMAIN else 'out-of'}-domain)")


# Per-task knobs of VLM2Vec's experiments/public/eval/video.yaml @6e1e1d4 that change what a task contains.
# SmthSmthV2 is the only eval task with num_sample_per_subset (l.6; every other task says None, and image.yaml /
# visdoc.yaml set none). MomentSeeker takes every frame of its clip folders (momentseeker_dataset.py:40,68,82 call
# load_frames, not process_video_frames), all other tasks 8 (num_frames / num_video_frames / num_clip_frames).
VIDEO_KNOBS: dict[str, dict] = {
    "SmthSmthV2": {"num_sample_per_subset": 1000},
    "MomentSeeker": {"num_frames": None},
    # the full class list joins the pool (video_classification_datasets.py:61-64; umeflow.evaluate.class_labels)
    **{name: {"class_labels": name} for name in ("K700", "HMDB51", "UCF101", "Breakfast")},
}


def _video_task(name, category, parser, eval_type, n, repo, subset, split, group, folder) -> TaskMeta:
    return TaskMeta(
        name=name, modality="video", category=category, metric="hit@1", eval_type=eval_type, parser=parser,
        file=f"video-tasks/{name}", media_root=f"video-tasks/frames/{group}/{folder}", num_queries=n,
        dataset_name=repo, hf_subset=subset, split=split, revision=REVISION,
        instruction=VIDEO_CLS_INSTRUCTIONS.get(name, ""), description=f"MMEB-V2 {category} task ({parser})",
        **VIDEO_KNOBS.get(name, {}))


# visdoc.yaml @6e1e1d4 image_root where it is not visdoc-tasks/<task name>: the ViDoRe-V2 page folders drop the
# "ViDoRe_" prefix (l.56, 66, 76, 86). Every other visdoc task's image_root is visdoc-tasks/<task name>.
VISDOC_IMAGE_FOLDERS = {
    "ViDoRe_esg_reports_human_labeled_v2": "esg_reports_human_labeled_v2",
    "ViDoRe_biomedical_lectures_v2_multilingual": "biomedical_lectures_v2_multilingual",
    "ViDoRe_economics_reports_v2_multilingual": "economics_reports_v2_multilingual",
    "ViDoRe_esg_reports_v2_multilingual": "esg_reports_v2_multilingual",
}

# Where umeflow deliberately scores differently from VLM2Vec (and so from the leaderboard); the report prints these.
GRADED_QRELS_NOTE = (
    "Graded qrels: VLM2Vec's RankingMetrics.evaluate (src/utils/eval_utils/metrics.py:214 @6e1e1d4) de-duplicates "
    "a query's labels with set() and then pairs them with rel_scores in the original order (l.183), so on a query "
    "whose relevant pages have different grades the grades land on the wrong pages, in an order that changes with "
    "Python's string hashing. umeflow pairs each grade with its own page, so ndcg_linear@5 here can differ from the "
    "leaderboard's number (and the leaderboard's from run to run)."
)
LEADERBOARD_NOTES = {"ViDoRe_esg_reports_human_labeled_v2": GRADED_QRELS_NOTE}


def _visdoc_task(name, category, parser, n, repo, split) -> TaskMeta:
    return TaskMeta(
        name=name, modality="visdoc", category=category, metric="ndcg_linear@5", eval_type="global", parser=parser,
        file=f"visdoc-tasks/{name}", media_root=f"visdoc-tasks/{VISDOC_IMAGE_FOLDERS.get(name, name)}",
        num_queries=n, dataset_name=repo, split=split, revision=REVISION,
        description=f"MMEB-V2 {category} visual-document retrieval (BEIR)",
        leaderboard_note=LEADERBOARD_NOTES.get(name, ""))


MMEB_V2_TASKS: tuple[TaskMeta, ...] = (
    *(_image_task(*row) for row in _IMAGE),
    *(_video_task(*row) for row in _VIDEO),
    *(_visdoc_task(*row) for row in _VISDOC),
)

CATEGORIES: dict[str, tuple[str, ...]] = {
    "image": ("I-CLS", "I-QA", "I-RET", "I-GD"),
    "video": ("V-CLS", "V-QA", "V-RET", "V-MRET"),
    "visdoc": ("VDRv1", "VDRv2", "VR", "OOD"),
}


def mmeb_v2_task(name: str) -> TaskMeta:
    """One registry entry by name (KeyError names the task)."""
    for task in MMEB_V2_TASKS:
        if task.name == name:
            return task
    raise KeyError(name)
