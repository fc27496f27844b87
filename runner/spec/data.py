"""The data sections: `data:` (sources, splits, mixing), `chunking:`, `queries:` and `negatives:`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from runner.spec.base import _Model, check_api_key_env


class Splits(_Model):
    """Names of the qrels splits used for training, model selection and the final test."""

    train: str = Field("train", description="Split whose qrels become training pairs.")
    dev: str | None = Field("dev", description="Split for per-epoch evaluation and early stopping; null: none.")
    test: str = Field("test", description="Held-out split on which base and tuned models are compared.")


class MixSource(_Model):
    """Another source whose training pairs are mixed into the training set.

    For example general English pairs kept while tuning on Chinese data, so English retrieval does not degrade.
    """

    source: Literal["beir", "jsonl", "hf"] = Field("beir", description="Format, as data.source.")
    path: str = Field(..., description="Location, as data.path (relative to the spec).")
    split: str = Field("train", description="Split whose pairs are drawn (beir, hf).")
    weight: float = Field(
        ...,
        gt=0,
        le=100,
        description="Pairs drawn from this source per pair of the main source (0.25: one per four main pairs); "
        "a seeded sample, all of them when there are fewer.",
    )


class DataSpec(_Model):
    """Where the training and evaluation data come from."""

    source: Literal["beir", "jsonl", "hf", "documents"] = Field(
        "beir",
        description="beir: a BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv). jsonl: FlagEmbedding "
        "training JSONL ({query, pos, neg}) at `path`, evaluated on the BEIR folder `eval_path`. hf: a Hugging "
        "Face dataset (hub id or local folder) in the BEIR/mteb layout with configs corpus, queries and "
        "default (qrels, one split per name). documents: a folder of .md, .txt, .html and .pdf files, chunked "
        "as `chunking:` says, with queries made as `queries:` says, split train/dev/test by document.",
    )
    path: str = Field(..., description="Dataset location; relative paths are resolved against the spec file.")
    eval_path: str | None = Field(None, description="BEIR folder to evaluate on (required for source jsonl).")
    revision: str | None = Field(None, description="Hub revision for source hf.")
    splits: Splits = Field(default_factory=Splits, description="Split names.")
    limit: int | None = Field(
        None, ge=1, description="Cap on training pairs, drawn deterministically with `seed`; null: all."
    )
    seed: int = Field(42, description="Seed for the training-pair sample and random negatives.")
    split_shares: tuple[float, float, float] = Field(
        (0.7, 0.1, 0.2),
        description="documents source: shares of documents in train, dev and test (whole documents go to one "
        "split, so no document feeds both sides).",
    )
    on_leak: Literal["error", "warn", "drop"] = Field(
        "warn",
        description="What a train/test leak (the same or a near-identical query or positive in training and "
        "in dev/test) does: error stops the run before training, warn reports it, drop removes the training "
        "pairs that leak.",
    )
    leak_similarity: float = Field(
        0.95,
        gt=0,
        le=1,
        description="Cosine similarity (base model) at or above which two texts count as near-identical.",
    )
    min_chars: int = Field(10, ge=0, description="Texts shorter than this are reported as very short.")
    mix: list[MixSource] = Field(
        default_factory=list,
        description="Other sources mixed into the training pairs with weights; evaluation stays on this source "
        "(see eval.sets to score others). Their pairs get negatives from their own corpus.",
    )

    @model_validator(mode="after")
    def _shares(self) -> DataSpec:
        if abs(sum(self.split_shares) - 1.0) > 1e-6 or min(self.split_shares) < 0:
            raise ValueError(f"split_shares must be three non-negative shares summing to 1, got {self.split_shares}")
        return self

    @model_validator(mode="after")
    def _eval_path_for_jsonl(self) -> DataSpec:
        if self.source == "jsonl" and not self.eval_path:
            raise ValueError("source jsonl needs eval_path: a BEIR folder holding the dev and test splits")
        return self


class SemanticSpec(_Model):
    """Where semantic chunking cuts: between consecutive sentences whose embedding similarity drops."""

    threshold: float | None = Field(
        None, ge=-1, le=1, description="Cut where the cosine similarity of neighbouring sentences is below this."
    )
    percentile: float = Field(
        20.0,
        gt=0,
        lt=100,
        description="Without threshold: cut at the neighbouring-sentence similarities below this percentile "
        "of the document's similarities.",
    )


class ChunkingSpec(_Model):
    """How documents (source documents) are cut into passages, sized in tokens of the base model's tokenizer."""

    strategy: Literal["none", "fixed", "recursive", "paragraph", "semantic"] = Field(
        "recursive",
        description="none: one passage per document section. fixed: windows of chunk_size tokens. recursive: "
        "split at paragraphs, then lines, sentences, words until chunks fit. paragraph: whole paragraphs packed "
        "under headings. semantic: cut where neighbouring sentences' embedding similarity drops.",
    )
    chunk_size: int = Field(200, ge=16, le=8192, description="Largest chunk, in tokens of the base model.")
    overlap: int = Field(20, ge=0, description="Tokens shared by consecutive chunks (fixed and recursive).")
    semantic: SemanticSpec = Field(default_factory=SemanticSpec, description="Semantic chunking cut points.")
    levels: list[Literal["coarse", "fine"]] = Field(
        default_factory=lambda: ["fine"],
        min_length=1,
        description="[fine]: one level. [coarse, fine]: also coarse chunks of coarse_size tokens, each fine chunk "
        "linked to its parent, for two-stage retrieval (eval.two_stage).",
    )
    coarse_size: int = Field(800, ge=16, le=32768, description="Largest coarse chunk, in tokens.")

    @model_validator(mode="after")
    def _sizes(self) -> ChunkingSpec:
        if self.overlap >= self.chunk_size:
            raise ValueError(f"overlap ({self.overlap}) must be smaller than chunk_size ({self.chunk_size})")
        if "coarse" in self.levels and self.coarse_size <= self.chunk_size:
            raise ValueError(f"coarse_size ({self.coarse_size}) must be larger than chunk_size ({self.chunk_size})")
        return self


