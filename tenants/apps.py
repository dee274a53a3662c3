from django.apps import AppConfig


class TenantsConfig(AppConfig):
    name = "tenants"
    verbose_name = "Tenants"

    def ready(self) -> None:
        # Stop start-up at once, naming the variable, when the secret key ring is missing or malformed.
        from tenants.models import TenantSecret
        from tenants.secrets import SecretRepository, key_ring, register_secret_repository, tenant_secret_aad

        key_ring()
        import tenants.metrics  # noqa: F401  (declares the tenants' counters)

        register_secret_repository(
            SecretRepository(
                kind="tenant", model=TenantSecret, aad=lambda row: tenant_secret_aad(row.tenant_id, row.name)
            )
        )
