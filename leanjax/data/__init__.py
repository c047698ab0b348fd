"""Data: embedded datasets (TFDS array_record builders), grain pipelines, tokenizers, LM windows.

`import leanjax.data` stays light (no TFDS, grain): they load on first use, so `leanjax.data.assets`
can serve the weights module and the launcher cheaply.
"""

from leanjax.data.assets import MissingAssetError, asset_path
from leanjax.data.curriculum import (
    CurriculumSampler,
    competence,
    difficulty_order,
    length_schedule,
    random_order,
    split_windows,
)
from leanjax.data.lm import LMWindows, lm_source
from leanjax.data.pipeline import batches, eval_batches
from leanjax.data.sampling import (
    holdout_split,
    infobatch_plan,
    plan_batches,
    random_subset,
    select_by_score,
    semantic_dedup,
)
from leanjax.data.source import (
    ArraySource,
    DatasetNotFoundError,
    Source,
    data_dir,
    load,
    split_texts,
)
from leanjax.data.tokenizers import (
    CharVocab,
    encode_batch,
    minilm_tokenizer,
    shakespeare_bpe,
    text_classification_source,
)

__all__ = [
    "ArraySource",
    "CharVocab",
    "CurriculumSampler",
    "DatasetNotFoundError",
    "LMWindows",
    "MissingAssetError",
    "asset_path",
    "competence",
    "difficulty_order",
    "holdout_split",
    "infobatch_plan",
    "length_schedule",
    "plan_batches",
    "random_order",
    "random_subset",
    "select_by_score",
    "semantic_dedup",
    "split_windows",
    "batches",
    "data_dir",
    "encode_batch",
    "eval_batches",
    "lm_source",
    "load",
    "minilm_tokenizer",
    "shakespeare_bpe",
    "Source",
    "split_texts",
    "text_classification_source",
]
