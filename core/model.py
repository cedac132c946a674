"""Model paths and the embedded tiny model.

No model hub is reachable on the project's machines, so the embedded default is built locally:
a small random Qwen3-architecture causal LM plus a byte-level BPE tokenizer trained on Python's
own sources, with Qwen3's special tokens and a chat template that renders exactly like
Qwen3-4B-Instruct-2507's (non-thinking). Code written against it works unchanged on the real model.

`resolve_model_path("tiny")` builds it once into the cache and returns the directory; any other
value must be a local HF-format directory. Nothing here ever contacts a hub.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator, TypeVar

from core.errors import UserError

TINY = "tiny"
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>",
    "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>",
]

# Renders like Qwen3-Instruct-2507 for system/user/assistant/tool messages (no tool schemas).
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message.role == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- else %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# The pre-tokenizer regex of the Qwen2/Qwen3 tokenizers.
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")


class ModelPathError(UserError, FileNotFoundError):
    """A configured model path that is missing or not an HF model directory."""


@dataclass(frozen=True)
class TinySpec:
    """The embedded default's shape: about 4 M parameters, Qwen3 architecture, tied embeddings like Qwen3-4B."""
    vocab_size: int = 4096
    hidden_size: int = 256
    intermediate_size: int = 768
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 64
    max_position_embeddings: int = 8192
    rope_theta: float = 1_000_000.0
    seed: int = 0
    corpus_bytes: int = 6_000_000
    copy_circuit: bool = False  # layers 0-1 start as an induction (copy) circuit: `install_copy_circuit`
    copy_from_user_turns: bool = False  # ... that copies only from user turns (request, observations)


# The embedded models by name (docs/experiments.md): `tiny` is random; `tiny-copy` starts with the copy
# circuit; `tiny-copy-obs` (the tiny config's) with the circuit that copies only from user turns (the
# request and the command outputs), never its own text, matching two tokens.
TINY_SPECS = {TINY: TinySpec(), "tiny-copy": TinySpec(copy_circuit=True),
              "tiny-copy-obs": TinySpec(copy_circuit=True, copy_from_user_turns=True)}


@dataclass(frozen=True)
class ModelShape:
    """What memory and FLOP estimates need of a decoder-only Qwen3-style model (config.json's keys)."""
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    tie_word_embeddings: bool
    max_position_embeddings: int

    @classmethod
    def from_config(cls, c: dict) -> "ModelShape":
        """From an HF config.json's dict (head_dim defaults to hidden / heads, as in transformers)."""
        return cls(vocab_size=c["vocab_size"], hidden_size=c["hidden_size"],
                   intermediate_size=c["intermediate_size"], num_hidden_layers=c["num_hidden_layers"],
                   num_attention_heads=c["num_attention_heads"],
                   num_key_value_heads=c.get("num_key_value_heads", c["num_attention_heads"]),
                   head_dim=c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"],
                   tie_word_embeddings=bool(c.get("tie_word_embeddings", False)),
                   max_position_embeddings=c.get("max_position_embeddings", 0))

    @property
    def layer_params(self) -> int:
        """One decoder layer: q/k/v/o projections (no bias), q/k RMSNorms, two RMSNorms, the SwiGLU MLP."""
        h, q, kv = self.hidden_size, self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        return h * q + 2 * h * kv + q * h + 2 * self.head_dim + 2 * h + 3 * h * self.intermediate_size

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def num_params(self) -> int:
        """Parameters as `sum(p.numel() for p in model.parameters())` counts them (a tied head once)."""
        head = 0 if self.tie_word_embeddings else self.embedding_params
        return self.embedding_params + self.num_hidden_layers * self.layer_params + self.hidden_size + head

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """KV cache of one token over all layers (a K and a V vector per KV head)."""
        return 2 * self.num_hidden_layers * self.num_key_value_heads * self.head_dim * dtype_bytes


