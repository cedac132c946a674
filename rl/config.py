"""Config of the trainer: FSDP2 workers, SFT and GRPO hyperparameters, checkpoints."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from core.errors import ConfigError
from core.fields import at_least, greater_than, in_range, one_of, positive


@dataclass
class OptimConfig:
    lr: float = positive(default=1e-5)
    weight_decay: float = at_least(0.0, default=0.0)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = at_least(0, default=0)
    schedule: str = one_of("constant", "cosine", default="cosine")
    min_lr_ratio: float = in_range(0.0, 1.0, default=0.1)
    max_grad_norm: float = positive(default=1.0)


@dataclass
class TeacherConfig:
    """Who demonstrates for SFT in `terminus train` (when trainer.sft.data is not given)."""
    kind: str = one_of("scripted", "openai", default="scripted",
                       help="scripted: replay each task's reference solution; openai: a model behind an "
                            "OpenAI-compatible endpoint (a frontier API or `vllm serve`) plays the train split")
    base_url: str = field(default="", metadata={"help": "openai: the endpoint, e.g. https://api.example.com/v1"})
    model: str = field(default="", metadata={"help": "openai: the model name the endpoint serves"})
    api: str = one_of("chat", "completions", default="chat",
                      help="chat: messages in, text out (any endpoint; the text is tokenized with the "
                           "student's tokenizer); completions: token ids (a vLLM server of the student's vocabulary)")
    api_key_env: str = field(default="OPENAI_API_KEY", metadata={"help": "the variable holding the endpoint's key"})
    max_concurrency: int = at_least(1, default=8, help="teacher episodes (and requests) at once")
    requests_per_minute: int = at_least(0, default=0, help="0 = unlimited")
    tokens_per_minute: int = at_least(0, default=0, help="0 = unlimited")
    request_timeout_s: float = positive(default=120.0)
    max_retries: int = at_least(0, default=4)
    temperature: float = in_range(0.0, 5.0, default=0.7, help="the teacher's sampling temperature")
    top_p: float = in_range(0.0, 1.0, default=1.0)
    constrain: str = one_of("none", "protocol", default="none",
                            help="'protocol': each teacher turn constrained to the protocol's grammar by the "
                                 "endpoint's structured outputs (vLLM servers; e.g. a weak teacher in tests)")
    samples: int = at_least(1, default=1, help="episodes per task; duplicates (same commands and report) are dropped")
    min_reward: float = field(default=0.7, metadata={
        "help": "keep a teacher trajectory for SFT only when the judge's reward is at least this"})
    terse_fraction: float = in_range(0.0, 1.0, default=0.0,
                                     help="scripted: share of the demonstrations (a seeded choice per task) whose "
                                          "report gives the outcome and the exit status only, no details: right "
                                          "but incomplete, as a hurried frontier teacher's reports often are: for "
                                          "studies of what RL adds to such a teacher (docs/experiments.md: on the "
                                          "embedded default GRPO learns the details only where it copies them well)")
    misstate_fraction: float = in_range(0.0, 1.0, default=0.0,
                                        help="scripted: share of the demonstrations (a seeded choice per task, "
                                             "independent of terse_fraction) whose report misreads one number of "
                                             "the output (a count, a value, a line: n -> n + 1), as a careless "
                                             "teacher does; tasks without such a number keep the right report")
    retry_fraction: float = in_range(0.0, 1.0, default=0.0,
                                     help="scripted: share of the demonstrations (a seeded choice per task, "
                                          "independent of the others) whose first report is malformed (its "
                                          "summary cut short and never closed, as a sampling slip leaves it), "
                                          "rejected by the protocol, and written again: SFT trains on the retry, "
                                          "not on the malformed report, so the student has seen a rejected report "
                                          "and a recovery (tasks whose commands leave no turn for a retry keep "
                                          "one report)")


@dataclass
class SFTConfig:
    epochs: int = at_least(1, default=1)
    micro_batch_tokens: int = at_least(64, default=4096, help="packed sequence length")
    grad_accum: int = at_least(1, default=1)
    max_steps: int = at_least(0, default=0, help="0 = run all epochs")
    checkpoint_every: int = at_least(0, default=0, help="optimizer steps between SFT checkpoints; 0 = none")
    demo_fraction: float = positive(default=1.0, hi=1.0,
                                    help="share of each train project's tasks the teacher demonstrates (a "
                                         "seeded choice); the others are met only in GRPO rollouts")
    data: str = field(default="", metadata={
        "help": "a trajectory file (`terminus distill` or `terminus rollout` output, .jsonl or .parquet) to "
                "SFT on instead of the teacher's (trainer.sft.teacher); episodes that ended without a "
                "report or with an error are kept out"})
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    train_on_observations: bool = field(default=False, metadata={
        "help": "SFT also predicts the tool outputs (every token after the initial prompt, not only the "
                "assistant's): a model trained from scratch learns to read and copy from outputs sooner; "
                "GRPO always trains the policy's own tokens only"})


@dataclass
class GRPOConfig:
    steps: int = at_least(0, default=10)
    tasks_per_step: int = at_least(1, default=8)
    rollouts_per_task: int = at_least(2, default=8, help="the group size n")
    tasks: str = one_of("all", "undemonstrated", default="all",
                        help="which train tasks GRPO samples: all, or only those SFT had no demonstration of")
    advantage: str = one_of("grpo", "dr_grpo", "rloo", default="grpo")
    lr: float = at_least(0.0, default=0.0, help="learning rate of the GRPO stage; 0 = trainer.optim.lr")
    reinforce_malformed_turns: bool = field(default=False, metadata={
        "help": "false: in a trajectory with a positive advantage, turns the protocol rejected (format "
                "errors) are left out of the loss, so a retry that succeeded does not reinforce the "
                "malformed attempt; they still count in a negative one"})
    clip_low: float = in_range(0.0, 1.0, default=0.2)
    clip_high: float = in_range(0.0, 10.0, default=0.28)
    clip_ratio_c: float = greater_than(1.0, default=3.0,
                                       help="dual clip: with a negative advantage a token's loss is capped at "
                                            "-A * clip_ratio_c, so a grown ratio cannot push it down without "
                                            "bound (Ye et al. 2020; verl's clip_ratio_c)")
    tis_cap: float = at_least(1.0, default=2.0, help="truncated importance-sampling cap")
    kl_coef: float = at_least(0.0, default=0.0, help="weight of the k3 KL to the reference; > 0 needs "
                                                     "trainer.use_reference_model=true")
    entropy_coef: float = at_least(0.0, default=0.0)
    loss_agg: str = one_of("token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "constant",
                           default="token_mean", help="constant = Dr. GRPO (sum / fixed token budget)")
    policy_loss: str = one_of("token", "gspo", default="token",
                              help="token: per-token ratio and clip (clip_low/clip_high, loss_agg); gspo: one "
                                   "ratio per sequence, the geometric mean of its tokens' (GSPO, Zheng et al. "
                                   "2025), clipped by gspo_clip_low/high, aggregated seq_mean_token_mean "
                                   "(loss_agg, clip_low/high and clip_ratio_c do not apply)")
    gspo_clip_low: float = in_range(0.0, 1.0, default=3e-4,
                                    help="GSPO's clip below 1: a sequence ratio is a mean over its tokens, so "
                                         "it moves far less than a token's and needs a far smaller range")
    gspo_clip_high: float = in_range(0.0, 1.0, default=4e-4, help="GSPO's clip above 1")
    dynamic_sampling_max_extra: int = at_least(0, default=0, help=(
        "dynamic sampling (DAPO): extra tasks a step may draw, beyond tasks_per_step, to replace groups "
        "that teach nothing (all rewards equal, or fewer than two judged) until tasks_per_step informative "
        "groups are found; only those train. 0 = off (every drawn group is passed on)"))
    dynamic_sampling_ahead: int = at_least(0, default=0, help=(
        "of dynamic_sampling_max_extra (and at most that many), how many extra tasks run with the step's "
        "own tasks, in its first round, rather than in a round after it: each round waits for its slowest "
        "episode, and when a quarter of the groups teach nothing almost every step needs a second round "
        "(docs/experiments.md). Nothing is drawn ahead with dynamic sampling off"))
    overlong_filter: bool = field(default=False, metadata={
        "help": "leave out of the loss the trajectories whose last turn was cut at its token budget "
                "(DAPO's overlong filtering): their reward judges an unfinished answer; they still count "
                "in their group's baseline"})
    top_entropy_frac: float = positive(default=1.0, hi=1.0, help=(
        "train the policy loss on only this share of each trajectory's tokens, those whose next-token "
        "entropy is highest (the 'forking' tokens; Wang et al. 2025); 1 = every generated token. The "
        "tokens the policy was sure of (the protocol's tags) are then not pushed down with a failed "
        "episode's advantage (docs/trainer.md)"))
    fork_score: str = one_of("entropy", "surprisal", default="entropy", help=(
        "how top_entropy_frac ranks a trajectory's tokens: entropy (of the next-token distribution) or "
        "surprisal (-log p of the token sampled): a slip, an unlikely token sampled where the policy was "
        "sure, has low entropy and the highest surprisal"))
    threads: int = at_least(0, default=0, help=(
        "torch threads of each trainer rank during GRPO; 0 = as in SFT (cluster.trainer.num_cpus). On a "
        "CPU machine whose rollout engine shares the trainer's cores, 1 leaves it the others: OpenMP's "
        "threads spin while they wait (fast alone, but they steal an engine's cores) or, told to sleep, "
        "are woken at every operation (slower than one thread: docs/cluster.md)"))
    fresh_optimizer: bool = field(default=True, metadata={
        "help": "start GRPO with a fresh optimizer (no Adam moments or step count): SFT's moments are "
                "of another loss and would scale GRPO's first updates by stale statistics; false keeps "
                "them"})
    micro_batch_size: int = at_least(1, default=8)
    mini_batches: int = at_least(1, default=1, help="optimizer steps per GRPO step")
    max_staleness: int = at_least(0, default=0, help="0 = synchronous; 1 = one-step off-policy")
    eval_every: int = at_least(0, default=0)


@dataclass
class CheckpointConfig:
    every: int = at_least(0, default=1, help="steps between checkpoints; 0 = only at the end")
    keep_last: int = at_least(1, default=2)
    resume: str = one_of("auto", "never", default="auto")
    export_hf: bool = True


@dataclass
class EvalConfig:
    """Held-out evaluation during `terminus train`: mean judged reward on tasks.eval_split."""
    enabled: bool = True
    samples_per_task: int = at_least(1, default=2)
    repeats: int = at_least(1, default=3, help="independent passes (seeds): their spread is the noise")
    untrained_repeats: int = at_least(0, default=0, help="passes for the untrained model; 0 = `repeats`")
    max_tasks: int = at_least(0, default=0, help="0 = the whole split")
    transfer_split: Optional[str] = field(default=None, metadata={
        "help": "also evaluate each stage on this split, reported apart (tasks.corpus=generated: 'test' holds "
                "the held-out family, never trained on); null = off"})
    transfer_repeats: int = at_least(1, default=1, help="passes on transfer_split")


@dataclass
class TrainerConfig:
    stage: str = one_of("sft", "grpo", "sft+grpo", default="sft+grpo")
    num_workers: int = at_least(1, default=1, help="FSDP ranks, one per device")
    backend: str = one_of("auto", "gloo", "nccl", default="auto")
    param_dtype: str = one_of("float32", "bfloat16", default="float32")
    activation_checkpointing: bool = False
    cpu_offload: bool = False
    attn_implementation: str = one_of("sdpa", "flash_attention_2", "eager", default="sdpa")
    pad_free: bool = field(default=False, metadata={
        "help": "one sequence per forward pass, so no padding and no attention mask: on CPU a mask "
                "forces sdpa's slow math kernel (benchmarks/trainer.py); "
                "the optimizer steps and the loss are the same"})
    shared_prefix: bool = field(default=False, metadata={
        "help": "run the tokens every sample of a step begins with (the system prompt) once per step, and "
                "each sample's forward on their keys and values: the same loss and gradient for fewer "
                "FLOPs (the embedded default: ~40% of SFT's tokens are the system prompt). Not with "
                "activation_checkpointing (a recomputed forward would append to the cache again)"})
    use_reference_model: bool = False
    frozen: list[str] = field(default_factory=list, metadata={
        "help": "regexes of parameter names the trainer leaves as they are (no gradient, no optimizer "
                "state), e.g. a circuit set in the weights: tiny-copy-obs's copy heads (docs/experiments.md)"})
    optim: OptimConfig = field(default_factory=OptimConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def check_grpo_sampling(cfg) -> None:
    """Before a GRPO stage starts: the rollouts' sampling must be something the trainer can train.

    The trainer trains the distribution the rollouts are sampled from, logits / temperature (see
    docs/trainer.md), so the temperature must be > 0 and vLLM must report that distribution's
    logprobs. Checked only for training: evaluating greedily is fine.
    """

    r = cfg.rollout
    if r.sampling.temperature == 0:
        raise ConfigError("rollout.sampling.temperature=0 (greedy) with a GRPO stage: every rollout of a "
                          "group would be the same and the trainer divides the logits by the temperature; "
                          "sample with a temperature > 0 (tiny_cpu: 0.8), or set trainer.stage=sft")
    if r.engine.kind == "vllm" and r.engine.logprobs_mode == "raw_logprobs" and r.sampling.temperature != 1.0:
        raise ConfigError(f"rollout.engine.logprobs_mode=raw_logprobs with rollout.sampling.temperature="
                          f"{r.sampling.temperature}: the GRPO trainer trains the distribution the rollouts are "
                          f"sampled from (logits / temperature), so vLLM must report the same logprobs; set "
                          f"rollout.engine.logprobs_mode=processed_logprobs (or temperature=1.0)")
    # Truncating or constraining the distribution changes it in ways the trainer's softmax does not
    # reproduce: the importance weights and the ratio would compare two different policies.
    s = r.sampling
    unsupported = [(s.constrain != "none", f"rollout.sampling.constrain={s.constrain}", "rollout.sampling.constrain=none",
                    "each turn is masked to the protocol's grammar (forced tokens get logprob 0)"),
                   (s.top_p < 1.0, f"rollout.sampling.top_p={s.top_p}", "rollout.sampling.top_p=1.0",
                    "the nucleus is renormalized"),
                   (s.top_k > 0, f"rollout.sampling.top_k={s.top_k}", "rollout.sampling.top_k=-1",
                    "the top k are renormalized")]
    for bad, setting, fix, why in unsupported:
        if bad:
            raise ConfigError(f"{setting} with a GRPO stage: {why}, which the trainer cannot reproduce (it "
                              f"trains softmax(logits / temperature) over the whole vocabulary); set {fix}, "
                              f"or trainer.stage=sft")


def check_trainer(cfg) -> None:
    """Trainer settings that are valid one by one but not together (load_config checks them)."""

    t = cfg.trainer
    if t.grpo.kl_coef > 0 and not t.use_reference_model:
        raise ConfigError(f"trainer.grpo.kl_coef={t.grpo.kl_coef} with trainer.use_reference_model=false: the KL "
                          f"term needs a reference policy and would silently do nothing; set "
                          f"trainer.use_reference_model=true, or trainer.grpo.kl_coef=0")
    if t.shared_prefix and t.activation_checkpointing:
        raise ConfigError("trainer.shared_prefix=true with trainer.activation_checkpointing=true: a checkpointed "
                          "layer recomputes its forward in the backward and would append the shared prefix's keys "
                          "and values to the cache again; set one of them to false")
