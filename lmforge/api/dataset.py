"""`Dataset`: raw text in, training-ready token shards, a tokenizer and a dataset card out."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field, model_validator

from lmforge.api.meta import ApiModel, LocalRef, ObjectMeta, Rule, Status
from lmforge.api.scheduling import Compute
from lmforge.api.tracking import Tracking

DEFAULT_ALLOWED_LICENSES = [
    "CC0-1.0",
    "CC-BY-4.0",
    "CC-BY-SA-4.0",
    "ODC-BY-1.0",
    "PDDL-1.0",
    "MIT",
    "Apache-2.0",
    "BSD-2-Clause",
    "BSD-3-Clause",
    "public-domain",
]


class SourceFormat(StrEnum):
    """How a source's files are read; `auto` goes by extension (`.txt`, `.jsonl`, `.parquet`,
    optionally followed by `.gz` or `.zst`)."""

    AUTO = "auto"
    TEXT = "text"
    JSONL = "jsonl"
    PARQUET = "parquet"


class Source(ApiModel):
    """One input of the dataset, with the licence it is used under."""

    name: str = Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    """Name of the source, as it appears in the dataset card."""
    uri: str = Field(min_length=1)
    """Files to read: a local path or glob (relative to the manifest's directory), `file://…`, or an
    S3 prefix/glob `s3://bucket/prefix/*.jsonl.zst`."""
    format: SourceFormat = SourceFormat.AUTO
    """File format."""
    text_field: str = "text"
    """JSONL/Parquet: the field holding the document text."""
    url_field: str | None = None
    """JSONL/Parquet: the field holding the document URL, used by the opt-out list."""
    domain: str | None = None
    """Domain all documents of this source come from, used by the opt-out list."""
    license: str = Field(min_length=1, max_length=64)
    """SPDX identifier (or `public-domain`) of the licence the source is used under."""
    weight: float = Field(default=1.0, gt=0, le=100)
    """Mixing weight: documents are up- or down-sampled by this factor (1.0 keeps each once)."""


class OptOut(ApiModel):
    """Creators' opt-outs, applied before anything else."""

    domains: list[str] = Field(default_factory=list, max_length=100_000)
    """Domains whose documents are dropped (subdomains included)."""
    urls: list[str] = Field(default_factory=list, max_length=100_000)
    """URL prefixes whose documents are dropped."""
    files: list[str] = Field(default_factory=list, max_length=1024)
    """Opt-out list files (one domain or URL prefix per line, `#` comments, robots-style
    `Disallow:` lines accepted), local paths or S3 URIs."""


class Cleaning(ApiModel):
    """Normalisation applied to every document."""

    normalize_unicode: bool = True
    """Unicode NFC normalisation."""
    strip_control_chars: bool = True
    """Remove control characters other than newline and tab."""
    collapse_whitespace: bool = True
    """Collapse runs of spaces and blank lines."""
    remove_boilerplate: bool = True
    """Drop boilerplate lines (cookie banners, 'all rights reserved', navigation crumbs…)."""
    boilerplate_patterns: list[str] = Field(default_factory=list, max_length=1024)
    """Extra regular expressions; a line matching one is dropped."""


class QualityFilter(ApiModel):
    """Gopher/C4-style heuristics; a document failing any is dropped and counted by rule."""

    rules = (
        Rule("self.minWords <= self.maxWords", "minWords must not exceed maxWords", "minWords"),
        Rule(
            "self.minMeanWordLength <= self.maxMeanWordLength",
            "minMeanWordLength must not exceed maxMeanWordLength",
            "minMeanWordLength",
        ),
    )

    enabled: bool = True
    """Apply the quality filter."""
    min_words: int = Field(default=20, ge=0)
    """Fewest words a document may have."""
    max_words: int = Field(default=100_000, ge=1)
    """Most words a document may have."""
    min_mean_word_length: float = Field(default=3.0, ge=0)
    """Smallest mean word length, in characters."""
    max_mean_word_length: float = Field(default=10.0, gt=0)
    """Largest mean word length, in characters."""
    max_symbol_word_ratio: float = Field(default=0.1, ge=0)
    """Most `#` and `…` symbols per word."""
    max_bullet_line_ratio: float = Field(default=0.9, ge=0, le=1)
    """Largest fraction of lines starting with a bullet."""
    max_ellipsis_line_ratio: float = Field(default=0.3, ge=0, le=1)
    """Largest fraction of lines ending with an ellipsis."""
    min_alpha_word_ratio: float = Field(default=0.8, ge=0, le=1)
    """Smallest fraction of words containing a letter."""
    max_duplicate_line_fraction: float = Field(default=0.3, ge=0, le=1)
    """Largest fraction of lines that are duplicates of another line in the document."""
    max_duplicate_paragraph_fraction: float = Field(default=0.3, ge=0, le=1)
    """Largest fraction of paragraphs that are duplicates within the document."""
    max_top_ngram_fraction: float = Field(default=0.2, ge=0, le=1)
    """Largest fraction of characters covered by the most frequent word 2-gram."""
    max_duplicate_ngram_fraction: float = Field(default=0.15, ge=0, le=1)
    """Largest fraction of characters in duplicated word 5-grams."""

    @model_validator(mode="after")
    def _bounds(self) -> QualityFilter:
        if self.min_words > self.max_words:
            raise ValueError("minWords must not exceed maxWords")
        if self.min_mean_word_length > self.max_mean_word_length:
            raise ValueError("minMeanWordLength must not exceed maxMeanWordLength")
        return self


class ToxicityFilter(ApiModel):
    """Word-list toxicity scoring; pluggable for a classifier."""

    enabled: bool = True
    """Apply the toxicity filter."""
    threshold: float = Field(default=0.05, ge=0, le=1)
    """Drop a document when the fraction of its words on the list exceeds this."""
    word_list: str | None = None
    """A word list (one per line) replacing the built-in one; local path or S3 URI."""
    classifier: str | None = Field(default=None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    """`module:function` returning a toxicity score in [0, 1] for a text, used instead of the list."""


class LanguageFilter(ApiModel):
    """Offline language identification by stop-word profiles."""

    enabled: bool = False
    """Apply the language filter."""
    languages: list[str] = Field(default_factory=lambda: ["en"], min_length=1)
    """ISO 639-1 codes to keep."""
    min_score: float = Field(default=0.5, ge=0, le=1)
    """Smallest confidence for a kept document."""


class PiiType(StrEnum):
    EMAIL = "email"
    PHONE = "phone"
    IP = "ip"
    CREDIT_CARD = "creditCard"
    SECRET = "secret"


class PiiRedaction(ApiModel):
    """Replace personal data with typed placeholders (`<EMAIL>`, `<PHONE>`, `<IP>`, `<CREDIT_CARD>`,
    `<SECRET>`)."""

    enabled: bool = True
    """Apply PII redaction."""
    types: list[PiiType] = Field(default_factory=lambda: list(PiiType))
    """Which kinds of PII to redact."""


class NearDedup(ApiModel):
    """MinHash + LSH near-duplicate removal, global across workers."""

    rules = (
        Rule("has(self.bands) == has(self.rows)", "set both `bands` and `rows`, or neither", "bands"),
        Rule(
            "!has(self.bands) || !has(self.rows) || self.bands * self.rows == self.numPerm",
            "bands × rows must equal numPerm",
            "bands",
        ),
    )

    enabled: bool = True
    """Remove near-duplicates."""
    shingle_size: int = Field(default=5, ge=1, le=32)
    """Word n-gram size of the shingles."""
    num_perm: int = Field(default=112, ge=16, le=1024)
    """MinHash permutations."""
    bands: int | None = Field(default=None, ge=1)
    """LSH bands; with `rows`, overrides `threshold` (bands × rows must equal numPerm)."""
    rows: int | None = Field(default=None, ge=1)
    """LSH rows per band."""
    threshold: float = Field(default=0.7, gt=0, lt=1)
    """Jaccard similarity above which documents count as near-duplicates."""

    @model_validator(mode="after")
    def _banding(self) -> NearDedup:
        if (self.bands is None) != (self.rows is None):
            raise ValueError("set both `bands` and `rows`, or neither")
        if self.bands is not None and self.rows is not None and self.bands * self.rows != self.num_perm:
            raise ValueError(f"bands × rows ({self.bands}×{self.rows}) must equal numPerm ({self.num_perm})")
        return self


class Decontamination(ApiModel):
    """Drop training documents sharing long n-grams with evaluation data."""

    eval_suite_refs: list[LocalRef] = Field(default_factory=list, max_length=64)
    """EvalSuites whose task data is protected."""
    uris: list[str] = Field(default_factory=list, max_length=1024)
    """Extra evaluation files (JSONL/text) to protect."""
    ngram: int = Field(default=13, ge=4, le=64)
    """Word n-gram length that counts as overlap."""


class Dedup(ApiModel):
    """Exact and near-duplicate removal, plus decontamination."""

    exact: bool = True
    """Remove exact duplicates (hash of the normalised text)."""
    near: NearDedup = Field(default_factory=NearDedup)
    """Near-duplicate removal."""
    decontaminate: Decontamination | None = None
    """Evaluation-set decontamination."""


DEFAULT_SPECIAL_TOKENS = ("<|bos|>", "<|eos|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
"""BOS, EOS, PAD, then the chat-role markers of alignment's chat template."""


class Tokenizer(ApiModel):
    """Byte-level BPE trained on the cleaned corpus, or an existing tokenizer."""

    vocab_size: int = Field(default=32000, ge=260, le=1_048_576)
    """Vocabulary size, including the 256 byte symbols and the special tokens."""
    min_frequency: int = Field(default=2, ge=1)
    """Fewest occurrences of a pair to merge."""
    special_tokens: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        default_factory=lambda: list(DEFAULT_SPECIAL_TOKENS), max_length=4096
    )
    """Special tokens: BOS, EOS, PAD, then chat-role markers used by alignment's chat template."""
    from_uri: str | None = None
    """Use this `tokenizer.json` (or Hugging Face tokenizer directory) instead of training one."""
    train_bytes: int = Field(default=200_000_000, ge=1_000)
    """Most bytes of the corpus sampled to train the tokenizer."""


class DatasetSpec(ApiModel):
    """What to read, how to curate it, and how to tokenize and pack it."""

    rules = (
        Rule(
            "self.sources.all(s, self.sources.exists_one(t, t.name == s.name))",
            "source names must be unique",
            "sources",
        ),
        Rule(
            "self.sources.all(s, s.license in self.allowedLicenses)",
            "every source's license must be in allowedLicenses",
            "sources",
        ),
        # specialTokens' default is not in the schema (a list default), so CEL counts it itself.
        Rule(
            "!has(self.tokenizer) || has(self.tokenizer.fromUri) || self.tokenizer.vocabSize >= "
            f"(has(self.tokenizer.specialTokens) ? size(self.tokenizer.specialTokens) : {len(DEFAULT_SPECIAL_TOKENS)}) + 257",
            "tokenizer.vocabSize must hold the byte alphabet plus the special tokens",
            "tokenizer.vocabSize",
        ),
    )

    sources: list[Source] = Field(min_length=1, max_length=256)
    """Inputs, each with its licence."""
    allowed_licenses: list[Annotated[str, Field(max_length=64)]] = Field(
        default=list(DEFAULT_ALLOWED_LICENSES), max_length=256
    )  # a plain default, so the CRD carries it too
    """Licences a source may carry; a source with another licence is rejected."""
    opt_out: OptOut = Field(default_factory=OptOut)
    """Opt-out lists, applied first."""
    cleaning: Cleaning = Field(default_factory=Cleaning)
    """Normalisation."""
    quality: QualityFilter = Field(default_factory=QualityFilter)
    """Quality heuristics."""
    toxicity: ToxicityFilter = Field(default_factory=ToxicityFilter)
    """Toxicity filter."""
    language: LanguageFilter = Field(default_factory=LanguageFilter)
    """Language filter."""
    pii: PiiRedaction = Field(default_factory=PiiRedaction)
    """PII redaction."""
    dedup: Dedup = Field(default_factory=Dedup)
    """Deduplication."""
    tokenizer: Tokenizer = Field(default_factory=Tokenizer)
    """Tokenizer."""
    seq_length: int = Field(default=2048, ge=8, le=1_048_576)
    """Tokens per packed training sequence."""
    validation_fraction: float = Field(default=0.01, ge=0, lt=1)
    """Fraction of sequences held out for validation."""
    seed: int = Field(default=1234, ge=0)
    """Seed of the shuffle and split."""
    shard_sequences: int = Field(default=8192, ge=1)
    """Sequences per shard file."""
    workers: int = Field(default=1, ge=1, le=1024)
    """Parallel workers: an Indexed Job's pods in the cluster, processes locally."""
    compute: Compute = Field(default_factory=Compute)
    """Pod resources and placement."""
    tracking: Tracking = Field(default_factory=Tracking)
    """Experiment tracking (MLflow experiment, tags, off)."""

    @model_validator(mode="after")
    def _checks(self) -> DatasetSpec:
        names = [s.name for s in self.sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"source names must be unique; repeated: {', '.join(dupes)}")
        allowed = set(self.allowed_licenses)
        for i, source in enumerate(self.sources):
            if source.license not in allowed:
                raise ValueError(
                    f"sources[{i}] ({source.name}): license {source.license!r} is not in allowedLicenses "
                    f"({', '.join(sorted(allowed))})"
                )
        need = len(self.tokenizer.special_tokens) + 256 + 1
        if self.tokenizer.from_uri is None and self.tokenizer.vocab_size < need:
            raise ValueError(
                f"tokenizer.vocabSize {self.tokenizer.vocab_size} is smaller than the byte alphabet plus "
                f"special tokens ({need})"
            )
        return self


class Dataset(ApiModel):
    """Curated, tokenized, packed training data with its dataset card."""

    api_version: Literal["lmforge.io/v1alpha1"] = "lmforge.io/v1alpha1"
    """`lmforge.io/v1alpha1`."""
    kind: Literal["Dataset"] = "Dataset"
    """`Dataset`."""
    metadata: ObjectMeta
    """Standard object metadata."""
    spec: DatasetSpec
    """Desired dataset."""
    status: Status | None = None
    """Observed state, written by LMForge."""
