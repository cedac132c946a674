"""The run config: one OmegaConf structured config composed from each component's dataclass.

    cfg = load_config("configs/tiny_cpu.yaml", ["rollout.sampling.temperature=0.7"])

Sources are merged in order (schema defaults <- YAML file <- `key=value` overrides). Every
source is checked before anything starts: an unknown key, a value of the wrong type or a value
outside its declared range raises `ConfigError` naming the key, the source it came from and
what is allowed.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cluster.config import ClusterConfig
from judge.config import JudgeConfig
from rl.config import TrainerConfig, check_trainer
from rollout.config import RolloutConfig
from tasks.config import TasksConfig
from core.errors import ConfigError
from core.fields import at_least, items, one_of

# Named configs (`-c tiny_cpu`): a checkout's configs/ first, then the copy the wheel ships as package
# data (terminus/configs, a link to configs/ in a checkout), so they work outside a checkout too.
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
PACKAGED_CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclass
class ModelConfig:
    path: str = "tiny"  # "tiny" (or "tiny-copy", "tiny-copy-obs") = an embedded model (`terminus model build-tiny`); else a local HF dir
    dtype: str = one_of("float32", "bfloat16", "float16", default="bfloat16")
    max_model_len: int = at_least(256, default=4096)


@dataclass
class LoggingConfig:
    # A WANDB_MODE / WANDB_PROJECT / WANDB_ENTITY / WANDB_NAME / WANDB_RUN_GROUP / WANDB_TAGS set in the
    # environment wins over these (a cluster or CI sets them for every run): core.tracking.
    wandb_mode: str = one_of("offline", "online", "disabled", default="offline")
    wandb_project: str = "terminus"
    wandb_entity: str = ""
    wandb_name: str = field(default="", metadata={"help": "W&B run name; empty = the config's `name`"})
    wandb_group: str = field(default="", metadata={"help": "W&B group, e.g. one per sweep: its seeds side by side"})
    wandb_tags: List[str] = items(list, help="W&B tags, e.g. [qwen3_4b, grpo]")
    console_every: int = at_least(1, default=1)
    sample_table_every: int = at_least(0, default=5)


@dataclass
class RunConfig:
    name: str = "run"
    output_dir: str = "runs/${name}"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    tasks: TasksConfig = field(default_factory=TasksConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


def config_dirs() -> list[Path]:
    """Where named configs are looked up, each directory once (in a checkout both are configs/)."""
    dirs = [d.resolve() for d in (CONFIG_DIR, PACKAGED_CONFIG_DIR) if d.is_dir()]
    return list(dict.fromkeys(dirs))


def named_configs() -> list[str]:
    return sorted({x.stem for d in config_dirs() for x in d.glob("*.yaml")})


def resolve_config_path(name: str | os.PathLike) -> Path:
    """A path as given, or a bare name looked up in config_dirs() ("tiny_cpu" -> configs/tiny_cpu.yaml)."""
    p = Path(name)
    if p.is_file():
        return p
    shipped = Path(p.name) if p.parent == Path("configs") else p   # `configs/x.yaml` outside a checkout
    for d in config_dirs():
        for candidate in (d / shipped, d / f"{shipped}.yaml"):
            if candidate.is_file():
                return candidate
    where = " and ".join(str(d) for d in config_dirs()) or "no config directory (a broken install?)"
    raise ConfigError(f"config file '{name}' not found (looked in . and {where}); give a YAML file, "
                      f"or one of the known configs: {', '.join(named_configs())}")


def load_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = (),
                schema: type = RunConfig) -> DictConfig:
    """Compose schema defaults, a YAML file and `key=value` overrides; validate; return a DictConfig."""
    cfg = OmegaConf.structured(schema)
    sources: list[tuple[str, DictConfig]] = []
    if path is not None:
        file = resolve_config_path(path)
        try:
            data = OmegaConf.load(file)
        except Exception as e:  # YAML syntax errors
            raise ConfigError(f"{file}: cannot parse YAML: {e}") from None
        sources.append((str(file), data))
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"override {bad[0]!r} is not of the form key=value (e.g. rollout.sampling.temperature=0.7)")
    if overrides:
        sources.append(("command line", OmegaConf.from_dotlist(list(overrides))))
    for origin, data in sources:
        try:
            cfg = OmegaConf.merge(cfg, data)
        except OmegaConfBaseException as e:
            raise ConfigError(_explain(e, origin, schema)) from None
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as e:
        raise ConfigError(f"cannot resolve interpolation: {e}") from None
    validate(cfg, schema, sources)
    if schema is RunConfig:
        check_trainer(cfg)
    return cfg


def _explain(e: OmegaConfBaseException, origin: str, schema: type) -> str:
    key = getattr(e, "full_key", None) or "?"
    msg = str(e).splitlines()[0]
    if "not in struct" in msg or "Key '" in msg and "not" in msg:
        parent, _, leaf = key.rpartition(".")
        allowed = _field_names(schema, parent)
        hint = f"; known keys under '{parent or '<root>'}': {', '.join(allowed)}" if allowed else ""
        return f"{origin}: unknown config key '{key}'{hint}"
    expected = _field_type(schema, key)
    return f"{origin}: bad value for '{key}': {msg}" + (f" (expected {expected})" if expected else "")


def _dataclass_at(schema: type, dotted: str) -> Optional[type]:
    cls = schema
    for part in [p for p in dotted.split(".") if p]:
        f = {f.name: f for f in dataclasses.fields(cls)}.get(part)
        if f is None or not dataclasses.is_dataclass(f.default_factory if f.default_factory is not dataclasses.MISSING else None):
            return None
        cls = f.default_factory
    return cls


def _field_names(schema: type, dotted: str) -> list[str]:
    cls = _dataclass_at(schema, dotted)
    return [f.name for f in dataclasses.fields(cls)] if cls else []


def _field_type(schema: type, dotted: str) -> str:
    parent, _, leaf = dotted.rpartition(".")
    cls = _dataclass_at(schema, parent)
    if cls is None:
        return ""
    f = {f.name: f for f in dataclasses.fields(cls)}.get(leaf)
    return str(f.type) if f else ""


def validate(cfg: DictConfig, schema: type = RunConfig,
             sources: Sequence[tuple[str, DictConfig]] = ()) -> None:
    """Check each field's declared choices/range (see core.fields); raise ConfigError on the first problem."""

    def origin_of(key: str) -> str:
        for name, data in reversed(sources):
            if OmegaConf.select(data, key, default=_ABSENT) is not _ABSENT:
                return name
        return "defaults"

    def walk(cls: type, node: DictConfig, prefix: str) -> None:
        for f in dataclasses.fields(cls):
            key = f"{prefix}{f.name}"
            value = node[f.name]
            if f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory):
                walk(f.default_factory, value, key + ".")
                continue
            meta = f.metadata
            if "choices" in meta and value not in meta["choices"]:
                allowed = ", ".join(map(str, meta["choices"]))
                raise ConfigError(f"{origin_of(key)}: '{key}' = {value!r} is not allowed; choose one of: {allowed}")
            lo, hi = meta.get("min"), meta.get("max")
            if value is None or (lo is None and hi is None):
                continue
            too_low = lo is not None and (value <= lo if meta.get("exclusive_min") else value < lo)
            if too_low or (hi is not None and value > hi):
                exclusive = meta.get("exclusive_min")
                rng = f"{'>' if exclusive else '>='} {lo}" if hi is None else f"in {'(' if exclusive else '['}{lo}, {hi}]"
                raise ConfigError(f"{origin_of(key)}: '{key}' = {value!r} is out of range; it must be {rng}")

    walk(schema, cfg, "")


_ABSENT = object()


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def section(cfg: DictConfig, key: str) -> Any:
    """A typed copy of one section (e.g. section(cfg, 'rollout') -> RolloutConfig) for code that wants attributes."""
    return OmegaConf.to_object(OmegaConf.select(cfg, key))
