"""Model and training configuration: dataclasses that round-trip through JSON.

Unknown keys are rejected with the file (or `--set`) they came from, so a typo never
silently trains the wrong model. Presets are named starting points; `--set key=value`
overrides any field of either dataclass (the two share no field names).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields

from .errors import UserError
from .io import read_json

# Where AbsTopK activation sparsity can act (names as in the reference checkpoint format).
ACT_SITES = (
    "attn_in",
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_out",
    "mlp_in",
    "mlp_neuron",
    "mlp_out",
    "resid_post_attn",
    "resid_post_mlp",
)
# The paper's choice: residual reads, q, k, v, MLP neurons and both sublayer outputs.
DEFAULT_ACT_SITES = ACT_SITES[:8]
# Circuit nodes live at those eight sites (nodes.SITE_KINDS); circuit.json files written
# before the nodes took these names spell three of them without the prefix.
OLD_NODE_SITES = {"q": "attn_q", "k": "attn_k", "v": "attn_v"}


@dataclass
class ModelConfig:
    vocab_size: int = 2048
    n_ctx: int = 128
    d_model: int = 128
    n_layer: int = 2
    d_head: int = 16
    n_head: int | None = None  # None -> d_model // d_head
    d_mlp: int | None = None  # None -> 4 * d_model
    norm: str = "rms"  # "rms" keeps zero a privileged value; "layer" for LayerNorm
    norm_eps: float | None = None  # None -> RMSNorm: dtype epsilon, LayerNorm: 1e-5
    ln_bias: bool = True  # LayerNorm only
    bias: bool = True
    act: str = "gelu"  # "gelu" | "relu"
    resid_act: str = "identity"  # "identity" | "relu", applied to the residual after each sublayer
    pos_emb: bool = False  # learned absolute positional embedding
    sink: bool = True  # per-head attention sink: an always-visible key with a zero value
    bigram_table: bool = True  # dense vocab x vocab table added to the logits
    tied_unembed: bool = False
    final_bias: bool = False  # a bias on the logits
    afrac: float | None = 0.25  # AbsTopK keep fraction; None turns activation sparsity off
    afrac_sites: list[str] = field(default_factory=lambda: list(DEFAULT_ACT_SITES))
    init_std: float = 0.02

    def __post_init__(self):
        _check_fields(self, ("d_model", "d_head"))  # before the arithmetic below
        if self.n_head is None:
            if self.d_model % self.d_head:
                raise UserError(
                    f"d_model={self.d_model} is not a multiple of d_head={self.d_head}; set n_head"
                )
            self.n_head = self.d_model // self.d_head
        if self.d_mlp is None:
            self.d_mlp = 4 * self.d_model
        if isinstance(self.afrac_sites, str):
            self.afrac_sites = [s for s in self.afrac_sites.split(",") if s]
        _check_fields(self)
        _check_choice("norm", self.norm, ("rms", "layer"))
        _check_choice("act", self.act, ("gelu", "relu"))
        _check_choice("resid_act", self.resid_act, ("identity", "relu"))
        for s in self.afrac_sites:
            _check_choice("afrac_sites entry", s, ACT_SITES)

    # n_head and d_mlp stay `int | None` fields, so the constructor, the validation and
    # config.json read and write exactly as before; __post_init__ fills a None, and these
    # read them as the ints they always are after construction.
    @property
    def heads(self) -> int:
        """`n_head`, filled in: `d_model // d_head` where it was left None."""
        assert self.n_head is not None, "__post_init__ sets n_head"
        return self.n_head

    @property
    def mlp_width(self) -> int:
        """`d_mlp`, filled in: `4 * d_model` where it was left None."""
        assert self.d_mlp is not None, "__post_init__ sets d_mlp"
        return self.d_mlp

    def has_act_sparsity(self, site: str) -> bool:
        return self.afrac is not None and self.afrac < 1 and site in self.afrac_sites


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 32
    lr: float = 3e-3
    seed: int = 0
    warmup_frac: float = 0.01
    lr_final_frac: float = 0.0  # learning rate at the last step, as a fraction of lr
    # Weight sparsity: target fraction of nonzero entries per weight matrix (1.0 = dense).
    density: float = 1.0
    embed_density: float | None = None  # embedding/unembedding; None -> sqrt(density)
    bias_density: float | None = None  # biases; None -> sqrt(density)
    min_per_neuron: int = 4  # nonzeros every output neuron keeps, so none dies
    anneal_frac: float = 0.5  # density goes linearly 1.0 -> target over this part of training
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 0.1
    grad_clip_rms: float = 1.0
    # "bf16": the forward pass under bfloat16 autocast (weights, gradients, Adam, softmax and
    # attention stay fp32). On a CPU with native bf16 it halves the memory traffic of every
    # activation and runs matmuls several times faster: the quick and small presets use it
    # (benchmarks/bench_train.py: step, matmul rates and held-out loss). Where bf16 is only
    # emulated (an AVX2 CPU) training falls back to fp32 and says so.
    precision: str = "fp32"
    eval_every: int = 100
    eval_batches: int = 8
    checkpoint_every: int = 200  # resumable checkpoint (only the newest is kept)
    save_every: int = 0  # also keep a model snapshot every N steps (0 = never)
    data: list[str] | None = None  # files/folders of text; None -> the Python standard library
    data_ext: list[str] | None = (
        None  # extensions to read from folders; None -> .py for the default corpus, any text file otherwise
    )
    heldout_frac: float = 0.05

    def __post_init__(self):
        if isinstance(self.data, str):
            self.data = [self.data]
        if isinstance(self.data_ext, str):
            self.data_ext = [e for e in self.data_ext.split(",") if e]
        _check_fields(self)
        if self.data == []:
            raise UserError(
                "data must name at least one file or folder (null: the standard library)"
            )
        _check_choice("precision", self.precision, ("fp32", "bf16"))

    @property
    def embed_density_target(self) -> float:
        return self.embed_density if self.embed_density is not None else math.sqrt(self.density)

    @property
    def bias_density_target(self) -> float:
        return self.bias_density if self.bias_density is not None else math.sqrt(self.density)


def _check_choice(name, value, choices):
    if value not in choices:
        raise UserError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


# The contexts attention allocates scores for grow with n_ctx squared: 4096 (16x the paper
# preset's) still fits a GPU, while a typo like 100000 would ask for terabytes.
MAX_N_CTX = 4096
# Token ids are cached as uint16.
MAX_VOCAB = 65536
# Sizes reach torch as C integers; far below this, memory_estimate refuses them anyway.
_BIG = 2**31 - 1
_INF = math.inf
# (low, high, brackets) of every numeric field: "[" / "]" include the bound, "(" / ")" do not.
LIMITS: dict[str, tuple[float, float, str]] = {
    "vocab_size": (1, MAX_VOCAB, "[]"),
    "n_ctx": (1, MAX_N_CTX, "[]"),
    "d_model": (1, _BIG, "[]"),
    "n_layer": (1, _BIG, "[]"),
    "d_head": (1, _BIG, "[]"),
    "n_head": (1, _BIG, "[]"),
    "d_mlp": (1, _BIG, "[]"),
    "norm_eps": (0, _INF, "()"),
    "afrac": (0, 1, "(]"),
    "init_std": (0, _INF, "[)"),
    "steps": (1, _INF, "[)"),
    "batch_size": (1, _BIG, "[]"),
    "lr": (0, _INF, "()"),
    "seed": (0, 2**63 - 1, "[]"),
    "warmup_frac": (0, 1, "[]"),
    "lr_final_frac": (0, _INF, "[)"),
    "density": (0, 1, "(]"),
    "embed_density": (0, 1, "(]"),
    "bias_density": (0, 1, "(]"),
    "min_per_neuron": (0, _INF, "[)"),
    "anneal_frac": (0, 1, "[]"),
    "weight_decay": (0, _INF, "[)"),
    "beta1": (0, 1, "[)"),
    "beta2": (0, 1, "[)"),
    "eps": (0, _INF, "()"),
    "grad_clip_rms": (0, _INF, "()"),
    "eval_every": (1, _INF, "[)"),
    "eval_batches": (1, _INF, "[)"),
    "checkpoint_every": (1, _INF, "[)"),
    "save_every": (0, _INF, "[)"),
    "heldout_frac": (0, 1, "()"),
}
_TYPE_WORDS = {
    "int": "an integer",
    "float": "a finite number",
    "bool": "true or false",
    "str": "a string",
    "list[str]": "a list of strings",
}


def _type_ok(value, kind: str) -> bool:
    if kind.endswith(" | None"):
        return value is None or _type_ok(value, kind.removesuffix(" | None"))
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return (
            isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        )
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    return isinstance(value, list) and all(isinstance(v, str) and v for v in value)


def _check_fields(obj, names: tuple[str, ...] | None = None) -> None:
    """Every field's type (from its annotation) and range (LIMITS), so a bad value is
    refused by name before it can crash or mistrain a run."""
    for f in fields(obj):
        if names is not None and f.name not in names:
            continue
        value = getattr(obj, f.name)
        kind = f.type
        assert isinstance(kind, str)  # `from __future__ import annotations`: the source text
        if not _type_ok(value, kind):
            want = _TYPE_WORDS[kind.removesuffix(" | None")]
            null = " or null" if kind.endswith(" | None") else ""
            raise UserError(f"{f.name} must be {want}{null}, got {value!r}")
        if f.name in LIMITS and value is not None:
            lo, hi, br = LIMITS[f.name]
            above = value > lo if br[0] == "(" else value >= lo
            below = value < hi if br[1] == ")" else value <= hi
            if not (above and below):
                raise UserError(f"{f.name} must be in {br[0]}{lo}, {hi}{br[1]}, got {value!r}")


MODEL_KEYS = {f.name for f in fields(ModelConfig)}
TRAIN_KEYS = {f.name for f in fields(TrainConfig)}
assert not MODEL_KEYS & TRAIN_KEYS, "a key must name one field only"

# Presets train weight-sparse models; `--set density=1.0` gives the dense twin.
# The CPU presets use Adam eps 1e-8 rather than the paper's 0.1: with gradients of RMS ~1e-3,
# eps 0.1 shrinks every update ~100x, which a long GPU run absorbs but a 5-minute run cannot
# (quick shape, 200 steps: held-out loss 4.13 with eps 1e-8 vs 5.08 with eps 0.1 at its best lr).
_CPU = dict(eps=1e-8)
PRESETS: dict[str, dict[str, dict]] = {
    # A test-sized model: seconds on 2 cores.
    "smoke": {
        "model": dict(vocab_size=512, n_ctx=32, d_model=32, n_layer=1),
        "train": dict(
            steps=40,
            batch_size=8,
            lr=1e-2,
            density=0.25,
            eval_every=20,
            eval_batches=2,
            checkpoint_every=20,
            **_CPU,
        ),
    },
    # A few minutes on 2 CPU cores with AVX-512 and bf16 (~16 min on AVX2 only, in fp32).
    "quick": {
        "model": dict(vocab_size=2048, n_ctx=128, d_model=128, n_layer=2),
        "train": dict(
            steps=1000,
            batch_size=32,
            lr=3e-3,
            density=0.125,
            precision="bf16",
            eval_every=100,
            checkpoint_every=200,
            **_CPU,
        ),
    },
    # About 30 minutes on 2 CPU cores.
    "small": {
        "model": dict(vocab_size=2048, n_ctx=128, d_model=256, n_layer=4),
        "train": dict(
            steps=1400,
            batch_size=32,
            lr=2e-3,
            density=1 / 16,
            precision="bf16",
            eval_every=200,
            checkpoint_every=250,
            **_CPU,
        ),
    },
    # The paper's shape and optimizer, for a GPU.
    "paper": {
        "model": dict(vocab_size=2048, n_ctx=256, d_model=2048, n_layer=8),
        "train": dict(
            steps=100_000,
            batch_size=64,
            lr=1.28e-2,
            density=1 / 64,
            anneal_frac=0.5,
            precision="bf16",
            eval_every=1000,
            checkpoint_every=1000,
            save_every=10_000,
        ),
    },
}


def parse_value(text: str):
    """`--set` values: JSON where it parses (numbers, true, null, lists), `a/b` as a
    fraction, a comma list for list fields, else the plain string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    if "/" in text:
        num, _, den = text.partition("/")
        try:
            return float(num) / float(den)
        except (ValueError, ZeroDivisionError):
            pass
    return text


