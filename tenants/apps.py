from django.apps import AppConfig


class TenantsConfig(AppConfig):
    name = "tenants"
    verbose_name = "Tenants"

    def ready(self) -> None:
        # Stop start-up at once, naming the variable, when the secret key ring is missing or malformed.
        from tenants.secrets import key_ring

        key_ring()
