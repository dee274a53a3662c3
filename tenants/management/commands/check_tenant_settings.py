from django.core.management.base import BaseCommand, CommandError

from tenants.models import Tenant
from tenants.services import tenant_settings_validate
from tenants.settings_schema import TenantSettingsError


class Command(BaseCommand):
    help = (
        "Check every tenant's stored settings against today's rules (strict types, lengths, endpoint URLs "
        "and their addresses, secret references). Turns keep running on settings that fail (the failing "
        "fields fall back to defaults, with a warning); the tenant's next settings change must fix them. "
        "Exits 1 when any tenant fails."
    )

    def handle(self, *args, **options):
        failed = 0
        for tenant in Tenant.objects.order_by("slug").iterator():
            try:
                tenant_settings_validate(tenant=tenant, settings=tenant.settings or {}, base=None)
            except TenantSettingsError as exc:
                failed += 1
                for path, messages in exc.errors.items():
                    self.stdout.write(f"{tenant.slug} ({tenant.pk}): {path}: {'; '.join(messages)}")
        if failed:
            raise CommandError(f"{failed} tenant(s) have settings that break the current rules")
        self.stdout.write(self.style.SUCCESS("every tenant's settings pass the current rules"))
