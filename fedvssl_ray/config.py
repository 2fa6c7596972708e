"""One typed config tree for every entry point: presets, dotted ``key=value`` overrides, validation.

A run is fully described by a :class:`Config`. It is built from the defaults below, then a preset
file (``experiments/configs/<name>.yaml`` or any YAML/JSON path), then command-line overrides such
as ``strategy.alpha=1 rounds=100``. Values are typed from the schema, and every mistake is a
:class:`ConfigError` that names the key and the valid choices.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

PRESET_DIR = Path(__file__).resolve().parent.parent / "experiments" / "configs"
DEFAULT_PRESET = "synthetic"


class ConfigError(ValueError):
    """A config key, value or file is wrong; the message says which and what is allowed."""


@dataclass(frozen=True)
class StrategyConfig:
    """Server aggregation (FEDVSSL paper convention unless ``name`` is ``flower-compat``)."""

    name: Literal["fedvssl", "fedavg", "loss", "flower-compat"] = "fedvssl"
    alpha: float = 0.9  # weight of the loss-based mean; 1 - alpha weights FedAvg
    beta: Literal[0, 1] = 1  # 1: average with the previous global from round 2 on ("SWA")
    decay: float = 0.5  # weight of the previous global when beta=1 (0.5 in the paper)
    shared: Literal["backbone", "all"] = "backbone"  # which weights are aggregated and broadcast
    mix_coeff: float = 0.9  # flower-compat only: the baseline's FedAvg factor
    swbeta: Literal[0, 1] = 1  # flower-compat only: the baseline's SWA switch
    fedavg: bool = False  # flower-compat only: the baseline's fedavg=true mode (plain FedAvg)
    loss_window: int = 10  # flower-compat only: the baseline's loss log interval (K-400: 50)


@dataclass(frozen=True)
class ClientConfig:
    """Local training of one client in one round, and the resources of its Ray actor."""

    batch_size: int = 4
    local_epochs: int = 1
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    grad_clip: float = 40.0  # max global L2 norm of the gradient; 0 disables clipping
    num_gpus: float = 0.0  # per actor; fractional values share a GPU
    num_cpus: float = 1.0  # per actor, as scheduled by Ray
    num_actors: int = 0  # 0: as many as the GPUs (else CPUs) hold, at most clients_per_round
    torch_threads: int = 0  # per actor; 0: the cores divided among the actors still busy
    max_cached_clients: int = 16  # per actor: clients whose head and shard stay in memory
    replay: bool = False  # every round draws the same clips (the Flower baseline reseeds each round)
    mixed_precision: bool = True  # GPU: bf16 autocast (fp16 + loss scaling if no bf16); CPU: fp32
    channels_last: bool = False  # GPU only: channels_last_3d layout; turn on only once measured
    # the local optimiser, rebuilt every round: sgd (the reference: momentum, weight decay) or
    # adamw (decoupled weight decay; momentum unused), which the synthetic CPU demo needs to
    # leave the all-zero predictor within minutes
    optimizer: Literal["sgd", "adamw"] = "sgd"
    # divides CtP's regression targets (multiplies their stds 0.8, 0.8, 0.04, 0.04): 1 is the
    # reference, whose targets (centre s.d. ~14) sit in smooth-L1's linear range; 10 puts them
    # in its quadratic range (the synthetic CPU demo)
    target_scale: float = 1.0


@dataclass(frozen=True)
class DataConfig:
    """Where the videos are and how a client's clips are made."""

    dataset: Literal["synthetic", "ucf101", "hmdb51", "kinetics400"] = "synthetic"
    root: str = "data/synthetic"  # prepared dataset directory (holds manifests/)
    split: int = 1
    clip_len: int = 16
    crop_size: int = 112
    partition: Literal["iid", "k400-noniid", "classes", "dirichlet"] = "iid"
    partition_dir: str = ""  # existing client_dist{k}.json files; empty: partition the manifest
    dirichlet_alpha: float = 0.1
    classes_per_client: int = 2
    loader: Literal["local", "ray_data"] = "local"
    # decode worker processes making one client actor's clips (loader=ray_data: Ray Data tasks at
    # once, 0: 2), taken from its client.num_cpus with one CPU left to training: -1 (automatic)
    # is num_cpus - 1 on GPU clients (set client.num_cpus to the node's CPUs per GPU share) and
    # 0 (in the training process) on CPU clients; never changes the clips
    decode_workers: int = -1
    # where a client's CtP clips are augmented (scale, crop, flip, PatchMask, colour, normalise):
    # cpu, where they are decoded; device, on the client's training device (its GPU, else its
    # training process), fed decoded uint8 frames and the same draws (loader=local only; the
    # patch targets are equal, pixels within device_augment.TOLERANCE)
    augment_on: Literal["cpu", "device"] = "cpu"
    # multiplies the CtP patches' centre velocity (U(-3D, 3D) px per key gap D at 112 px; 1: the
    # reference). Faster patches are easier to track: the synthetic CPU demo uses 3
    patch_speed: float = 1.0