class LLMSpec(_Model):
    """An OpenAI-compatible chat endpoint that writes questions for chunks."""

    base_url: str = Field(
        ..., description="Endpoint base URL, e.g. https://api.openai.com/v1 or http://localhost:8000/v1."
    )
    model: str = Field(..., description="Model name the endpoint serves.")
    api_key_env: str | None = Field(
        "OPENAI_API_KEY",
        description="Name of the environment variable holding the API key (the key is never stored); null: none. "
        "Only names ending in _API_KEY, or listed in the environment variable EMBX_API_KEY_ENVS (comma-separated, "
        "set outside the spec), so a shared spec cannot send another secret to its endpoint.",
    )

    @field_validator("api_key_env")
    @classmethod
    def _key_name(cls, value: str | None) -> str | None:
        return check_api_key_env(value)

    prompt: str | None = Field(
        None,
        description="Jinja template file for the prompt (relative to the spec); null: the built-in one. It gets "
        "`chunk` (text), `title`, `heading_path`, `n` (questions wanted) and must ask for JSON "
        '{"questions": [...]}.',
    )
    temperature: float = Field(0.7, ge=0, le=2, description="Sampling temperature.")
    concurrency: int = Field(4, ge=1, le=256, description="Requests in flight at once.")
    max_retries: int = Field(4, ge=0, le=20, description="Retries per chunk (timeouts, 429, 5xx), with backoff.")
    timeout_s: float = Field(60.0, gt=0, description="Seconds before a request times out.")
    cache: str | None = Field(
        None,
        description="JSONL file of answers, appended as they arrive, so a rerun after a crash only asks for "
        "what is missing; null: <output.dir>/llm-cache/<spec name>.jsonl.",
    )


class QAPairsSpec(_Model):
    """Existing question-answer pairs: each question becomes a query whose positive is the chunk holding its answer."""

    path: str = Field(..., description="CSV or JSONL file (relative to the spec).")
    columns: dict[str, str] = Field(
        default_factory=lambda: {"query": "question", "answer": "answer"},
        description="Column mapping: query (required), answer (text found in the chunk) and/or document "
        "(the source file's doc_id).",
    )


