"""The typed schema of ``Tenant.settings``; its defaults are the original design's.

Stored as camelCase JSON (the original design's wire names). ``validate_tenant_settings`` returns the complete
settings with defaults filled in, or raises ``TenantSettingsError`` with one message per field path
(``ragConfig.hybridWeights.keyword``) so the API can answer a field-level error.

Strict on input, tolerant on read. What a tenant saves is validated in pydantic's strict mode (no
coercion: ``"5"`` and ``true`` are not integers; an integer is still a valid float), with lengths,
reserved secret names and endpoint URLs checked, the URLs against the egress address rules
(``config.egress.check_url``, which resolves the host). What is read back at turn time
(``parse_tenant_settings``) is parsed leniently, without DNS; a stored value that breaks a rule added
after it was saved is replaced by its default for that read and logged, so a tenant saved under older
rules keeps answering (``manage.py check_tenant_settings`` lists such tenants).
"""

from __future__ import annotations

import logging
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from config.egress import EgressRefused, check_url
from tenants.secrets import SECRET_NAME_PATTERN, ReservedSecretName, check_tenant_namespace

logger = logging.getLogger(__name__)

# Validation context flag: the settings are being saved (strict types, URLs resolved and checked).
SAVING = "saving"
MAX_URL_LENGTH = 2048
MAX_MODEL_NAME_LENGTH = 200


def _saving(info: ValidationInfo) -> bool:
    return bool(info.context and info.context.get(SAVING))


def _endpoint_url(value: str, info: ValidationInfo) -> str:
    """An LLM or embedding base URL: http(s), a host, no credentials, and (when saved) an address a
    tenant may reach. The calls themselves go through the egress guard again."""
    if value:
        try:
            check_url(value, resolve=_saving(info))
        except EgressRefused as exc:
            raise ValueError(str(exc)) from None
    return value


def _secret_reference(value: str) -> str:
    if value:
        try:
            check_tenant_namespace(value)
        except ReservedSecretName as exc:
            raise ValueError(str(exc)) from None
    return value


EndpointUrl = Annotated[str, StringConstraints(max_length=MAX_URL_LENGTH), AfterValidator(_endpoint_url)]
ModelName = Annotated[str, StringConstraints(max_length=MAX_MODEL_NAME_LENGTH)]
# Empty = no secret; otherwise a name the secrets API accepts, outside the reserved namespaces.
SecretReference = Annotated[
    str, StringConstraints(max_length=120, pattern=rf"^(|{SECRET_NAME_PATTERN})$"), AfterValidator(_secret_reference)
]
# BCP 47 tags are at most 35 characters in practice (RFC 5646 section 4.4.1).
LanguageTag = Annotated[str, StringConstraints(max_length=35)]


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
    # The original design's default. Compared with the retrieval's calibrated relevance score (see
    # knowledge.retrieval), not with the raw cosine, whose range depends on the embedder.
    min_similarity: float = Field(0.7, ge=0, le=1)
    hybrid_weights: HybridWeights = Field(default_factory=HybridWeights)
    fusion: Literal["weighted", "rrf"] = "weighted"


class LlmConfig(_Schema):
    """Which LLM answers for this tenant. ``default`` = the deployment's (OPENAI_* env or offline)."""

    provider: Literal["default", "offline", "openai", "openai_compatible"] = "default"
    model: ModelName = ""
    base_url: EndpointUrl = ""
    # Name of the TenantSecret holding the API key (never the key itself).
    api_key_secret: SecretReference = ""
    temperature: float = Field(0.3, ge=0, le=2)
    max_tokens: int = Field(600, ge=16, le=16000)
    stream: bool = True


class EmbeddingConfig(_Schema):
    """Which embedder indexes and searches this tenant's documents. ``default`` = deployment's."""

    provider: Literal["default", "local", "openai", "openai_compatible"] = "default"
    model: ModelName = ""
    base_url: EndpointUrl = ""
    dimensions: int | None = Field(None, ge=8, le=4096)
    api_key_secret: SecretReference = ""


class ConversationCategory(_Schema):
    """A category conversations are tagged with (conversations.intelligence): what it is about, in
    words the embedder compares the user's messages with."""

    name: str = Field(min_length=1, max_length=64)
    description: str = Field("", max_length=500)


