"""The plan of a run before anything starts (`terminus train --dry-run`): where each actor goes on a
cluster of N nodes x G GPUs, what each GPU holds, and whether an episode fits the context.

Pure: no Ray, no GPU, no weights (the model's shape comes from core.model.model_shape). The
placement is cluster.resources' (`bundles_for`, `placement`), packed onto the nodes here the way
Ray's placement groups would. The memory figures are estimates, each term a formula written out
below (docs/cluster.md has them with the 4B numbers); an estimate over a GPU's memory, or a worst
episode longer than the context, is a ConfigError naming the keys to change.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from cluster.resources import POOLS, PlacementError, bundles_for, placement
from core.errors import ConfigError
from core.model import ModelShape
from core.protocol import system_prompt

GiB = 2**30
# Bytes of terminal output per token, for a worst case: code, paths, numbers and stack traces
# tokenize denser than prose (~4 bytes/token); Qwen's tokenizer splits digits one per token.
BYTES_PER_TOKEN = 3.0
REQUEST_BYTES = 2048           # allowance for a task's request in the first user message
TURN_FRAMING_TOKENS = 32       # chat-template markers and the observation's exit-code line, per turn
USABLE_FRACTION = 0.9          # of a GPU's memory: the rest is CUDA context, NCCL buffers, fragmentation
ENGINE_OVERHEAD_GIB = 2.0      # vLLM's activation peak and CUDA graphs, inside gpu_memory_utilization
LOGIT_BYTES = 16               # per logit row element: bf16 logits, fp32 tempered copy, log-softmax,
                               # the entropy's, and the fp32/bf16 gradients (rl/algos.py) at the peak


def dtype_bytes(dtype: str) -> int:
    return 4 if dtype == "float32" else 2


@dataclass(frozen=True)
class ClusterSpec:
    """The cluster to plan for (`--nodes`, `--gpus`, `--gpu-memory-gib`)."""
    nodes: int = 1
    gpus: int = 8                  # in all, split evenly over the nodes
    gpu_memory_gib: float = 80.0

    @property
    def gpus_per_node(self) -> int:
        return self.gpus // self.nodes


# ---- context --------------------------------------------------------------------------------------


def context_budget(cfg) -> dict[str, int]:
    """The longest episode the config allows, in tokens, against the context it gets.

    prompt (system prompt + a request allowance) + max_turns replies of max_tokens_per_turn + an
    observation (the cap in tokens, with framing) after every turn but the last, against
    min(rollout.episode.max_context_tokens, model.max_model_len), the limit the episode loop
    applies (rollout/episode.py)."""
    r = cfg.rollout
    prompt = math.ceil((len(system_prompt(r.episode.max_turns).encode()) + REQUEST_BYTES) / BYTES_PER_TOKEN)
    observation = math.ceil(r.sandbox.output_limit_bytes / BYTES_PER_TOKEN) + TURN_FRAMING_TOKENS
    turns = r.episode.max_turns
    need = prompt + turns * r.sampling.max_tokens_per_turn + (turns - 1) * observation
    return {"prompt": prompt, "observation": observation, "turn": r.sampling.max_tokens_per_turn,
            "turns": r.episode.max_turns, "need": need,
            "context": min(r.episode.max_context_tokens, cfg.model.max_model_len)}


def check_context(cfg) -> dict[str, int]:
    b = context_budget(cfg)
    if b["need"] > b["context"]:
        limit = ("model.max_model_len" if cfg.model.max_model_len <= cfg.rollout.episode.max_context_tokens
                 else "rollout.episode.max_context_tokens")
        raise ConfigError(
            f"an episode can need {b['need']} tokens (prompt {b['prompt']} + rollout.episode.max_turns="
            f"{b['turns']} x rollout.sampling.max_tokens_per_turn={b['turn']} + {b['turns'] - 1} observations of "
            f"rollout.sandbox.output_limit_bytes={cfg.rollout.sandbox.output_limit_bytes}, {b['observation']} "
            f"tokens each at {BYTES_PER_TOKEN:g} bytes/token with framing) but {limit} allows {b['context']}; "
            f"raise model.max_model_len and rollout.episode.max_context_tokens, or lower one of the three "
            f"per-turn keys")
    return b


# ---- memory ---------------------------------------------------------------------------------------


@dataclass
class TrainerMemory:
    """Bytes on one trainer rank's device at a stage's largest micro-batch (rl/worker.py's FSDP2)."""
    stage: str
    tokens: int             # tokens of the micro-batch's forward (padded)
    logit_rows: int         # positions whose vocabulary-sized logits are kept (logits_to_keep)
    sharded_state: float    # fp32 params + fp32 grads + AdamW's two moments, / world size
    gathered_params: float  # one layer all-gathered, the next prefetched, and the root (embeddings)
    reference: float        # the KL term's unsharded fp32 reference model
    activations: float
    logits: float
    load_peak: float        # setup: the whole fp32 model is loaded on each device before sharding

    @property
    def total(self) -> float:
        return (self.sharded_state + self.gathered_params + self.reference + self.activations
                + self.logits)


def trainer_memory(shape: ModelShape, tc, stage: str, tokens: int, logit_rows: int) -> TrainerMemory:
    """One rank of trainer.num_workers, a micro-batch of `tokens` tokens with `logit_rows` kept rows.

    Activations per token and layer (bf16, or fp32 with param_dtype=float32), as saved for backward:
    4 hidden-sized tensors (two norms' in/out), q (with its norm's input) and the attention output
    3 x heads x head_dim, k and v likewise 3 x kv_heads x head_dim, and 4 MLP-sized (gate, up, act,
    product). With activation checkpointing only each layer's input is kept, plus one layer's full
    set while it is recomputed."""
    p = shape.num_params
    act = dtype_bytes(tc.param_dtype)
    state = 0.0 if tc.cpu_offload else 16.0 * p / tc.num_workers
    root = shape.embedding_params * (1 if shape.tie_word_embeddings else 2)
    gathered = act * (2 * shape.layer_params + root)
    h, q, kv = shape.hidden_size, shape.num_attention_heads * shape.head_dim, shape.num_key_value_heads * shape.head_dim
    per_layer = act * (4 * h + 3 * q + 3 * kv + 4 * shape.intermediate_size)   # bytes per token
    if tc.activation_checkpointing:
        activations = tokens * (shape.num_hidden_layers * h * act + per_layer)
    else:
        activations = tokens * shape.num_hidden_layers * per_layer
    return TrainerMemory(stage=stage, tokens=tokens, logit_rows=logit_rows, sharded_state=state,
                         gathered_params=gathered, reference=4.0 * p if tc.use_reference_model else 0.0,
                         activations=float(activations), logits=float(logit_rows) * shape.vocab_size * LOGIT_BYTES,
                         load_peak=4.0 * p)


def trainer_cases(cfg, shape: ModelShape) -> list[TrainerMemory]:
    """The largest micro-batches of the configured stages (rl/group.py batches them):

    - SFT, one full-length demonstration (a micro-batch of its own): context tokens, and logits at
      its assistant tokens, at most max_turns x max_tokens_per_turn (every position with
      train_on_observations);
    - SFT, packed short demonstrations: sft.micro_batch_tokens padded tokens, every one possibly trained;
    - GRPO: grpo.micro_batch_size (1 with pad_free) full-length rollouts, logits at the union of
      their policy tokens."""
    t, context = cfg.trainer, min(cfg.rollout.episode.max_context_tokens, cfg.model.max_model_len)
    policy = min(context, cfg.rollout.episode.max_turns * cfg.rollout.sampling.max_tokens_per_turn)
    cases = []
    if "sft" in t.stage:
        trained = context if t.sft.train_on_observations else policy
        cases.append(trainer_memory(shape, t, "sft (one full-length demonstration)", context, trained))
        mbt = t.sft.micro_batch_tokens
        cases.append(trainer_memory(shape, t, "sft (packed micro-batch)", mbt, mbt))
    if "grpo" in t.stage:
        b = 1 if t.pad_free else t.grpo.micro_batch_size
        cases.append(trainer_memory(shape, t, f"grpo ({b} full-length rollout{'s' if b > 1 else ''})",
                                    b * context, b * min(context, b * policy)))
    return cases


@dataclass
class EngineMemory:
    """One vLLM engine's memory on each of its tensor-parallel GPUs."""
    reserved: float         # gpu_memory_utilization x the GPU: what vLLM takes
    weights: float
    overhead: float
    kv_cache: float
    kv_tokens: int          # tokens the KV cache holds (all its GPUs together)
    full_sequences: float   # of max_model_len


def engine_memory(cfg, shape: ModelShape, gpu_bytes: float) -> EngineMemory:
    e = cfg.rollout.engine
    tp = e.tensor_parallel_size
    reserved = e.gpu_memory_utilization * gpu_bytes
    weights = shape.num_params * dtype_bytes(cfg.model.dtype) / tp
    overhead = ENGINE_OVERHEAD_GIB * GiB
    kv = max(0.0, reserved - weights - overhead)
    tokens = int(kv * tp // shape.kv_bytes_per_token(dtype_bytes(cfg.model.dtype)))
    return EngineMemory(reserved=reserved, weights=weights, overhead=overhead, kv_cache=kv, kv_tokens=tokens,
                        full_sequences=tokens / cfg.model.max_model_len)


# ---- placement ------------------------------------------------------------------------------------


def pack(cfg, counts: dict[str, int], spec: ClusterSpec) -> dict[str, list[int]]:
    """Node of each placement-group bundle: {group: [node index per bundle]}, as Ray would place
    them (colocated: PACK, fill a node first; disaggregated: SPREAD, the least-used node that fits).
    Checks GPUs only (custom resources are assumed present); raises PlacementError."""
    free = [float(spec.gpus_per_node)] * spec.nodes
    nodes: dict[str, list[int]] = {}
    for group, bundles in bundles_for(cfg.cluster, counts).items():
        nodes[group] = []
        for i, b in enumerate(bundles):
            need = b.get("GPU", 0.0)
            fits = [n for n in range(spec.nodes) if free[n] >= need - 1e-9]
            if not fits:
                asked = sum(x.get("GPU", 0.0) for bs in bundles_for(cfg.cluster, counts).values() for x in bs)
                raise PlacementError(
                    f"bundle {i} of placement group '{group}' ({cfg.cluster.layout} layout) needs {need:g} GPU "
                    f"and no node has it left: the layout asks for {asked:g} GPUs in all ({_asks(cfg, counts)}), "
                    f"the cluster has {spec.nodes} node(s) x {spec.gpus_per_node} GPUs; lower those counts or "
                    f"cluster.<pool>.num_gpus, or plan for more --gpus / --nodes")
            n = fits[0] if cfg.cluster.layout == "colocated" else max(fits, key=lambda k: free[k])
            free[n] -= need
            nodes[group].append(n)
    return nodes


def _asks(cfg, counts: dict[str, int]) -> str:
    keys = {"rollout": "rollout.num_workers", "judge": "judge.num_workers", "trainer": "trainer.num_workers"}
    return ", ".join(f"{keys[p]}={counts[p]} x cluster.{p}.num_gpus={getattr(cfg.cluster, p).num_gpus:g}"
                     for p in POOLS if counts.get(p) and getattr(cfg.cluster, p).num_gpus)


# ---- the plan -------------------------------------------------------------------------------------


@dataclass
class Plan:
    spec: ClusterSpec
    counts: dict[str, int]
    nodes: dict[str, list[int]]                  # group -> node per bundle
    actors: list[tuple[str, int, int, float]]    # (actor, index, node, GPUs)
    context: dict[str, int]
    trainer: list[TrainerMemory]
    engine: EngineMemory | None
    gpu_peaks: dict[str, float]                  # what a GPU holds at its worst, by role
    notes: list[str] = field(default_factory=list)


def make_plan(cfg, shape: ModelShape, spec: ClusterSpec) -> Plan:
    """Place, estimate and check; raises ConfigError (PlacementError) on a config that cannot run there."""
    if spec.nodes < 1 or spec.gpus < 0 or spec.gpus % spec.nodes:
        raise ConfigError(f"--gpus {spec.gpus} over --nodes {spec.nodes}: give a GPU count the nodes split evenly")
    context = check_context(cfg)
    if cfg.model.max_model_len > shape.max_position_embeddings > 0:
        raise ConfigError(f"model.max_model_len={cfg.model.max_model_len} is beyond the model's "
                          f"max_position_embeddings ({shape.max_position_embeddings}); lower model.max_model_len")
    counts = {"rollout": cfg.rollout.num_workers, "trainer": cfg.trainer.num_workers,
              "judge": cfg.judge.num_workers}
    nodes = pack(cfg, counts, spec)
    actors = []
    for actor, n in (("engine", cfg.rollout.engine.num_engines), ("rollout", counts["rollout"]), ("judge", counts["judge"]),
                     ("trainer", counts["trainer"])):
        for i in range(n):
            p = placement(cfg.cluster, counts, actor, i)
            actors.append((actor, i, nodes[p["group"]][p["bundle"]], p["num_gpus"]))
    gpus = spec.gpus > 0 and any(a[3] for a in actors)
    notes: list[str] = []
    engines = cfg.rollout.engine.num_engines
    idle = cfg.cluster.rollout.num_gpus * (counts["rollout"] - engines)
    if idle > 0 and cfg.cluster.layout == "disaggregated":
        notes.append(f"{idle:g} GPUs of rollout bundles {engines}..{counts['rollout'] - 1} hold no engine and stay idle "
                     f"(rollout workers run sandboxes on CPUs); set cluster.rollout.num_gpus per engine only")
    e = cfg.rollout.engine
    if gpus and e.tensor_parallel_size > cfg.cluster.rollout.num_gpus:
        raise ConfigError(f"rollout.engine.tensor_parallel_size={e.tensor_parallel_size} needs that many GPUs in the "
                          f"engine's bundle, and cluster.rollout.num_gpus={cfg.cluster.rollout.num_gpus:g}; set "
                          f"cluster.rollout.num_gpus={e.tensor_parallel_size}")
    if cfg.judge.backend == "vllm" and cfg.cluster.judge.num_gpus:
        notes.append("the judge's vLLM engines (judge.backend=vllm) are placed but their memory is not estimated")
    cases = trainer_cases(cfg, shape)
    gpu_bytes = spec.gpu_memory_gib * GiB
    engine = engine_memory(cfg, shape, gpu_bytes) if gpus else None
    peaks: dict[str, float] = {}
    if gpus:
        peaks = _check_gpus(cfg, spec, shape, cases, engine, notes)
    return Plan(spec=spec, counts=counts, nodes=nodes, actors=actors, context=context, trainer=cases,
                engine=engine, gpu_peaks=peaks, notes=notes)


def _check_gpus(cfg, spec: ClusterSpec, shape: ModelShape, cases: list[TrainerMemory], engine: EngineMemory,
                notes: list[str]) -> dict[str, float]:
    usable = USABLE_FRACTION * spec.gpu_memory_gib * GiB
    e = cfg.rollout.engine
    need_kv = cfg.model.max_model_len
    if engine.kv_tokens < need_kv:
        raise ConfigError(
            f"the vLLM engine's KV cache holds {engine.kv_tokens} tokens ({_g(engine.kv_cache)} GiB of "
            f"rollout.engine.gpu_memory_utilization={e.gpu_memory_utilization} x {spec.gpu_memory_gib:g} GiB after "
            f"{_g(engine.weights)} GiB of weights), less than one sequence of model.max_model_len={need_kv}; raise "
            f"rollout.engine.gpu_memory_utilization or rollout.engine.tensor_parallel_size, or lower model.max_model_len")
    worst = max(cases, key=lambda c: c.total)
    shared = cfg.cluster.layout == "colocated" and cfg.cluster.trainer.num_gpus and cfg.cluster.rollout.num_gpus
    peaks = {"trainer": worst.total}
    fixes = ("trainer.num_workers (more ranks shard the state), trainer.activation_checkpointing=true, "
             "trainer.sft.micro_batch_tokens, trainer.pad_free=true (GRPO: one rollout per micro-batch), "
             "trainer.cpu_offload=true")
    if worst.load_peak > usable:
        raise ConfigError(f"each trainer rank loads the whole fp32 model before sharding it ({_g(worst.load_peak)} "
                          f"GiB) and a GPU has {_g(usable)} GiB usable: plan for larger GPUs (--gpu-memory-gib)")
    if shared:
        # The engine wakes with the trainer's resident state (params, grads, moments) still on the GPU;
        # while the trainer runs, a sleeping engine has freed its memory (cluster.sleep_engines).
        awake = engine.reserved + worst.sharded_state
        peaks["engine + trainer state (rollouts)"] = awake
        training = worst.total + (0.0 if cfg.cluster.sleep_engines else engine.reserved)
        peaks["trainer (engine asleep)" if cfg.cluster.sleep_engines else "trainer + engine"] = training
        if awake > usable:
            raise ConfigError(
                f"colocated GPU 0: the engine's rollout.engine.gpu_memory_utilization={e.gpu_memory_utilization} "
                f"({_g(engine.reserved)} GiB) + the trainer's resident state ({_g(worst.sharded_state)} GiB) = "
                f"{_g(awake)} GiB > {_g(usable)} GiB usable of {spec.gpu_memory_gib:g}; lower "
                f"rollout.engine.gpu_memory_utilization, or raise trainer.num_workers")
        if training > usable:
            raise ConfigError(f"colocated GPU 0 at the {worst.stage} peak: {_g(training)} GiB > {_g(usable)} GiB "
                              f"usable (set cluster.sleep_engines=true, or lower {fixes})")
    else:
        peaks["engine"] = engine.reserved
    if worst.total > usable:
        raise ConfigError(f"a trainer rank at the {worst.stage} peak needs about {_g(worst.total)} GiB "
                          f"(state {_g(worst.sharded_state)}, activations {_g(worst.activations)}, logits "
                          f"{_g(worst.logits)}) > {_g(usable)} GiB usable of {spec.gpu_memory_gib:g}; change {fixes}")
    if engine.full_sequences < e.max_num_seqs:
        notes.append(f"the KV cache holds {engine.full_sequences:.1f} full-length sequences; vLLM runs up to "
                     f"rollout.engine.max_num_seqs={e.max_num_seqs} at once only while they are shorter")
    return peaks


def _g(x: float) -> str:
    return f"{x / GiB:.1f}"


def render(plan: Plan, cfg, shape: ModelShape) -> str:
    """The plan as `terminus train --dry-run` prints it."""
    s = plan.spec
    out = [f"plan: {cfg.name} on {s.nodes} node(s) x {s.gpus_per_node} GPUs of {s.gpu_memory_gib:g} GiB, "
           f"{cfg.cluster.layout} layout",
           f"model: {cfg.model.path}: {shape.num_params / 1e9:.2f} B parameters, {shape.num_hidden_layers} layers, "
           f"hidden {shape.hidden_size}, {shape.num_attention_heads} heads / {shape.num_key_value_heads} KV heads, "
           f"vocab {shape.vocab_size}"]
    c = plan.context
    out.append(f"context: prompt {c['prompt']} + {c['turns']} replies x {c['turn']} + {c['turns'] - 1} observations "
               f"x {c['observation']} = {c['need']} tokens <= {c['context']}")
    out.append("placement (actor: node, GPUs):")
    by_kind: dict[str, list[str]] = {}
    for actor, i, node, g in plan.actors:
        by_kind.setdefault(actor, []).append(f"{i}@node{node}" + (f"/{g:g}gpu" if g else ""))
    for actor, where in by_kind.items():
        out.append(f"  {actor:8s} {' '.join(where)}")
    out.append("trainer memory per rank (GiB):")
    for m in plan.trainer:
        out.append(f"  {m.stage}: {m.tokens} tokens, {m.logit_rows} logit rows -> state {_g(m.sharded_state)} "
                   f"+ gathered params {_g(m.gathered_params)} + reference {_g(m.reference)} + activations "
                   f"{_g(m.activations)} + logits {_g(m.logits)} = {_g(m.total)} (load peak {_g(m.load_peak)})")
    if plan.engine:
        e = plan.engine
        out.append(f"engine memory per GPU (GiB): reserved {_g(e.reserved)} = weights {_g(e.weights)} + overhead "
                   f"{_g(e.overhead)} + KV cache {_g(e.kv_cache)} ({e.kv_tokens} tokens, {e.full_sequences:.1f} "
                   f"sequences of {cfg.model.max_model_len})")
        usable = USABLE_FRACTION * s.gpu_memory_gib
        out.append("GPU peaks (GiB): " + ", ".join(f"{k} {_g(v)}" for k, v in plan.gpu_peaks.items())
                   + f" <= {usable:.1f} usable")
    else:
        out.append("no GPUs in this plan: memory is host memory, not checked")
    out += [f"note: {n}" for n in plan.notes]
    out.append("ok: the config fits this cluster")
    return "\n".join(out)
