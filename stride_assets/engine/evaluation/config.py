"""The harness's settings in a profile: its ``evaluation`` section (the pipeline's config does not carry it)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from stride_assets.engine.config import Profile, StrideConfig
from stride_assets.engine.errors import StrideConfigError


class EvaluationConfig(BaseModel):
    """Ground truth for the pipeline's own model: retrain its recipe on random subsets, score LDS."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    m: int = Field(64, ge=2, description="evaluation subsets (one retrain each; a Dagster partition each)")
    fraction: float = Field(0.5, gt=0, lt=1)
    seed: int = Field(1000, description="independent of the design seed")
    baselines: list[str] = Field(
        default_factory=lambda: ["tfidf", "repsim", "grad_dot", "kronfluence_ekfac"],
        description="harness methods measured beside the configured attribution.method (stride, kronfluence_ekfac, "
        "tfidf, ...); the configured one is skipped here")
    lds_floor: float = Field(0.0, description="the LDS asset check fails when the configured method's LDS is below this")


class EvaluationRun(BaseModel):
    """What the evaluation stages take: the pipeline's config (its corpus and model recipe) and the section."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    pipeline: StrideConfig = Field(default_factory=StrideConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)

    @classmethod
    def from_profile(cls, profile: Profile) -> "EvaluationRun":
        try:
            section = EvaluationConfig.model_validate(profile.sections.get("evaluation", {}))
        except ValueError as exc:
            raise StrideConfigError(f"invalid evaluation section (profile {profile.name!r}): {exc}") from exc
        return cls(pipeline=profile.config, evaluation=section)