def _split_flat(d: dict, source: str) -> tuple[dict, dict]:
    model, train = {}, {}
    for k, v in d.items():
        if k in MODEL_KEYS:
            model[k] = v
        elif k in TRAIN_KEYS:
            train[k] = v
        else:
            raise UserError(f"{source}: unknown config key {k!r}")
    return model, train


def _normalize(d: dict, source: str) -> tuple[dict, dict]:
    """Accept {"model": {...}, "train": {...}} (what a run writes) or one flat mapping."""
    d = {k: v for k, v in d.items() if k not in ("version", TOKENIZER_KEY)}
    if set(d) <= {"model", "train"} and d:
        model, train = dict(d.get("model", {})), dict(d.get("train", {}))
        for k in model:
            if k not in MODEL_KEYS:
                raise UserError(f"{source}: unknown model config key {k!r}")
        for k in train:
            if k not in TRAIN_KEYS:
                raise UserError(f"{source}: unknown train config key {k!r}")
        return model, train
    return _split_flat(d, source)


def _build(cls, values: dict, source: str):
    try:
        return cls(**values)
    except TypeError as e:
        raise UserError(f"{source}: {e}") from None
    except UserError as e:
        raise UserError(f"{source}: {e}") from None


def resolve(
    preset: str | None = None,
    config_file: str | None = None,
    overrides: list[str] | dict | None = None,
) -> tuple[ModelConfig, TrainConfig]:
    """Preset, then config file, then `key=value` overrides, later ones winning."""
    model: dict = {}
    train: dict = {}
    if preset is not None:
        if preset not in PRESETS:
            raise UserError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        model.update(PRESETS[preset]["model"])
        train.update(PRESETS[preset]["train"])
    if config_file is not None:
        m, t = _normalize(read_json(config_file), config_file)
        model.update(m)
        train.update(t)
    if overrides:
        if isinstance(overrides, dict):
            flat = dict(overrides)
        else:
            flat = {}
            for item in overrides:
                key, eq, value = item.partition("=")
                if not eq:
                    raise UserError(f"--set {item!r}: expected key=value")
                flat[key.strip()] = parse_value(value.strip())
        m, t = _split_flat(flat, "--set")
        model.update(m)
        train.update(t)
    return _build(ModelConfig, model, "model config"), _build(TrainConfig, train, "train config")