@dataclass(frozen=True)
class ModelConfig:
    """The video backbone under the CtP head."""

    backbone: Literal["r3d_18", "r3d10_narrow"] = "r3d_18"
    head_init_std: float = 0.001  # std of the CtP head's fc weights at init (the reference: 0.001)


@dataclass(frozen=True)
class EvalConfig:
    """Representation evaluation of a backbone: retrieval R@k and k-NN on the test split."""

    every: int = 0  # during pretraining: evaluate the global every N rounds and after the last; 0: off
    max_videos: int = 0  # test videos evaluated during pretraining (seeded subset); 0: all
    num_clips: int = 10  # uniformly spaced clips per video, features averaged
    knn_k: int = 20  # neighbours voting in k-NN classification
    batch_size: int = 16  # clips per backbone forward pass
    workers: int = 0  # backbone workers of the Ray Data pipeline; 0: one per GPU, else 1
    num_cpus: float = 1.0  # per evaluation worker, as scheduled by Ray
    num_gpus: float = 0.0  # per evaluation worker


@dataclass(frozen=True)
class FinetuneConfig:
    """Supervised fine-tuning of a backbone (CTP.md §7, FEDVSSL.md §8) on Ray Train, then the test."""

    checkpoint: str = ""  # backbone to start from: a .npz of a run, a CtP torch state dict, none
    trust_pickle: bool = False  # allow a pickled (Flower baseline / authors') .npz: runs its code
    epochs: int = 150
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_steps: str = "60,120"  # epochs after which the LR is multiplied by lr_gamma (comma list)
    lr_gamma: float = 0.1
    grad_clip: float = 40.0  # max global L2 norm of the gradient; 0 disables clipping
    dropout: float = 0.5
    batch_size: int = 4  # per worker (the Flower baseline: 4 on 1 GPU; upstream CtP 8 x 4)
    clip_len: int = 0  # frames per clip; 0: data.clip_len
    stride: int = 2  # frame stride of the training and test clips
    crop_size: int = 0  # 0: data.crop_size
    dataset: Literal["", "synthetic", "ucf101", "hmdb51", "kinetics400"] = ""  # "": data.dataset
    root: str = ""  # prepared dataset directory; "": data.root
    split: int = 0  # 0: data.split
    workers: int = 1  # Ray Train workers (DDP)
    num_cpus: float = 1.0  # per worker
    num_gpus: float = 0.0  # per worker (> 0: use_gpu)
    torch_threads: int = 0  # per worker; 0: max(1, num_cpus)
    decode_workers: int = 0  # Ray Data decode tasks running at once per worker; 0: automatic
    mixed_precision: bool = True  # as client.mixed_precision: bf16 (or fp16) autocast on GPU only
    checkpoint_every: int = 1  # keep checkpoints/epoch-NNNN.npz every N epochs (and the last)
    test: bool = True  # run the 10-clip test on the final model


@dataclass(frozen=True)
class RayConfig:
    """How to reach Ray: an address joins a running cluster, empty starts a local one."""

    address: str = ""
    num_cpus: int = 0  # local cluster only; 0: all cores