# Published shapes, so a plan (`terminus train --dry-run`) needs no download: the model directory's
# basename -> its config.json's figures (huggingface.co/Qwen/Qwen3-4B-Instruct-2507, config.json).
PUBLISHED_SHAPES = {
    "Qwen3-4B-Instruct-2507": ModelShape(vocab_size=151936, hidden_size=2560, intermediate_size=9728,
                                         num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
                                         head_dim=128, tie_word_embeddings=True,
                                         max_position_embeddings=262144),
}


def model_shape(path: str) -> ModelShape:
    """The shape of model.path without loading weights: the embedded tiny spec, a local config.json,
    or (no directory here, e.g. planning a cluster run) a published shape by the directory's name."""
    if path in TINY_SPECS:
        s = TINY_SPECS[path]
        return ModelShape(vocab_size=s.vocab_size, hidden_size=s.hidden_size,
                          intermediate_size=s.intermediate_size, num_hidden_layers=s.num_hidden_layers,
                          num_attention_heads=s.num_attention_heads, num_key_value_heads=s.num_key_value_heads,
                          head_dim=s.head_dim, tie_word_embeddings=True,
                          max_position_embeddings=s.max_position_embeddings)
    config = Path(path).expanduser() / "config.json"
    if config.is_file():
        return ModelShape.from_config(json.loads(config.read_text()))
    name = Path(path).name
    if name in PUBLISHED_SHAPES:
        return PUBLISHED_SHAPES[name]
    raise ModelPathError(f"model.path '{path}' has no config.json here and '{name}' is not a known published "
                         f"shape ({', '.join(PUBLISHED_SHAPES)}): copy the model's config.json there, or plan "
                         f"with a path whose last part names a known shape")


def cache_root() -> Path:
    return Path(os.environ.get("TERMINUS_CACHE", Path.home() / ".cache" / "terminus"))


def tiny_model_dir(spec: TinySpec = TinySpec()) -> Path:
    """Cache directory of the tiny model, keyed by its spec and this builder's source."""
    recipe = json.dumps(asdict(spec), sort_keys=True) + Path(__file__).read_text()
    key = hashlib.sha256(recipe.encode()).hexdigest()[:12]
    return cache_root() / "models" / f"tiny-qwen3-{key}"


def resolve_model_path(path: str) -> Path:
    """The local directory of a model: a name of TINY_SPECS ('tiny', 'tiny-copy', 'tiny-copy-obs')
    builds (once) that embedded model; anything else must be an HF model directory (config.json, weights and
    tokenizer files), else a ModelPathError says what is missing (before anything loads it)."""
    if path in TINY_SPECS:
        d = tiny_model_dir(TINY_SPECS[path])
        if not (d / "config.json").exists():
            build_tiny(d, TINY_SPECS[path])
        return d
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelPathError(
            f"model path '{p}' does not exist: expected a local directory in Hugging Face format "
            f"(config.json, *.safetensors, tokenizer files), or 'tiny' for the embedded model. "
            f"Nothing is downloaded at run time: copy the model there first.")
    if not (p / "config.json").is_file():
        raise ModelPathError(f"model path '{p}' has no config.json: expected a Hugging Face model directory "
                             f"(config.json, *.safetensors, tokenizer.json).")
    if not any(p.glob("*.safetensors")) and not any(p.glob("*.bin")):
        raise ModelPathError(f"model path '{p}' has no weights (*.safetensors): expected a Hugging Face model directory.")
    if not any((p / f).is_file() for f in TOKENIZER_FILES):
        raise ModelPathError(
            f"model path '{p}' has no tokenizer files (none of {', '.join(TOKENIZER_FILES)}): copy the tokenizer "
            f"of the model it comes from into it (tokenizer.json and tokenizer_config.json, or vocab.json and "
            f"merges.txt), or, for the embedded tiny model, write one with its tokenizer: "
            f"`terminus model build-tiny --out {p}`")
    return p