# The version of config.json's layout: every key of both dataclasses is written, so a file
# of this version lacking one was edited (a missing key must not take today's default).
CONFIG_VERSION = 1
# What a checkpoint's config.json holds besides the two sections (checkpoint.py writes it):
# the tokenizer the model was trained with.
TOKENIZER_KEY = "tokenizer"


def config_to_dict(model: ModelConfig, train: TrainConfig | None = None) -> dict:
    d = {"version": CONFIG_VERSION, "model": dataclasses.asdict(model)}
    if train is not None:
        d["train"] = dataclasses.asdict(train)
    return d


def param_count(m: ModelConfig) -> int:
    """About how many parameters `m` describes, from its shape alone (even a shapes-only
    model of a million layers would take gigabytes to build)."""
    d, w, f, v = m.d_model, m.heads * m.d_head, m.mlp_width, m.vocab_size
    layer = 4 * d * w + 2 * d * f + (3 * w + 2 * d + f) * m.bias + 4 * d + m.heads
    outside = v * d * (1 if m.tied_unembed else 2) + v * v * m.bigram_table + v + 2 * d
    return m.n_layer * layer + outside + m.pos_emb * m.n_ctx * d


def memory_estimate(m: ModelConfig, batch_size: int, training: bool) -> int:
    """About the bytes a batch of `batch_size` windows takes on a CPU in fp32: the weights
    (x5 when training: gradients, Adam's two moments, the sparsity masks) and the
    activations (every layer's kept for the backward pass when training). The factors are
    fitted to the measured peak of smoke-preset steps with each size in turn raised 100x
    or more (within 20% where the activations dominate)."""
    per_token = 8 * m.d_model + 12 * m.heads * m.d_head + 4 * m.mlp_width
    per_token = per_token * (m.n_layer if training else 1) + 2 * m.vocab_size
    return 4 * (param_count(m) * (5 if training else 1) + batch_size * m.n_ctx * per_token)