@dataclass(frozen=True)
class Config:
    """Everything that defines a federated pretraining run."""

    seed: int = 7
    run_dir: str = ""  # empty: runs/<preset>-<timestamp>
    rounds: int = 20
    num_clients: int = 5
    clients_per_round: int = 5
    min_clients: int = 1  # fewer accepted updates: the round is retried once, then the run stops
    # (0: a round with no accepted update keeps the previous global and the run goes on)
    round_timeout_s: float = 0.0  # 0: no deadline
    resume: bool = False
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    ray: RayConfig = field(default_factory=RayConfig)


# ---------------------------------------------------------------------------------------------
# schema introspection


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_section(tp: Any) -> bool:
    return dataclasses.is_dataclass(tp)


def all_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """Every dotted leaf key of the schema, in declaration order."""
    keys = []
    for name, tp in _field_types(cls).items():
        if _is_section(tp):
            keys.extend(all_keys(tp, f"{prefix}{name}."))
        else:
            keys.append(f"{prefix}{name}")
    return keys


def _unknown_key_error(key: str, where: str) -> ConfigError:
    close = difflib.get_close_matches(key, all_keys(), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"unknown config key {key!r}{where}{hint} (see --help for all keys)")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Type ``value`` (a string from the command line, or a YAML scalar) as the schema says."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        typed = _coerce(key, value, type(choices[0]))
        if typed not in choices:
            raise ConfigError(f"{key}={value!r} is not allowed; choose one of {list(choices)}")
        return typed
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"unsupported schema type for {key}: {tp}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{key}={value!r} is not a boolean; use true or false")
    if tp is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{key}={value!r} is not an integer")
        try:
            return int(value) if not isinstance(value, str) else int(value.strip())
        except ValueError:
            raise ConfigError(f"{key}={value!r} is not an integer") from None
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} is not a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}={value!r} is not a number") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key} must be a string, got {type(value).__name__}")
        return "" if value is None else str(value)
    raise TypeError(f"unsupported schema type for {key}: {tp}")


# ---------------------------------------------------------------------------------------------
# building a config


def _apply(cfg: Any, key: str, value: Any, where: str = "", prefix: str = "") -> Any:
    """Return a copy of the dataclass ``cfg`` with dotted ``key`` set to ``value`` (typed).

    A mapping value sets several keys of a section at once (as in preset files).
    """
    head, _, rest = key.partition(".")
    types_ = _field_types(type(cfg))
    if head not in types_:
        raise _unknown_key_error(prefix + key, where)
    tp = types_[head]
    if not _is_section(tp):
        if rest:
            raise _unknown_key_error(prefix + key, where)
        if isinstance(value, Mapping):
            raise ConfigError(f"{prefix}{key}{where} must be a single value, got a mapping")
        return dataclasses.replace(cfg, **{head: _coerce(prefix + key, value, tp)})
    section = getattr(cfg, head)
    if rest:
        section = _apply(section, rest, value, where, f"{prefix}{head}.")
    elif isinstance(value, Mapping):
        for sub_key, sub_value in value.items():
            section = _apply(section, str(sub_key), sub_value, where, f"{prefix}{head}.")
    else:
        keys = ", ".join(all_keys(tp, f"{prefix}{head}."))
        raise ConfigError(f"{prefix}{head!s} is a section; set one of its keys: {keys}")
    return dataclasses.replace(cfg, **{head: section})


def _apply_mapping(cfg: Config, values: Mapping[str, Any], where: str) -> Config:
    for key, value in values.items():
        cfg = _apply(cfg, str(key), value, where)
    return cfg