# Any one of these lets transformers' AutoTokenizer load a directory (fast, sentencepiece, BPE vocab).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def _corpus_files(limit_bytes: int) -> list[Path]:
    """Python's own standard library sources, in a fixed order, up to a byte budget."""
    stdlib = Path(os.__file__).parent
    files, total = [], 0
    for f in sorted(stdlib.rglob("*.py")):
        if "site-packages" in f.parts or "test" in f.parts or "tests" in f.parts:
            continue
        size = f.stat().st_size
        if total + size > limit_bytes:
            continue
        files.append(f)
        total += size
    return files


def build_tokenizer(spec: TinySpec = TinySpec()):
    """A byte-level BPE tokenizer with Qwen3's pre-tokenizer and special tokens, trained on stdlib sources."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size - len(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    files = _corpus_files(spec.corpus_bytes)
    texts = (f.read_text(encoding="utf-8", errors="replace") for f in files)
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_special_tokens(SPECIAL_TOKENS)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        bos_token=None, unk_token=None, clean_up_tokenization_spaces=False,
        model_max_length=spec.max_position_embeddings,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny(out_dir: str | os.PathLike, spec: TinySpec = TinySpec()) -> Path:
    """Write the tiny model + tokenizer in HF format to out_dir (atomically); deterministic for a given spec."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp-", dir=out.parent))
    try:
        tokenizer = build_tokenizer(spec)
        tokenizer.save_pretrained(tmp)
        ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_end|>")}
        config = Qwen3Config(
            vocab_size=spec.vocab_size, hidden_size=spec.hidden_size,
            intermediate_size=spec.intermediate_size, num_hidden_layers=spec.num_hidden_layers,
            num_attention_heads=spec.num_attention_heads, num_key_value_heads=spec.num_key_value_heads,
            head_dim=spec.head_dim, max_position_embeddings=spec.max_position_embeddings,
            rope_theta=spec.rope_theta, tie_word_embeddings=True,
            bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
            torch_dtype="bfloat16",
        )
        torch.manual_seed(spec.seed)
        model = Qwen3ForCausalLM(config)
        if spec.copy_circuit:
            state = model.state_dict()
            roles = None
            if spec.copy_from_user_turns:
                roles = RoleTokens.of(tokenizer)
            install_copy_circuit(state, config, seed=spec.seed, roles=roles)
            model.load_state_dict(state)
        model = model.to(torch.bfloat16)
        model.generation_config = GenerationConfig(
            bos_token_id=ids["<|endoftext|>"], eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
            pad_token_id=ids["<|endoftext|>"])
        save_hf_weights(model.state_dict(), tmp, tie_word_embeddings=True)
        model.config.architectures = ["Qwen3ForCausalLM"]
        model.config.save_pretrained(tmp)
        model.generation_config.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.chmod(tmp, 0o755)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


# The copy circuit's residual-stream layout: token content, a constant, the previous token's content;
# with the user-turn gate also: a role-marker strength, its sign (+1 user, -1 assistant), "in a user
# turn", and the previous token's content kept only in user turns.
CONTENT, CONSTANT, PREVIOUS = slice(0, 64), 64, slice(65, 129)
CONSTANT_VALUE = 4.0   # what every token embedding holds in CONSTANT
MARKER, SIGN, IN_USER, USER_PREVIOUS = 129, 130, 131, slice(132, 196)
# ... and, gated, the token before the previous one (a 30-dim projection), ungated and kept in user turns
BEFORE, USER_BEFORE = slice(196, 226), slice(226, 256)


@dataclass(frozen=True)
class RoleTokens:
    """The token ids that open a turn in the chat template: `<|im_start|>`, then the role's first token."""
    turn: int
    user: int
    assistant: int

    @classmethod
    def of(cls, tokenizer) -> "RoleTokens":
        def first(text: str) -> int:
            return tokenizer(text, add_special_tokens=False)["input_ids"][0]
        turn = tokenizer.convert_tokens_to_ids("<|im_start|>")
        user, assistant = first("user\n"), first("assistant\n")
        if len({turn, user, assistant}) < 3:
            raise ValueError("the chat template's role tokens are not distinct: cannot gate the copy circuit")
        return cls(turn=turn, user=user, assistant=assistant)