def model_name(model: ModelConfig, train: TrainConfig | None = None) -> str:
    """How reports name a model: "dense, d_model 64", "sparse 1/8, d_model 64", or
    "d_model 64 (imported)" when there is no training config."""
    if train is None:
        return f"d_model {model.d_model} (imported)"
    if train.density >= 1.0:
        return f"dense, d_model {model.d_model}"
    inverse = 1 / train.density
    frac = f"1/{round(inverse)}" if abs(inverse - round(inverse)) < 1e-6 else f"{train.density:.4g}"
    return f"sparse {frac}, d_model {model.d_model}"


def seedless_key(model: ModelConfig, train: TrainConfig | None = None) -> str:
    """The config without the training seed, as text: models that differ only in seed (the
    independent replicates of one design) share it."""
    d = config_to_dict(model, train)
    if train is not None:
        d["train"].pop("seed")
    return json.dumps(d, sort_keys=True)


def load_config_file(path) -> tuple[ModelConfig, TrainConfig | None]:
    """Read a run's config.json back into dataclasses. It must be complete for its version:
    a missing key would otherwise take today's default, silently another model."""
    d = read_json(path)
    if "model" not in d:
        raise UserError(f"{path}: no 'model' section")
    m, t = _normalize(d, str(path))
    version = d.get("version")
    if version is None:
        raise UserError(f"{path}: missing key 'version'")
    if type(version) is not int or not 1 <= version <= CONFIG_VERSION:
        raise UserError(
            f"{path}: config version {version!r}; this sparsecircuits reads versions 1 to "
            f"{CONFIG_VERSION} (a newer one wrote it?)"
        )
    for section, values, cls in (("model", m, ModelConfig), ("train", t, TrainConfig)):
        if section in d:
            missing = [f.name for f in fields(cls) if f.name not in values]
            if missing:
                raise UserError(f"{path}: missing {section} config key {missing[0]!r}")
    return _build(ModelConfig, m, str(path)), (
        _build(TrainConfig, t, str(path)) if "train" in d else None
    )