def preset_names() -> list[str]:
    """Names of the presets shipped in ``experiments/configs/``."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def preset_path(preset: str) -> Path:
    """Resolve a preset name or a YAML/JSON file path to an existing file."""
    candidate = Path(preset)
    if candidate.suffix in (".yaml", ".yml", ".json"):
        if not candidate.is_file():
            raise ConfigError(f"config file {str(candidate)!r} does not exist")
        return candidate
    named = PRESET_DIR / f"{preset}.yaml"
    if not named.is_file():
        raise ConfigError(
            f"unknown preset {preset!r}; choose one of {preset_names()} or give a .yaml/.json path"
        )
    return named


def read_config_file(path: Path) -> dict[str, Any]:
    """Read a YAML or JSON config file into a plain mapping (safe loaders only)."""
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read config file {str(path)!r}: {_one_line(err)}") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys to values")
    return dict(data)


def _one_line(err: Exception) -> str:
    """A parse error in one line: YAML's own message spans several, with a caret drawing."""
    mark = getattr(err, "problem_mark", None)
    if mark is None:
        return str(err)
    return f"line {mark.line + 1}, column {mark.column + 1}: {err.problem}"


def parse_override(text: str) -> tuple[str, str]:
    """Split one ``key=value`` command-line override."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form key=value (e.g. strategy.alpha=1)")
    return key.strip(), value


def preset_layers(preset: str, _seen: tuple[Path, ...] = ()) -> list[tuple[Path, dict[str, Any]]]:
    """The preset file's values after those of its ``base:`` preset (recursively), base first.

    ``base: NAME`` (a preset name or a file path) lets a preset be a few changes to another.
    """
    path = preset_path(preset)
    if path.resolve() in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, path.resolve()))
        raise ConfigError(f"config file {str(path)!r}: its base presets form a cycle ({chain})")
    values = read_config_file(path)
    base = values.pop("base", None)
    if base is None:
        return [(path, values)]
    if not isinstance(base, str) or not base:
        raise ConfigError(f"base in {path} must name a preset or a config file, got {base!r}")
    return [*preset_layers(base, (*_seen, path.resolve())), (path, values)]


def load_config(preset: str = DEFAULT_PRESET, overrides: Sequence[str] = ()) -> Config:
    """Defaults, then the preset file (after its ``base:`` presets), then ``key=value``
    overrides; validated."""
    cfg, file_keys = Config(), set()
    for path, values in preset_layers(preset):
        cfg = _apply_mapping(cfg, values, f" in {path}")
        file_keys |= set(flatten(values))
    override_keys = {parse_override(text)[0] for text in overrides}
    # keys set in the layer that chose the strategy, or later, must agree with it
    chosen_here = "strategy.name" in file_keys and "strategy.name" not in override_keys
    return _apply_texts(cfg, overrides, (file_keys if chosen_here else set()) | override_keys)


def apply_overrides(cfg: Config, overrides: Sequence[str]) -> Config:
    """A copy of ``cfg`` with ``key=value`` texts applied in order; validated."""
    return _apply_texts(cfg, overrides, {parse_override(text)[0] for text in overrides})


def _apply_texts(cfg: Config, overrides: Sequence[str], explicit: set[str]) -> Config:
    for text in overrides:
        key, value = parse_override(text)
        cfg = _apply(cfg, key, value)
    cfg = settle_strategy(cfg, explicit)
    validate(cfg)
    return cfg


def config_from_dict(values: Mapping[str, Any], where: str = "") -> Config:
    """Rebuild a validated config from :func:`config_to_dict` output (e.g. a saved run)."""
    cfg = settle_strategy(_apply_mapping(Config(), values, where), set())
    validate(cfg)
    return cfg


def override(cfg: Config, **dotted: Any) -> Config:
    """A copy of ``cfg`` with keys replaced; ``__`` in an argument name stands for a dot."""
    keys = {name.replace("__", ".") for name in dotted}
    for name, value in dotted.items():
        cfg = _apply(cfg, name.replace("__", "."), value)
    cfg = settle_strategy(cfg, keys)
    validate(cfg)
    return cfg


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested mapping (a preset file, :func:`config_to_dict`) as ``{dotted key: value}``."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


IMPLIED_ALPHA = {"fedavg": 0.0, "loss": 1.0}
"""``fedavg`` and ``loss`` are the alpha = 0 and alpha = 1 limits of ``fedvssl``."""

PAPER_KEYS = ("alpha", "beta", "decay", "shared")
COMPAT_KEYS = ("mix_coeff", "swbeta", "fedavg", "loss_window")


def settle_strategy(cfg: Config, explicit: set[str]) -> Config:
    """Make ``strategy.alpha`` say what the strategy does, and refuse keys it would ignore.

    ``explicit`` holds the dotted keys the user set alongside (or after) ``strategy.name``;
    one of them set away from its default that the chosen strategy does not use is an error,
    never silently dropped.
    """
    s = cfg.strategy
    defaults = StrategyConfig()
    unused = PAPER_KEYS if s.name == "flower-compat" else COMPAT_KEYS
    for key in unused:
        if f"strategy.{key}" in explicit and getattr(s, key) != getattr(defaults, key):
            users = "flower-compat" if key in COMPAT_KEYS else "fedvssl, fedavg and loss"
            raise ConfigError(
                f"strategy.{key} is not used by strategy.name={s.name} (only by {users}); "
                f"remove it or choose another strategy.name"
            )
    if s.name in IMPLIED_ALPHA:
        implied = IMPLIED_ALPHA[s.name]
        if "strategy.alpha" in explicit and s.alpha != implied:
            raise ConfigError(
                f"strategy.name={s.name} is fedvssl with alpha={implied:g}, but "
                f"strategy.alpha={s.alpha:g} was given; use strategy.name=fedvssl "
                f"strategy.alpha={s.alpha:g}, or drop strategy.alpha"
            )
        cfg = dataclasses.replace(cfg, strategy=dataclasses.replace(s, alpha=implied))
    return cfg


def require(ok: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``ok``."""
    if not ok:
        raise ConfigError(message)


