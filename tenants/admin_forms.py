"""The tenant's settings in the admin as a form: one field per setting of ``tenants.settings_schema``.

The form is only a view of the schema. What it submits is merged over the stored settings and validated
by ``services.tenant_settings_validate`` (the API's own validation: strict types, secret references,
endpoint URLs); each schema error is shown on the field its path names (``ragConfig.topK`` on
"Top K"). Stored keys the schema does not know (written by an older version) are kept as they are and
listed on the form; they are not validated and the platform ignores them when it reads the settings.

Superusers also get the whole settings as JSON in a collapsed "Advanced" section; a change there
replaces the form's values (changing both at once is refused, so neither is silently lost).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from django import forms
from pydantic import BaseModel

from tenants import secrets as secret_store
from tenants import services
from tenants.models import Tenant, TenantSecret
from tenants.settings_schema import (
    EmbeddingConfig,
    LlmConfig,
    RagConfig,
    TenantSettings,
    TenantSettingsError,
    default_tenant_settings,
)


@dataclass(frozen=True)
class SettingField:
    name: str  # the form field
    path: tuple[str, ...]  # where it lives in the camelCase settings
    kind: str = "value"  # "value" | "list_lines" | "list_commas" | "categories"


SETTING_FIELDS = [
    SettingField("brand_name", ("brandName",)),
    SettingField("tone", ("tone",)),
    SettingField("locale", ("locale",), "list_commas"),
    SettingField("enable_rag", ("enableRag",)),
    SettingField("enable_function_calling", ("enableFunctionCalling",)),
    SettingField("enable_human_handoff", ("enableHumanHandoff",)),
    SettingField("human_handoff_keywords", ("humanHandoffKeywords",), "list_lines"),
    SettingField("rag_top_k", ("ragConfig", "topK")),
    SettingField("rag_min_similarity", ("ragConfig", "minSimilarity")),
    SettingField("rag_keyword_weight", ("ragConfig", "hybridWeights", "keyword")),
    SettingField("rag_vector_weight", ("ragConfig", "hybridWeights", "vector")),
    SettingField("rag_fusion", ("ragConfig", "fusion")),
    SettingField("llm_provider", ("llm", "provider")),
    SettingField("llm_model", ("llm", "model")),
    SettingField("llm_base_url", ("llm", "baseUrl")),
    SettingField("llm_api_key_secret", ("llm", "apiKeySecret")),
    SettingField("llm_temperature", ("llm", "temperature")),
    SettingField("llm_max_tokens", ("llm", "maxTokens")),
    SettingField("llm_stream", ("llm", "stream")),
    SettingField("embedding_provider", ("embedding", "provider")),
    SettingField("embedding_model", ("embedding", "model")),
    SettingField("embedding_base_url", ("embedding", "baseUrl")),
    SettingField("embedding_dimensions", ("embedding", "dimensions")),
    SettingField("embedding_api_key_secret", ("embedding", "apiKeySecret")),
    SettingField("categories", ("categories",), "categories"),
]
_BY_NAME = {f.name: f for f in SETTING_FIELDS}

# The admin's fieldsets of the settings (TenantAdmin.get_fieldsets).
SETTINGS_FIELDSETS: list[tuple[str, dict[str, Any]]] = [
    (
        "Assistant",
        {
            "fields": ["brand_name", "tone", "locale", "enable_rag", "enable_function_calling"],
            "description": "How the assistant presents itself. Changes apply to the next reply.",
        },
    ),
    ("Human handoff", {"fields": ["enable_human_handoff", "human_handoff_keywords"]}),
    (
        "Retrieval (answers from your documents)",
        {"fields": ["rag_top_k", "rag_min_similarity", "rag_keyword_weight", "rag_vector_weight", "rag_fusion"]},
    ),
    (
        "Conversation categories",
        {
            "fields": ["categories"],
            "description": "Each conversation is tagged with the categories it is about (and given a sentiment), "
            "from what the user wrote, about a minute after they write; shown in the inbox and analytics, and "
            "filterable in the API.",
        },
    ),
    (
        "Language model",
        {
            "fields": [
                "llm_provider",
                "llm_model",
                "llm_base_url",
                "llm_api_key_secret",
                "llm_temperature",
                "llm_max_tokens",
                "llm_stream",
            ],
            "classes": ["collapse"],
        },
    ),
    (
        "Embeddings (document search)",
        {
            "fields": [
                "embedding_provider",
                "embedding_model",
                "embedding_base_url",
                "embedding_dimensions",
                "embedding_api_key_secret",
            ],
            "classes": ["collapse"],
            "description": "Changing the embedder makes documents indexed with another one unsearchable "
            "by meaning until they are re-indexed.",
        },
    ),
]


def _choices(model: type[BaseModel], field: str) -> list[tuple[str, str]]:
    annotation = model.model_fields[field].annotation
    return [(value, value) for value in getattr(annotation, "__args__", ())]


PROVIDER_HELP = (
    "default: the deployment's model (OPENAI_* settings, or the offline answerer when none); offline: "
    "quote the documents, no model; openai: api.openai.com; openai_compatible: any server speaking the "
    "OpenAI API at the base URL."
)
SECRET_HELP = (
    "Name of one of your secrets (Admin → Tenant secrets) holding the API key; the key itself is never "
    "stored in the settings. Empty: none."
)


def _get(data: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = data
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _set(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        if not isinstance(data.get(key), dict):
            data[key] = {}
        data = data[key]
    data[path[-1]] = value


def unknown_keys(data: Any, model: type[BaseModel] = TenantSettings, prefix: str = "") -> list[str]:
    """Paths of ``data`` the schema does not know (it would refuse them)."""
    if not isinstance(data, dict):
        return []
    known = {info.alias or name: info for name, info in model.model_fields.items()}
    found: list[str] = []
    for key, value in data.items():
        info = known.get(key)
        if info is None:
            found.append(prefix + key)
        elif isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            found += unknown_keys(value, info.annotation, f"{prefix}{key}.")
    return found


def split_unknown(data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the settings the schema knows, the rest) of stored settings, both as nested dicts."""
    known = copy.deepcopy(data)
    rest: dict[str, Any] = {}
    for path in unknown_keys(data):
        keys = tuple(path.split("."))
        parent = _get(known, keys[:-1]) if len(keys) > 1 else known
        if isinstance(parent, dict):
            _set(rest, keys, parent.pop(keys[-1]))
    return known, rest


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def secret_choices(tenant: Tenant | None, *current: str) -> list[tuple[str, str]]:
    names: list[str] = []
    if tenant is not None and tenant.pk:
        names = [
            name
            for name in TenantSecret.objects.filter(tenant=tenant).order_by("name").values_list("name", flat=True)
            if not secret_store.is_internal_secret_name(name)
        ]
    names += [name for name in current if name and name not in names]  # a reference to a secret gone
    return [("", "— none —"), *((name, name) for name in names)]