class QueriesSpec(_Model):
    """How queries are made for the chunks of a documents source."""

    generator: Literal["llm", "ict", "heading", "qa_pairs"] = Field(
        "ict",
        description="llm: questions written by an LLM. ict: inverse cloze task (a sentence of the chunk is the "
        "query and is removed from the positive). heading: the chunk's heading or document title is the query. "
        "qa_pairs: existing pairs from `qa_pairs`.",
    )
    per_chunk: int = Field(1, ge=1, le=20, description="Queries per chunk (llm, ict).")
    min_words: int = Field(4, ge=1, description="Queries (and ICT sentences) with fewer words are dropped.")
    seed: int = Field(42, description="Seed for ICT sentence choice and the document split.")
    llm: LLMSpec | None = Field(None, description="The endpoint for generator llm.")
    qa_pairs: QAPairsSpec | None = Field(None, description="The pairs for generator qa_pairs.")

    @model_validator(mode="after")
    def _settings(self) -> QueriesSpec:
        if self.generator == "llm" and self.llm is None:
            raise ValueError("generator llm needs an llm: section (base_url, model)")
        if self.generator == "qa_pairs" and self.qa_pairs is None:
            raise ValueError("generator qa_pairs needs a qa_pairs: section (path, columns)")
        return self


class RescoreSpec(_Model):
    """A cross-encoder teacher that rescores mined candidates, dropping those it scores close to the positive."""

    model: str = Field(
        ..., description="Cross-encoder (sentence-transformers CrossEncoder): a local folder or a hub id."
    )
    relative_margin: float = Field(
        0.05,
        ge=0.0,
        lt=1.0,
        description="Drop a candidate the teacher scores above (1 - relative_margin) x its score of the positive "
        "(positive-aware mining, as NV-Retriever's TopK-PercPos): a likely unlabelled positive.",
    )
    shortlist: int = Field(
        4,
        ge=1,
        le=20,
        description="Candidates rescored per pair, as a multiple of per_query (drawn at random from those that "
        "pass the embedding filters), so the teacher's cost stays bounded.",
    )
    batch_size: int = Field(32, ge=1, description="Pairs per cross-encoder forward pass.")


class NegativesSpec(_Model):
    """How negatives are chosen for each (query, positive) pair."""

    mode: Literal["in-batch", "random", "hard"] = Field(
        "in-batch",
        description="in-batch: the other positives of the batch only. random: per_query random corpus "
        "passages (never a known positive). hard: mined with the base model from ranks mine_range.",
    )
    per_query: int = Field(3, ge=1, le=32, description="Explicit negatives per pair (1:3 to 1:5 is typical).")
    mine_range: tuple[int, int] = Field(
        (10, 100),
        description="Ranks [from, to) of the base model's results that hard negatives are drawn from.",
    )
    relative_margin: float = Field(
        0.05,
        ge=0.0,
        lt=1.0,
        description="Drop mined candidates scoring above (1 - relative_margin) x the positive's score: "
        "they are likely unlabelled positives.",
    )

    rescore: RescoreSpec | None = Field(
        None, description="hard mode: rescore mined candidates with a cross-encoder teacher; see below. null: off."
    )

    @model_validator(mode="after")
    def _rescore_needs_mining(self) -> NegativesSpec:
        if self.rescore is not None and self.mode != "hard":
            raise ValueError("rescore: rescores mined candidates: it needs mode: hard")
        return self

    @model_validator(mode="after")
    def _range_fits(self) -> NegativesSpec:
        low, high = self.mine_range
        if low < 0 or high <= low:
            raise ValueError(f"mine_range must be [from, to) with 0 <= from < to, got {list(self.mine_range)}")
        if self.mode == "hard" and high - low < self.per_query:
            raise ValueError(f"mine_range {list(self.mine_range)} holds fewer ranks than per_query={self.per_query}")
        return self