def validate(cfg: Config) -> None:
    """Cross-field checks the types alone cannot express."""
    require(cfg.rounds >= 1, f"rounds={cfg.rounds} must be >= 1")
    require(cfg.num_clients >= 1, f"num_clients={cfg.num_clients} must be >= 1")
    require(
        1 <= cfg.clients_per_round <= cfg.num_clients,
        f"clients_per_round={cfg.clients_per_round} must be in [1, num_clients={cfg.num_clients}]",
    )
    require(
        0 <= cfg.min_clients <= cfg.clients_per_round,
        f"min_clients={cfg.min_clients} must be in [0, clients_per_round={cfg.clients_per_round}]",
    )
    require(cfg.round_timeout_s >= 0, "round_timeout_s must be >= 0 (0 disables the deadline)")
    s = cfg.strategy
    require(0.0 <= s.alpha <= 1.0, f"strategy.alpha={s.alpha} must be in [0, 1]")
    require(0.0 < s.decay < 1.0, f"strategy.decay={s.decay} must be in (0, 1)")
    require(0.0 <= s.mix_coeff <= 1.0, f"strategy.mix_coeff={s.mix_coeff} must be in [0, 1]")
    require(s.loss_window >= 1, f"strategy.loss_window={s.loss_window} must be >= 1")
    c = cfg.client
    require(c.batch_size >= 1, f"client.batch_size={c.batch_size} must be >= 1")
    require(c.local_epochs >= 1, f"client.local_epochs={c.local_epochs} must be >= 1")
    require(c.lr > 0, f"client.lr={c.lr} must be > 0")
    require(c.momentum >= 0, f"client.momentum={c.momentum} must be >= 0")
    require(c.weight_decay >= 0, f"client.weight_decay={c.weight_decay} must be >= 0")
    require(c.grad_clip >= 0, f"client.grad_clip={c.grad_clip} must be >= 0 (0 disables it)")
    require(c.num_gpus >= 0 and c.num_cpus >= 0, "client.num_gpus and client.num_cpus must be >= 0")
    require(c.num_actors >= 0, f"client.num_actors={c.num_actors} must be >= 0 (0: automatic)")
    require(c.torch_threads >= 0, f"client.torch_threads={c.torch_threads} must be >= 0")
    require(c.max_cached_clients >= 1, "client.max_cached_clients must be >= 1")
    require(
        not c.channels_last or c.num_gpus > 0,
        "client.channels_last=true is a GPU memory layout but client.num_gpus=0; set "
        "client.channels_last=false to train on CPU",
    )
    d = cfg.data
    require(
        bool(d.root.strip()),
        "data.root is empty: it must name a folder (a prepared dataset, or where the synthetic "
        "one is made), e.g. data.root=data/synthetic",
    )
    require(
        d.clip_len >= 8 and d.clip_len % 8 == 0,
        f"data.clip_len={d.clip_len} must be a multiple of 8 (the backbone's temporal stride)",
    )
    require(
        d.crop_size >= 32 and d.crop_size % 16 == 0,
        f"data.crop_size={d.crop_size} must be a multiple of 16, at least 32",
    )
    require(d.split in (1, 2, 3), f"data.split={d.split} is not allowed; choose one of [1, 2, 3]")
    require(d.dirichlet_alpha > 0, f"data.dirichlet_alpha={d.dirichlet_alpha} must be > 0")
    require(d.classes_per_client >= 1, "data.classes_per_client must be >= 1")
    validate_decode_workers(d.decode_workers, c)
    require(
        d.augment_on == "cpu" or d.loader == "local",
        f"data.augment_on={d.augment_on} needs data.loader=local (Ray Data tasks deliver "
        "augmented clips); set data.loader=local or data.augment_on=cpu",
    )
    require(c.target_scale > 0, f"client.target_scale={c.target_scale} must be > 0 (1: the reference)")
    require(d.patch_speed >= 0, f"data.patch_speed={d.patch_speed} must be >= 0 (1: the reference)")
    require(cfg.model.head_init_std > 0, f"model.head_init_std={cfg.model.head_init_std} must be > 0")
    e = cfg.eval
    require(e.every >= 0, f"eval.every={e.every} must be >= 0 (0: no evaluation during pretraining)")
    require(e.max_videos >= 0, f"eval.max_videos={e.max_videos} must be >= 0 (0: all)")
    require(e.num_clips >= 1, f"eval.num_clips={e.num_clips} must be >= 1")
    require(e.knn_k >= 1, f"eval.knn_k={e.knn_k} must be >= 1")
    require(e.batch_size >= 1, f"eval.batch_size={e.batch_size} must be >= 1")
    require(e.workers >= 0, f"eval.workers={e.workers} must be >= 0 (0: automatic)")
    require(e.num_cpus >= 0 and e.num_gpus >= 0, "eval.num_cpus and eval.num_gpus must be >= 0")
    validate_finetune(cfg.finetune)
    require(cfg.ray.num_cpus >= 0, "ray.num_cpus must be >= 0 (0: all cores)")


