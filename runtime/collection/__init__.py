"""Embedding collections and the jobs that make them: what ``ruclip-tiny embed`` writes (npz or parquet) and
``ruclip-tiny search`` ranks; the folder jobs of ``embed`` (resumable, through shards in ``OUT.parts/``) and
``classify``. Ray Data runs the same job on many machines: ``runtime.ray_data``.

    store   Collection (the file), CollectionWriter (streamed), output_format
    inputs  image_paths, text_lines, JobInputs (image_inputs, text_inputs)
    jobs    encode_shard and the in-memory jobs (embed_images, embed_texts, classify_images)
    shards  OUT.parts/: the job identity and the shard files
    job     run_embedding_job: shards, stop after the shard in flight, resume, merge
"""

from .inputs import IMAGE_SUFFIXES, JobInputs, image_inputs, image_paths, text_inputs, text_lines
from .job import JobOutcome, run_embedding_job
from .jobs import JOB_CHUNK, Classification, Shard, classify_images, embed_images, embed_texts, encode_shard
from .shards import JobIdentity, ShardStore, parts_dir
from .store import Collection, CollectionError, CollectionWriter, output_format

__all__ = [
    "IMAGE_SUFFIXES", "JOB_CHUNK", "Classification", "Collection", "CollectionError", "CollectionWriter",
    "JobIdentity", "JobInputs", "JobOutcome", "Shard", "ShardStore", "classify_images", "embed_images",
    "embed_texts", "encode_shard", "image_inputs", "image_paths", "output_format", "parts_dir", "run_embedding_job",
    "text_inputs", "text_lines",
]
