"""Typed views of the config, one per section of `configs/base.yaml` (which stays the one commented source of
defaults): each knows its keys and checks its own values. `RunConfig.from_cfg` builds them all when a config loads,
so a bad value fails at load time with the key and what to write instead. A part that takes a whole section as
settings owns its view (the token view's `modeldiff.analysis.measures.Settings`); the method's runtime settings are
made from the checked config where they are used (`TemperingSettings.from_config`, `Thresholds.from_config`).

Names that plug-in registries resolve (`sampler.kernel`, `annotate.annotator`) are checked against those
registries without importing torch or transformers.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass, field, fields
from typing import ClassVar

from omegaconf import DictConfig, OmegaConf

from modeldiff.analysis import ANNOTATORS, PLAGIARISM_MODES
from modeldiff.analysis.measures import Settings as TokendiffSettings
from modeldiff.method import KERNELS, OUTPUTS, SAMPLERS, WITHIN_BIN, ancestral_rules, check_z_range, z_resolution

DTYPES = ("float32", "bfloat16", "float16")


class ConfigError(ValueError):
    pass


def bad_value(key: str, need: str, value) -> ConfigError:
    return ConfigError(
        f'config key {key!r} must be {need}, got {value!r}: fix it in the config or with overrides "{key}=..."'
    )


@dataclass(frozen=True)
class Section:
    """A typed view of the config section `name`; `rules()` lists (key in the section, ok, requirement)."""

    name: ClassVar[str] = ""

    def __post_init__(self):
        self.check()

    def rules(self) -> list[tuple[str, bool, str]]:
        return []

    def check(self):
        for key, ok, need in self.rules():
            if not ok:
                value = self
                for part in key.split("."):
                    value = getattr(value, part)
                raise bad_value(f"{self.name}.{key}", need, value)

    @classmethod
    def from_cfg(cls, cfg: DictConfig):
        node = OmegaConf.select(cfg, cls.name) if cls.name else cfg
        return cls.from_node(node)

    @classmethod
    def from_node(cls, node):
        hints = typing.get_type_hints(cls)
        values = {}
        for f in fields(cls):  # in order: each section checks itself as it is built
            value = node[f.metadata.get("key", f.name)]
            kind = hints[f.name]
            if hasattr(kind, "from_node"):  # a section's typed view; a part's own raises ValueError
                try:
                    value = kind.from_node(value)
                except ConfigError:
                    raise
                except ValueError as e:
                    raise ConfigError(str(e)) from None
            elif OmegaConf.is_config(value):
                value = OmegaConf.to_container(value, resolve=True)
            values[f.name] = value
        return cls(**values)


@dataclass(frozen=True)
class ModelsSection(Section):
    name: ClassVar[str] = "models"
    a: str
    b: str


@dataclass(frozen=True)
class SpaceSection(Section):
    name: ClassVar[str] = "space"
    length: int
    vocab_size: int | None
    bos_token_id: int | None
    allowed_tokens: list | str | None

    def check(self):
        super().check()
        self._check_allowed_tokens()

    def rules(self):
        return [
            ("length", self.length >= 1, ">= 1"),
            ("vocab_size", self.vocab_size is None or self.vocab_size >= 2, ">= 2 or null"),
        ]

    def _check_allowed_tokens(self):
        """The shape of space.allowed_tokens; whether the ids exist is checked against the model when it loads."""
        allowed = self.allowed_tokens
        if allowed is None:
            return
        if self.vocab_size is not None:
            raise ConfigError(
                "space.vocab_size and space.allowed_tokens are both set: they are two ways to choose "
                'the allowed token set, so keep one (overrides "space.vocab_size=null" or '
                '"space.allowed_tokens=null")'
            )
        if isinstance(allowed, str):
            if not allowed.strip():
                raise ConfigError(
                    "space.allowed_tokens is an empty string: give a list of token ids, a file of ids, or null"
                )
            return
        bad = [v for v in allowed if not isinstance(v, int) or isinstance(v, bool)]
        if bad:
            raise ConfigError(
                f"space.allowed_tokens must list integer token ids, got {bad[0]!r}: e.g. overrides "
                '"space.allowed_tokens=[17,18,19]" or a file path'
            )


@dataclass(frozen=True)
class BinsSection(Section):
    name: ClassVar[str] = "bins"
    width: float

    def rules(self):
        return [("width", self.width > 0, "> 0")]


@dataclass(frozen=True)
class AncestralSection(Section):
    name: ClassVar[str] = "sampler.ancestral"
    temperatures: list
    n_samples: int
    n_blocks: int
    batch_size: int

    def rules(self):
        return ancestral_rules(self.temperatures, self.n_samples, self.n_blocks, self.batch_size)


@dataclass(frozen=True)
class SamplerSection(Section):
    name: ClassVar[str] = "sampler"
    method: str
    kernel: str
    kernel_params: dict
    t_min: float
    t_max: float
    n_temperatures: int
    ladders: int
    steps: int
    burn_in: int
    thin: int
    swap_every: int
    ancestral: AncestralSection

    def check(self):
        try:
            KERNELS.check(self.kernel)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        super().check()

    def rules(self):
        return [
            ("method", self.method in SAMPLERS, f"one of {list(SAMPLERS)}"),
            ("t_min", 0 < self.t_min <= self.t_max, "> 0 and <= sampler.t_max"),
            ("n_temperatures", self.n_temperatures >= 1, ">= 1"),
            ("ladders", self.ladders >= 2, ">= 2 (the ladders are the independent units the intervals resample)"),
            ("burn_in", 0 <= self.burn_in < self.steps, ">= 0 and < sampler.steps"),
            ("thin", self.thin >= 1, ">= 1"),
            ("swap_every", self.swap_every >= 1, ">= 1"),
        ]


@dataclass(frozen=True)
class CheckpointSection(Section):
    name: ClassVar[str] = "checkpoint"
    every: int

    def rules(self):
        return [("every", self.every >= 0, ">= 0")]


@dataclass(frozen=True)
class UncertaintySection(Section):
    name: ClassVar[str] = "uncertainty"
    n_replicates: int
    level: float

    def rules(self):
        least = math.ceil(2 / (1 - self.level) - 1e-9) if 0 < self.level < 1 else 0
        return [
            ("level", 0 < self.level < 1, "> 0 and < 1 (e.g. 0.95)"),
            ("n_replicates", self.n_replicates >= least, f">= {least} (2 / (1 - level): each tail holds a replicate)"),
        ]


@dataclass(frozen=True)
class CrossEvalSection(Section):
    name: ClassVar[str] = "cross_eval"
    n_draws: int
    within_bin: str
    allow_empty_bins: bool

    def rules(self):
        return [
            ("n_draws", self.n_draws >= 1, ">= 1"),
            ("within_bin", self.within_bin in WITHIN_BIN, f"one of {list(WITHIN_BIN)}"),
        ]


@dataclass(frozen=True)
class ModelSection(Section):
    name: ClassVar[str] = "model"
    dtype: str
    device: str
    batch_size: int
    trust_remote_code: bool
    safetensors_only: bool

    def rules(self):
        return [("dtype", self.dtype in DTYPES, f"one of {list(DTYPES)}"), ("batch_size", self.batch_size >= 1, ">= 1")]


@dataclass(frozen=True)
class ToySection(Section):
    name: ClassVar[str] = "toy"
    modulus: int
    archs: dict
    train_steps: int
    lr: float
    batch_size: int

    def rules(self):
        return [
            ("modulus", self.modulus >= 1, ">= 1"),
            ("train_steps", self.train_steps >= 1, ">= 1"),
            ("lr", self.lr > 0, "> 0"),
            ("batch_size", self.batch_size >= 1, ">= 1"),
        ]


@dataclass(frozen=True)
class PlagiarismSection(Section):
    name: ClassVar[str] = "plagiarism"
    mode: str
    dominated: float
    own_wins: float
    confidence: float
    near_identical: float
    distinct: float
    balance_z: float
    identical_tolerance: float
    weight_alpha: float
    noise_alpha: float
    direction_z: float
    permutations: int
    simulations: int

    def rules(self):
        return [
            ("mode", self.mode in PLAGIARISM_MODES, f"one of {', '.join(PLAGIARISM_MODES)}"),
            ("dominated", 0 <= self.dominated < 1, ">= 0 and < 1"),
            ("own_wins", 0 < self.own_wins <= 1, "> 0 and <= 1"),
            ("confidence", 0 < self.confidence < 1, "> 0 and < 1"),
            ("near_identical", self.near_identical >= 0, ">= 0"),
            ("distinct", self.distinct > self.near_identical, "> plagiarism.near_identical"),
            ("balance_z", self.balance_z > 0, "> 0"),
            ("identical_tolerance", self.identical_tolerance >= 0, ">= 0"),
            ("weight_alpha", 0 < self.weight_alpha < 1, "> 0 and < 1"),
            ("noise_alpha", 0 < self.noise_alpha < 1, "> 0 and < 1"),
            ("direction_z", self.direction_z > 0, "> 0"),
            ("permutations", self.permutations >= 1, ">= 1"),
            ("simulations", self.simulations >= 1, ">= 1"),
        ]


@dataclass(frozen=True)
class ScreeningSection(Section):
    name: ClassVar[str] = "screening"
    hub_ids: list
    directories: list
    probes: int  # the lineage index (modeldiff.analysis.lineage): probe inputs per fingerprint
    shortlist: int  # registered versions checked in full per new version (0 = all)

    def rules(self):
        def strings(values):
            return all(isinstance(v, str) and v.strip() for v in values)

        def integer(v, low):
            return isinstance(v, int) and not isinstance(v, bool) and v >= low

        return [
            ("hub_ids", strings(self.hub_ids), 'a list of hub ids or patterns, e.g. ["HuggingFaceTB/*"]'),
            ("directories", strings(self.directories), 'a list of directories, e.g. ["/srv/models"]'),
            ("probes", integer(self.probes, 1), "an integer >= 1"),
            ("shortlist", integer(self.shortlist, 0), "an integer >= 0 (0 = check every registered version)"),
        ]


@dataclass(frozen=True)
class JudgeSection(Section):
    name: ClassVar[str] = "annotate.judge"
    model: str
    threshold: float | None
    softness: float


@dataclass(frozen=True)
class AnnotateSection(Section):
    name: ClassVar[str] = "annotate"
    annotator: str
    per_bin: int
    bin_width: float
    in_main: bool
    judge: JudgeSection

    def check(self):
        try:
            ANNOTATORS.check(self.annotator)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        super().check()

    def rules(self):
        a = self
        return [
            ("per_bin", a.per_bin >= 0, ">= 0 (0 = every draw in the window)"),
            ("bin_width", a.bin_width > 0, "> 0"),
            (
                "in_main",
                not a.in_main or a.annotator != "human",
                "false with annotate.annotator=human (people fill sheets outside main), or set an automatic annotator",
            ),
            (
                "judge.model",
                a.annotator != "judge" or bool(a.judge.model.strip()),
                "a model ref with annotate.annotator=judge (e.g. toy:large:seed=1)",
            ),
            ("judge.softness", a.judge.softness >= 0, ">= 0 (0 = a 0/1 score)"),
        ]


@dataclass(frozen=True)
class RunConfig(Section):
    """The whole config, typed: top-level keys and one view per section."""

    seed: int
    models: ModelsSection
    space: SpaceSection
    z_range: list
    lambda_: float = field(metadata={"key": "lambda"})
    output: str
    bins: BinsSection
    sampler: SamplerSection
    checkpoint: CheckpointSection
    uncertainty: UncertaintySection
    cross_eval: CrossEvalSection
    model: ModelSection
    toy: ToySection
    plagiarism: PlagiarismSection
    screening: ScreeningSection
    tokendiff: TokendiffSettings  # the token view owns its section (modeldiff.analysis.measures)
    annotate: AnnotateSection

    def check(self):
        z = self.z_range
        if len(z) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in z):
            raise ConfigError(
                f'z_range must be two numbers [z_min, z_max], got {list(z)}: e.g. overrides "z_range=[1.8,2.1]"'
            )
        try:
            check_z_range(z)
        except ValueError as e:
            raise ConfigError(f'{e} (e.g. overrides "z_range=[{min(z)},{max(z)}]")') from None
        if self.lambda_ < 0:
            raise bad_value("lambda", ">= 0", self.lambda_)
        if self.output not in OUTPUTS:
            raise bad_value("output", f"one of {list(OUTPUTS)}", self.output)
        self._check_t_min_resolves_z()

    def _check_t_min_resolves_z(self):
        s, m = self.sampler, self.model
        if s.method != "tempering" or m.dtype not in ("float32", "bfloat16", "float16", "float64"):
            return
        resolution = z_resolution(m.dtype, self.output, self.space.length)
        if s.t_min < resolution:
            raise ConfigError(
                f"sampler.t_min={s.t_min:g} is finer than z's rounding error in {m.dtype} (about {resolution:.0e}): "
                "Metropolis and swap decisions would follow rounding noise; raise sampler.t_min to at least "
                f"{resolution:.0e} or run the model in a wider model.dtype (e.g. float32)"
            )