class TenantSettingsFormMixin(forms.Form):
    """Declares the settings fields; mixed into the tenant's ModelForm (see tenants.admin.TenantForm)."""

    brand_name = forms.CharField(
        max_length=120, help_text="The business name the assistant speaks for, e.g. in “Acme's documents”."
    )
    tone = forms.CharField(max_length=60, help_text="The tone the assistant is told to use, e.g. friendly, formal.")
    locale = forms.CharField(
        label="Languages",
        max_length=800,
        help_text="Language tags, separated by commas, first = main language (e.g. en, pt-BR). 1 to 20.",
    )
    enable_rag = forms.BooleanField(
        label="Answer from documents", required=False, help_text="Search the uploaded documents to answer."
    )
    enable_function_calling = forms.BooleanField(
        label="Call functions", required=False, help_text="Let the model call the tenant's configured functions."
    )
    enable_human_handoff = forms.BooleanField(
        label="Human handoff", required=False, help_text="Hand the conversation to a person on a keyword."
    )
    human_handoff_keywords = forms.CharField(
        label="Handoff keywords",
        required=False,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="One per line (1 to 60 characters each, at most 100): a message with one of them asks for a person.",
    )
    categories = forms.CharField(
        label="Categories",
        required=False,
        widget=forms.Textarea(attrs={"rows": 5}),
        help_text="One per line, 'Name: what it is about' (at most 50; names up to 64 characters), e.g. "
        "'Shipping: delivery times, costs and tracking'. The description is what a conversation is compared "
        "with, in any language.",
    )
    rag_top_k = forms.IntegerField(
        label="Top K", help_text="How many document passages the assistant reads per question (1 to 50)."
    )
    rag_min_similarity = forms.FloatField(
        label="Minimum relevance",
        help_text="0 to 1: passages scoring below it are not used (a higher value answers less, but more surely).",
    )
    rag_keyword_weight = forms.FloatField(
        label="Keyword weight", help_text="0 to 1: weight of the keyword search (BM25) in the weighted fusion."
    )
    rag_vector_weight = forms.FloatField(
        label="Meaning weight", help_text="0 to 1: weight of the search by meaning (vectors). Not both 0."
    )
    rag_fusion = forms.ChoiceField(
        label="Fusion",
        choices=_choices(RagConfig, "fusion"),
        help_text="weighted: the weights above; rrf: reciprocal rank fusion (ranks only, weights ignored).",
    )
    llm_provider = forms.ChoiceField(label="Provider", choices=_choices(LlmConfig, "provider"), help_text=PROVIDER_HELP)
    llm_model = forms.CharField(
        label="Model", required=False, max_length=200, help_text="e.g. gpt-4o-mini; empty: the provider's default."
    )
    llm_base_url = forms.CharField(
        label="Base URL",
        required=False,
        max_length=2048,
        help_text="openai_compatible only: e.g. https://llm.example.com/v1 (public addresses only).",
    )
    llm_api_key_secret = forms.ChoiceField(label="API key secret", required=False, help_text=SECRET_HELP)
    llm_temperature = forms.FloatField(label="Temperature", help_text="0 to 2.")
    llm_max_tokens = forms.IntegerField(label="Max tokens per reply", help_text="16 to 16000.")
    llm_stream = forms.BooleanField(
        label="Stream replies", required=False, help_text="Web chat shows words as they come."
    )
    embedding_provider = forms.ChoiceField(
        label="Provider",
        choices=_choices(EmbeddingConfig, "provider"),
        help_text="default: the deployment's embedder; local: the built-in one; openai / openai_compatible: "
        "an embeddings API.",
    )
    embedding_model = forms.CharField(label="Model", required=False, max_length=200)
    embedding_base_url = forms.CharField(
        label="Base URL", required=False, max_length=2048, help_text="openai_compatible only."
    )
    embedding_dimensions = forms.IntegerField(
        label="Dimensions", required=False, help_text="8 to 4096; empty: the model's own."
    )
    embedding_api_key_secret = forms.ChoiceField(label="API key secret", required=False, help_text=SECRET_HELP)

    # Set by the ModelForm using the mixin.
    instance: Tenant
    validated_settings: dict[str, Any] | None = None
    kept_unknown: list[str]

    def setup_settings_fields(self) -> None:
        stored = self.instance.settings if self.instance.pk else default_tenant_settings()
        stored = stored if isinstance(stored, dict) else {}
        self.kept_unknown = sorted(unknown_keys(stored))
        shown = _merge(default_tenant_settings(), split_unknown(stored)[0])  # missing keys show their default
        for spec in SETTING_FIELDS:
            value = _get(shown, spec.path)
            if spec.kind == "list_lines" and isinstance(value, list):
                value = "\n".join(str(v) for v in value)
            elif spec.kind == "list_commas" and isinstance(value, list):
                value = ", ".join(str(v) for v in value)
            elif spec.kind == "categories" and isinstance(value, list):
                value = "\n".join(
                    f"{c.get('name', '')}: {c.get('description', '')}".rstrip(": ")
                    for c in value
                    if isinstance(c, dict)
                )
            self.initial.setdefault(spec.name, value)
        tenant = self.instance if self.instance.pk else None
        for name in ("llm_api_key_secret", "embedding_api_key_secret"):
            field = self.fields[name]
            assert isinstance(field, forms.ChoiceField)
            field.choices = secret_choices(tenant, str(self.initial.get(name) or ""))
        if "settings_json" in self.fields:
            self.initial.setdefault("settings_json", stored)
        if self.kept_unknown:
            self.fields[
                "brand_name"
            ].help_text += f" Kept unchanged, not used by this version: {', '.join(self.kept_unknown)}."

    def settings_from_fields(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for spec in SETTING_FIELDS:
            if spec.name not in self.cleaned_data:
                continue  # its own field error is shown already
            value = self.cleaned_data[spec.name]
            if spec.kind == "list_lines":
                value = [line.strip() for line in str(value or "").splitlines() if line.strip()]
            elif spec.kind == "list_commas":
                value = [item.strip() for item in str(value or "").split(",") if item.strip()]
            elif spec.kind == "categories":
                value = [
                    {"name": name.strip(), "description": description.strip()}
                    for name, _, description in (line.partition(":") for line in str(value or "").splitlines())
                    if name.strip()
                ]
            elif spec.name == "embedding_dimensions" and value is None:
                value = None
            _set(data, spec.path, value)
        return data

    def clean_settings_fields(self, add_error: Any) -> None:
        """Validate the submitted settings as the API does; errors land on their fields."""
        stored = self.instance.settings if self.instance.pk and isinstance(self.instance.settings, dict) else {}
        json_changed = "settings_json" in self.changed_data
        fields_changed = [name for name in self.changed_data if name in _BY_NAME]
        if json_changed and fields_changed:
            add_error(
                "settings_json",
                "You changed the form and the JSON: change one of them, then save "
                f"(form fields changed: {', '.join(fields_changed)}).",
            )
            return
        if json_changed:
            raw = self.cleaned_data.get("settings_json")
            if not isinstance(raw, dict):
                add_error("settings_json", "must be a JSON object")
                return
            known, unknown = split_unknown(raw)
            base: dict[str, Any] | None = default_tenant_settings()
        else:
            if any(name in self.errors for name in _BY_NAME):
                return
            known, unknown = split_unknown(stored)
            known = _merge(known, self.settings_from_fields())
            base = default_tenant_settings()
        try:
            validated = services.tenant_settings_validate(
                tenant=self.instance if self.instance.pk else None, settings=known, base=base
            )
        except TenantSettingsError as exc:
            for path, problems in exc.errors.items():
                field = "settings_json" if json_changed else field_for_path(path)
                for problem in problems:
                    add_error(field, problem if field else f"{path}: {problem}")
            return
        self.validated_settings = _merge(validated, unknown)


def field_for_path(path: str) -> str | None:
    """The form field showing the setting at ``path`` (``ragConfig.hybridWeights`` -> its first weight;
    ``locale.2`` -> the languages)."""
    parts = tuple(path.split("."))
    for length in range(len(parts), 0, -1):
        prefix = parts[:length]
        for spec in SETTING_FIELDS:
            if spec.path[:length] == prefix:
                return spec.name
    return None