class TenantSettings(_Schema):
    brand_name: str = Field("Your Business", min_length=1, max_length=120)
    tone: str = Field("friendly", min_length=1, max_length=60)
    # Instructions added to the LLM's system prompt (an A/B test's variant can try some: conversations.experiments).
    prompt_addition: str = Field("", max_length=2000)
    locale: list[LanguageTag] = Field(default_factory=lambda: ["en"], min_length=1, max_length=20)
    enable_rag: bool = True
    enable_function_calling: bool = True
    enable_human_handoff: bool = True
    human_handoff_keywords: list[str] = Field(default_factory=lambda: ["human", "agent", "help"], max_length=100)
    rag_config: RagConfig = Field(default_factory=RagConfig)
    llm: LlmConfig = Field(default_factory=LlmConfig)
    embedding: EmbeddingConfig = Field(default_factory=EmbeddingConfig)
    categories: list[ConversationCategory] = Field(default_factory=list, max_length=50)

    @field_validator("locale")
    @classmethod
    def _locales(cls, value: list[str]) -> list[str]:
        for item in value:
            if not re.fullmatch(r"[a-z]{2,3}(-[A-Za-z0-9]{2,8})*", item):
                raise ValueError(f"'{item}' is not a language tag such as 'en' or 'pt-BR'")
        return value

    @field_validator("categories")
    @classmethod
    def _categories(cls, value: list[ConversationCategory]) -> list[ConversationCategory]:
        names = [c.name.strip().casefold() for c in value]
        if len(set(names)) != len(names):
            raise ValueError("category names must be different")
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
    """Validate ``data`` (merged over ``base``, nested dicts merged) strictly, as it is being saved, and
    return full camelCase settings. Secret references are checked against the tenant by
    ``tenants.services.tenant_settings_validate``."""
    if not isinstance(data, dict):
        raise TenantSettingsError({"settings": ["must be a JSON object"]})
    merged = _deep_merge(base or {}, data)
    try:
        parsed = TenantSettings.model_validate(merged, strict=True, context={SAVING: True})
    except ValidationError as exc:
        raise TenantSettingsError(_field_errors(exc)) from None
    return parsed.model_dump(by_alias=True)


def default_tenant_settings() -> dict[str, Any]:
    return TenantSettings().model_dump(by_alias=True)


def parse_tenant_settings(data: dict[str, Any]) -> TenantSettings:
    """Typed access for services: ``parse_tenant_settings(tenant.settings).rag_config.top_k``.

    Lenient: a stored value that fails today's rules falls back to its default (logged with its path),
    so settings saved under older rules never stop a turn. The value itself is never logged."""
    current: dict[str, Any] = dict(data or {})
    dropped: list[str] = []
    # Each pass removes every failing field. A model-level error (both hybrid weights 0) names the
    # object, which the next pass drops whole; the schema's nesting depth bounds the passes.
    for _ in range(4):
        try:
            parsed = TenantSettings.model_validate(current)
            break
        except ValidationError as exc:
            for error in exc.errors():
                path = _removable_path(error["loc"])
                dropped.append(".".join(path) or "settings")
                current = _without(current, path)
    else:
        parsed = TenantSettings()
    if dropped:
        logger.warning(
            "stored tenant settings break the current rules; defaults used for these fields",
            extra={"settings_fields": sorted(set(dropped))},
        )
    return parsed


def secret_references(settings: dict[str, Any]) -> dict[str, str]:
    """The tenant secrets these (camelCase) settings name, by field path: ``{"llm.apiKeySecret": name}``."""
    references: dict[str, str] = {}
    for section in ("llm", "embedding"):
        value = settings.get(section)
        name = value.get("apiKeySecret") if isinstance(value, dict) else None
        if isinstance(name, str) and name:
            references[f"{section}.apiKeySecret"] = name
    return references


def _removable_path(loc: tuple[int | str, ...]) -> list[str]:
    """The dict keys leading to the failing value; an error inside a list removes the whole list."""
    path: list[str] = []
    for part in loc:
        if not isinstance(part, str):
            break
        path.append(part)
    return path


def _without(data: dict[str, Any], path: list[str]) -> dict[str, Any]:
    if not path:
        return {}
    out = dict(data)
    head, rest = path[0], path[1:]
    if not rest:
        out.pop(head, None)
    elif isinstance(out.get(head), dict):
        out[head] = _without(out[head], rest)
    else:
        out.pop(head, None)
    return out


def _deep_merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out