def install_copy_circuit(state: dict, config, seed: int = 0, roles: RoleTokens | None = None) -> None:
    """Set an induction circuit in layers 0 and 1 of a random tiny Qwen3 (in place): the model then
    predicts, at every position, the token that followed the previous occurrence of the current token.

    Why: the job is to copy facts (test names, counts) from a command's output into a report.
    Qwen3-4B brings that skill from pretraining; a random 4 M-parameter model does not, and it does
    not form copy ("induction") heads in the steps a CPU demo can afford (docs/experiments.md:
    SFT wrote plausible names, never the ones it saw; copy pretraining stayed on its loss plateau
    for 800+ steps). So the embedded model starts with the circuit a pretrained model learns:
      - every token embedding holds a random unit-RMS vector in CONTENT and a constant in CONSTANT;
      - layer 0, all heads: a previous-token head. Queries and keys read only the constant, so the
        score depends on position alone; the key is the query turned by one position on the fast
        RoPE frequencies, so the score peaks at offset 1. Head 0 writes the attended (previous)
        token's CONTENT into PREVIOUS;
      - layer 1, heads 0 and 2 (one per KV head): an induction head. The query projects the current
        token's CONTENT, the key the same projection of PREVIOUS, on the slow RoPE frequencies
        (position barely turns them), so a position whose previous token equals the current token
        scores high; the value, that position's CONTENT, is added to the residual, and the tied
        output head turns it into the copied token's logit.
    With `roles` (the chat template's role tokens) the circuit is gated to user turns and matches two
    tokens, not one (`_gate_to_user_turns`; layer 0's head 1 then reads the token two back into BEFORE).
    Everything else keeps its random initialisation; training is free to change all of it.
    Copy accuracy on repeated random spans: ~92% before any training, 0% without the circuit; of names
    in a command's output, in a chat: 0.28 ungated, 0.90 gated (tests/test_model.py)."""
    import torch

    hidden, head_dim = config.hidden_size, config.head_dim
    n_q, n_kv = config.num_attention_heads, config.num_key_value_heads
    if roles is not None and hidden < USER_BEFORE.stop:
        raise ValueError(f"the gated copy circuit needs hidden_size >= {USER_BEFORE.stop}")
    if hidden < PREVIOUS.stop or head_dim != 64 or n_q != 2 * n_kv or config.num_hidden_layers < 2:
        raise ValueError("install_copy_circuit needs hidden_size >= 129, head_dim 64, two query heads per "
                         "KV head and at least 2 layers; set TinySpec.copy_circuit=False for other shapes")
    rope = getattr(config, "rope_parameters", None) or {}
    base = float(rope.get("rope_theta", getattr(config, "rope_theta", 1e6)))
    half = head_dim // 2
    freqs = base ** (-torch.arange(half, dtype=torch.float64) * 2 / head_dim)   # pair i: dims i and i+half
    g = torch.Generator().manual_seed(seed)
    content = torch.arange(CONTENT.start, CONTENT.stop)
    previous = torch.arange(PREVIOUS.start, PREVIOUS.stop)
    width = len(content)

    emb = state["model.embed_tokens.weight"]
    vectors = torch.randn(emb.shape[0], width, generator=g)
    emb[:, CONTENT] = vectors / vectors.norm(dim=1, keepdim=True) * width ** 0.5
    emb[:, CONSTANT] = CONSTANT_VALUE
    if roles is not None:
        emb[:, MARKER:USER_BEFORE.stop] = 0.0                # the gate's dims start clean
        emb[[roles.user, roles.assistant], MARKER] = MARKER_STRENGTH
        emb[roles.turn, MARKER] = MARKER_STRENGTH / 10      # a weak sink: before any role token, attend here
        emb[roles.user, SIGN], emb[roles.assistant, SIGN] = 1.0, -1.0
    if "lm_head.weight" in state:
        state["lm_head.weight"].copy_(emb)

    def attention(layer: int, q, k, v, o, qk_scale: float) -> None:
        prefix = f"model.layers.{layer}."
        for name, w in (("q_proj", q), ("k_proj", k), ("v_proj", v), ("o_proj", o)):
            state[prefix + f"self_attn.{name}.weight"] = w
        state[prefix + "self_attn.q_norm.weight"] = torch.full((head_dim,), qk_scale)
        state[prefix + "self_attn.k_norm.weight"] = torch.full((head_dim,), qk_scale)
        state[prefix + "input_layernorm.weight"] = torch.ones(hidden)

    def blank():
        return (torch.zeros(n_q * head_dim, hidden), torch.zeros(n_kv * head_dim, hidden),
                torch.zeros(n_kv * head_dim, hidden), torch.zeros(hidden, n_q * head_dim))

    # layer 0: previous-token heads on the 8 fastest RoPE pairs
    fast = torch.zeros(half, dtype=torch.float64)
    fast[:8] = 1.0
    query = torch.cat([fast, torch.zeros(half, dtype=torch.float64)])
    key = torch.cat([fast * torch.cos(freqs), fast * torch.sin(freqs)])           # the query, one position on
    q, k, v, o = blank()
    for h in range(n_q):
        q[h * head_dim:(h + 1) * head_dim, CONSTANT] = query.float()
    for h in range(n_kv):
        k[h * head_dim:(h + 1) * head_dim, CONSTANT] = key.float()
        v[h * head_dim + torch.arange(width), content] = 1.0
    o[previous, torch.arange(width)] = 1.0
    before = None
    if roles is not None:
        # head 1 (KV head 0's second query): its query turned back one position, so it peaks at offset
        # 2; it writes that token's CONTENT, projected to 30 dims, into BEFORE
        a, b = query[:half] * torch.cos(-freqs), query[:half] * torch.sin(-freqs)
        q[head_dim:2 * head_dim, CONSTANT] = torch.cat([a, b]).float()
        n_before = BEFORE.stop - BEFORE.start
        before = torch.randn(n_before, width, generator=g) / n_before ** 0.5
        o[BEFORE, head_dim:head_dim + width] = before
    attention(0, q, k, v, o, qk_scale=4.0)
    if roles is not None:
        _gate_to_user_turns(state, config, q, k, v, o)

    # layer 1: induction heads on the 12 slowest RoPE pairs. Gated: on 11 of them, the key reads the
    # two tokens before its position as kept in user turns, the query the current and the previous
    # token (two tokens pick out a name's continuation where one letter recurs all over the output);
    # the slowest pair holds a constant the query never reads (it sets the key's length where the gated
    # part is near zero, so assistant text scores ~0)
    n_slow = 12 if roles is None else 11
    slow = torch.arange(half - 12, half - 12 + n_slow)
    dims = torch.cat([slow, slow + half])
    keyed = previous if roles is None else torch.arange(USER_PREVIOUS.start, USER_PREVIOUS.stop)
    q, k, v, o = blank()
    for h in range(n_kv):
        proj = torch.randn(len(dims), width, generator=g) / width ** 0.5
        q[2 * h * head_dim + dims[:, None], content[None, :]] = proj
        k[h * head_dim + dims[:, None], keyed[None, :]] = proj
        if roles is not None:
            # the two tokens before a key position against the current and the previous token
            n_before = before.shape[0]
            proj2 = torch.randn(len(dims), n_before, generator=g) / n_before ** 0.5
            q[2 * h * head_dim + dims[:, None], previous[None, :]] = proj2 @ before
            k[h * head_dim + dims[:, None], torch.arange(USER_BEFORE.start, USER_BEFORE.stop)[None, :]] = proj2
            k[h * head_dim + half - 1, CONSTANT] = KEY_ANCHOR
        v[h * head_dim + torch.arange(width), content] = 1.0
        o[content, 2 * h * head_dim + torch.arange(width)] = 1.5
    attention(1, q, k, v, o, qk_scale=5.0)
    # a calibrated output: the copied token at p ~0.7, and random text near the uniform loss (9.3 vs
    # 8.3 nats; at 3.0 it was 200, and SFT spent its first hundred steps undoing that confidence)
    state["model.norm.weight"] = torch.full((hidden,), 0.1)


