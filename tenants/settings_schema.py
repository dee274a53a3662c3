"""The typed schema of ``Tenant.settings``; its defaults are the seed's.

Stored as camelCase JSON (the seed's wire names). ``validate_tenant_settings`` returns the complete
settings with defaults filled in, or raises ``TenantSettingsError`` with one message per field path
(``ragConfig.hybridWeights.keyword``) so the API can answer a field-level error.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel


class _Schema(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class HybridWeights(_Schema):
    keyword: float = Field(0.3, ge=0, le=1)
    vector: float = Field(0.7, ge=0, le=1)

    @model_validator(mode="after")
    def _not_both_zero(self) -> HybridWeights:
        if self.keyword == 0 and self.vector == 0:
            raise ValueError("at least one of keyword and vector must be above 0")
        return self


class RagConfig(_Schema):
    top_k: int = Field(5, ge=1, le=50)
    # The seed's default. Compared with the retrieval's calibrated relevance score (see
    # knowledge.retrieval), not with the raw cosine, whose range depends on the embedder.
    min_similarity: float = Field(0.7, ge=0, le=1)
    hybrid_weights: HybridWeights = Field(default_factory=HybridWeights)
    fusion: Literal["weighted", "rrf"] = "weighted"


class LlmConfig(_Schema):
    """Which LLM answers for this tenant. ``default`` = the deployment's (OPENAI_* env or offline)."""

    provider: Literal["default", "offline", "openai", "openai_compatible"] = "default"
    model: str = ""
    base_url: str = ""
    # Name of the TenantSecret holding the API key (never the key itself).
    api_key_secret: str = ""
    temperature: float = Field(0.3, ge=0, le=2)
    max_tokens: int = Field(600, ge=16, le=16000)
    stream: bool = True


class EmbeddingConfig(_Schema):
    """Which embedder indexes and searches this tenant's documents. ``default`` = deployment's."""

    provider: Literal["default", "local", "openai", "openai_compatible"] = "default"
    model: str = ""
    base_url: str = ""
    dimensions: int | None = Field(None, ge=8, le=4096)
    api_key_secret: str = ""


class TenantSettings(_Schema):
    brand_name: str = Field("Your Business", min_length=1, max_length=120)
    tone: str = Field("friendly", min_length=1, max_length=60)
    locale: list[str] = Field(default_factory=lambda: ["en"], min_length=1, max_length=20)
    enable_rag: bool = True
    enable_function_calling: bool = True
    enable_human_handoff: bool = True
    human_handoff_keywords: list[str] = Field(default_factory=lambda: ["human", "agent", "help"], max_length=100)
    rag_config: RagConfig = Field(default_factory=RagConfig)
    llm: LlmConfig = Field(default_factory=LlmConfig)
    embedding: EmbeddingConfig = Field(default_factory=EmbeddingConfig)

    @field_validator("locale")
    @classmethod
    def _locales(cls, value: list[str]) -> list[str]:
        import re

        for item in value:
            if not re.fullmatch(r"[a-z]{2,3}(-[A-Za-z0-9]{2,8})*", item):
                raise ValueError(f"'{item}' is not a language tag such as 'en' or 'pt-BR'")
        return value

    @field_validator("human_handoff_keywords")
    @classmethod
    def _keywords(cls, value: list[str]) -> list[str]:
        cleaned = [v.strip() for v in value]
        if any(not v or len(v) > 60 for v in cleaned):
            raise ValueError("keywords must be 1 to 60 characters")
        return cleaned


class TenantSettingsError(ValueError):
    def __init__(self, errors: dict[str, list[str]]):
        self.errors = errors
        super().__init__("; ".join(f"{k}: {', '.join(v)}" for k, v in errors.items()))


def _field_errors(exc: ValidationError) -> dict[str, list[str]]:
    errors: dict[str, list[str]] = {}
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "settings"
        msg = err["msg"].removeprefix("Value error, ")
        errors.setdefault(path, []).append(msg)
    return errors


def validate_tenant_settings(data: Any, *, base: dict | None = None) -> dict[str, Any]:
    """Validate ``data`` (merged over ``base``, nested dicts merged) and return full camelCase settings."""
    if not isinstance(data, dict):
        raise TenantSettingsError({"settings": ["must be a JSON object"]})
    merged = _deep_merge(base or {}, data)
    try:
        parsed = TenantSettings.model_validate(merged)
    except ValidationError as exc:
        raise TenantSettingsError(_field_errors(exc)) from None
    return parsed.model_dump(by_alias=True)


def default_tenant_settings() -> dict[str, Any]:
    return TenantSettings().model_dump(by_alias=True)


def parse_tenant_settings(data: dict[str, Any]) -> TenantSettings:
    """Typed access for services: ``parse_tenant_settings(tenant.settings).rag_config.top_k``."""
    return TenantSettings.model_validate(data or {})


def _deep_merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out