def validate_decode_workers(workers: int, c: ClientConfig) -> None:
    """``data.decode_workers`` must fit in the client actor's CPUs next to its training."""
    require(workers >= -1, f"data.decode_workers={workers} must be >= 0, or -1 (automatic)")
    if workers <= 0:
        return
    share = int(c.num_cpus + 1e-9)
    require(
        workers + 1 <= share,
        f"data.decode_workers={workers} worker processes and the training process need "
        f"{workers + 1} CPUs, but each client actor reserves client.num_cpus={c.num_cpus:g}: set "
        f"client.num_cpus>={workers + 1} or data.decode_workers<={max(0, share - 1)}",
    )
    require(
        c.num_gpus > 0 or 1 <= c.torch_threads <= share - workers,
        f"data.decode_workers={workers} on CPU clients shares client.num_cpus={c.num_cpus:g} with "
        f"the training threads: set client.torch_threads to 1..{share - workers}, or "
        "data.decode_workers=0",
    )


def parse_lr_steps(text: str, epochs: int | None = None) -> tuple[int, ...]:
    """``finetune.lr_steps`` ("60,120", or "" for none) as increasing positive epochs."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    try:
        steps = tuple(int(p) for p in parts)
    except ValueError:
        raise ConfigError(
            f"finetune.lr_steps={text!r} must be comma-separated epochs, e.g. 60,120 (or empty)"
        ) from None
    if any(s < 1 for s in steps) or list(steps) != sorted(set(steps)):
        raise ConfigError(
            f"finetune.lr_steps={text!r} must be strictly increasing epochs >= 1, e.g. 60,120"
        )
    if epochs is not None and steps and steps[-1] >= epochs:
        raise ConfigError(
            f"finetune.lr_steps={text!r} has a step at or after the last epoch "
            f"(finetune.epochs={epochs}); it would never take effect"
        )
    return steps


def validate_finetune(f: FinetuneConfig) -> None:
    """Checks of the ``finetune`` section."""
    require(f.epochs >= 1, f"finetune.epochs={f.epochs} must be >= 1")
    require(f.lr > 0, f"finetune.lr={f.lr} must be > 0")
    require(f.momentum >= 0, f"finetune.momentum={f.momentum} must be >= 0")
    require(f.weight_decay >= 0, f"finetune.weight_decay={f.weight_decay} must be >= 0")
    parse_lr_steps(f.lr_steps, f.epochs)
    require(0 < f.lr_gamma <= 1, f"finetune.lr_gamma={f.lr_gamma} must be in (0, 1]")
    require(f.grad_clip >= 0, f"finetune.grad_clip={f.grad_clip} must be >= 0 (0 disables it)")
    require(0 <= f.dropout < 1, f"finetune.dropout={f.dropout} must be in [0, 1)")
    require(f.batch_size >= 1, f"finetune.batch_size={f.batch_size} must be >= 1")
    require(
        f.clip_len == 0 or (f.clip_len >= 8 and f.clip_len % 8 == 0),
        f"finetune.clip_len={f.clip_len} must be 0 (data.clip_len) or a multiple of 8",
    )
    require(f.stride >= 1, f"finetune.stride={f.stride} must be >= 1")
    require(
        f.crop_size == 0 or (f.crop_size >= 32 and f.crop_size % 16 == 0),
        f"finetune.crop_size={f.crop_size} must be 0 (data.crop_size) or a multiple of 16, >= 32",
    )
    require(
        f.split in (0, 1, 2, 3),
        f"finetune.split={f.split} is not allowed; choose one of [0 (data.split), 1, 2, 3]",
    )
    require(f.workers >= 1, f"finetune.workers={f.workers} must be >= 1")
    require(f.num_cpus >= 0 and f.num_gpus >= 0, "finetune.num_cpus and finetune.num_gpus must be >= 0")
    require(f.torch_threads >= 0, f"finetune.torch_threads={f.torch_threads} must be >= 0")
    require(f.decode_workers >= 0, f"finetune.decode_workers={f.decode_workers} must be >= 0")
    require(f.checkpoint_every >= 1, f"finetune.checkpoint_every={f.checkpoint_every} must be >= 1")


def finetune_data(cfg: Config) -> Config:
    """``cfg`` with ``data.*`` replaced by what fine-tuning uses (``finetune.*`` where set)."""
    f = cfg.finetune
    data = dataclasses.replace(
        cfg.data,
        dataset=f.dataset or cfg.data.dataset,
        root=f.root or cfg.data.root,
        split=f.split or cfg.data.split,
        clip_len=f.clip_len or cfg.data.clip_len,
        crop_size=f.crop_size or cfg.data.crop_size,
    )
    return dataclasses.replace(cfg, data=data)


# ---------------------------------------------------------------------------------------------
# output


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """The config as nested plain data, ready for JSON or YAML."""
    return dataclasses.asdict(cfg)


def format_config(cfg: Config) -> str:
    """Human-readable YAML of the fully resolved config."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def describe_keys(cfg: Config | None = None) -> str:
    """One line per key with its type and its value in ``cfg`` (the defaults if None)."""
    lines = []
    defaults = config_to_dict(cfg or Config())

    def walk(cls: type, node: Mapping[str, Any], prefix: str) -> None:
        for name, tp in _field_types(cls).items():
            if _is_section(tp):
                walk(tp, node[name], f"{prefix}{name}.")
                continue
            if typing.get_origin(tp) is Literal:
                kind = "|".join(str(c) for c in typing.get_args(tp))
            else:
                kind = tp.__name__
            lines.append(f"  {prefix + name:<28} {kind:<40} {node[name]!r}")

    walk(Config, defaults, "")
    return "\n".join(lines)