# The user-turn gate's constants (tests/test_model.py measures the gate they make).
MARKER_STRENGTH = 8.0     # a role token's marker: its key scores ~16 in the role head, a plain token 0
GATE_SLOPE, GATE_OFFSET, GATE_RANGE = 24.0, 2.0, 6.0
GATE_OUT = 0.05
KEY_ANCHOR = 0.1


def _gate_to_user_turns(state: dict, config, q, k, v, o) -> None:
    """Layer 0's second KV head becomes a role head, and 188 of layer 0's MLP units a gate, so that the
    induction head's keys (USER_PREVIOUS, USER_BEFORE) hold the two tokens before a position only inside
    user turns: the model copies from the request and the command outputs, never from its own turns.

    - Role head (query head 2, KV head 1): the key reads MARKER on a RoPE pair too slow to turn, so
      every position attends almost only to the role tokens before it (`user` +1, the assistant role's
      first token -1, both in SIGN) and averages their signs: in the k-th user turn (k users, k-1
      assistants) that is 1/(2k-1) > 0, in any assistant turn or before the first user turn exactly 0.
      It writes IN_USER.
    - Gate (MLP units 2j, 2j+1 for each of the 64 PREVIOUS and 30 BEFORE dims): silu(z) - silu(z -
      GATE_RANGE) with z = GATE_SLOPE * IN_USER - GATE_OFFSET, times that dim: ~4-6 x it in a user turn,
      whatever its k, and ~-0.24 x outside (a length the key's anchor then dwarfs)."""
    import torch

    head_dim, half = config.head_dim, config.head_dim // 2
    gated = list(zip(range(PREVIOUS.start, PREVIOUS.stop), range(USER_PREVIOUS.start, USER_PREVIOUS.stop)))
    gated += list(zip(range(BEFORE.start, BEFORE.stop), range(USER_BEFORE.start, USER_BEFORE.stop)))
    role_q, role_kv, still = 2, 1, half - 2          # pair 30: ~0.01 rad over 4096 positions
    q[role_q * head_dim:(role_q + 2) * head_dim] = 0.0
    k[role_kv * head_dim:(role_kv + 1) * head_dim] = 0.0
    v[role_kv * head_dim:(role_kv + 1) * head_dim] = 0.0
    q[role_q * head_dim + still, CONSTANT] = 1.0
    k[role_kv * head_dim + still, MARKER] = 1.0
    k[role_kv * head_dim + still + 1, CONSTANT] = 0.25     # a marker of 8 then points the key along `still`
    v[role_kv * head_dim, SIGN] = 1.0
    o[IN_USER, role_q * head_dim] = 1.0
    for name in ("q_norm", "k_norm"):                          # score = 16 * MARKER / sqrt(1 + MARKER^2)
        w = state[f"model.layers.0.self_attn.{name}.weight"]
        w[still], w[still + 1] = 2.0 ** 0.5, 2.0 ** 0.5
    for name, w in (("q_proj", q), ("k_proj", k), ("v_proj", v), ("o_proj", o)):
        state[f"model.layers.0.self_attn.{name}.weight"] = w

    gate, up = state["model.layers.0.mlp.gate_proj.weight"], state["model.layers.0.mlp.up_proj.weight"]
    down = state["model.layers.0.mlp.down_proj.weight"]
    units = torch.arange(2 * len(gated))
    gate[units], up[units] = 0.0, 0.0
    down[:, units] = 0.0
    down[USER_PREVIOUS] = 0.0                                   # nothing else writes the gated copies
    down[USER_BEFORE] = 0.0
    down[IN_USER] = 0.0
    for j, (dim, out) in enumerate(gated):
        for unit, offset, sign in ((2 * j, GATE_OFFSET, 1.0), (2 * j + 1, GATE_OFFSET + GATE_RANGE, -1.0)):
            gate[unit, IN_USER] = GATE_SLOPE
            gate[unit, CONSTANT] = -offset / CONSTANT_VALUE * 0.75   # CONSTANT reads ~5.3 after the norm
            up[unit, dim] = 1.0
            down[out, unit] = sign * GATE_OUT
    state["model.layers.0.post_attention_layernorm.weight"] = torch.ones(config.hidden_size)


