from django.core.management.base import BaseCommand, CommandError

from tenants import services
from tenants.settings_schema import TenantSettingsError


class Command(BaseCommand):
    help = "Create a tenant and print its id and a first API key (shown once)."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--slug", default=None)

    def handle(self, *args, name: str, slug: str | None, **options):
        try:
            tenant = services.tenant_create(name=name, slug=slug)
        except TenantSettingsError as exc:
            raise CommandError(str(exc)) from None
        issued = services.api_key_create(tenant=tenant, name="initial")
        self.stdout.write(f"tenant id: {tenant.pk}\nslug:      {tenant.slug}\napi key:   {issued.raw_key}")
        self.stdout.write(self.style.WARNING("The API key is shown only now; store it safely."))