EMBED_WEIGHT, LM_HEAD_WEIGHT = "model.embed_tokens.weight", "lm_head.weight"
T = TypeVar("T")


def hf_weights(items: Iterable[tuple[str, T]], *, tie_word_embeddings: bool) -> Iterator[tuple[str, T]]:
    """The (name, tensor) pairs vLLM's in-place weight loading expects, from a model's own pairs.

    With tied embeddings `save_pretrained` omits lm_head.weight, and vLLM's in-place reload then keeps
    the OLD output head (see shared/docs/PLATFORM.md). So an explicit lm_head.weight (the embedding)
    follows the embedding; a state dict's own alias of it is dropped, so it appears once. Lazy and
    generic in the value (tensors, or metadata about them), so the disk export and the GPU weight
    stream (rl/weight_sync.py) name exactly the same tensors.
    """
    for name, value in items:
        if tie_word_embeddings and name == LM_HEAD_WEIGHT:
            continue
        yield name, value
        if tie_word_embeddings and name == EMBED_WEIGHT:
            yield LM_HEAD_WEIGHT, value


DEFAULT_MAX_SHARD_SIZE = "5GB"   # Hugging Face's default: a 4B model in bfloat16 is two shards


def save_hf_weights(state_dict: dict, out_dir: str | os.PathLike, *, tie_word_embeddings: bool,
                    dtype=None, max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE) -> list[Path]:
    """Write a full state dict as HF safetensors that vLLM (`vllm serve`, its in-place `reload_weights`)
    and transformers load: with an explicit lm_head.weight for tied embeddings (see `hf_weights`),
    cast to `dtype` (a torch.dtype; None keeps the tensors' own), in shards of at most
    `max_shard_size` (bytes or "5GB"): one `model.safetensors`, or `model-0000k-of-0000n.safetensors`
    plus `model.safetensors.index.json`. Returns the files written."""
    from huggingface_hub import save_torch_state_dict

    tensors = {}
    for name, value in hf_weights(state_dict.items(), tie_word_embeddings=tie_word_embeddings):
        value = value.detach().to(device="cpu", dtype=dtype)
        # safetensors refuses two names on one storage, and the tied head is the embedding itself.
        tensors[name] = value.clone() if tie_word_embeddings and name == LM_HEAD_WEIGHT else value
    out = Path(out_dir)
    save_torch_state_dict(tensors, out, max_shard_size=max_shard_size, metadata={"format": "pt"})
    index = out / "model.safetensors.index.json"
    if index.exists():
        return [out / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    return [out / "model.safetensors"]


def describe(path: Path) -> str:
    cfg = json.loads((path / "config.json").read_text())
    return (f"{cfg.get('architectures', ['?'])[0]} at {path}: hidden {cfg['hidden_size']}, "
            f"{cfg['num_hidden_layers']} layers, vocab {cfg['vocab_size']}")


if __name__ == "__main__":  # pragma: no cover
    print(build_tiny(sys.argv[1]))
