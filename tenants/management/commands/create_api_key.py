from django.core.management.base import BaseCommand

from tenants import services
from tenants.management.commands._lookup import find_tenant


class Command(BaseCommand):
    help = "Create an API key for a tenant (id or slug) and print it once."

    def add_arguments(self, parser):
        parser.add_argument("tenant", help="tenant id or slug")
        parser.add_argument("--name", default="")

    def handle(self, *args, tenant: str, name: str, **options):
        issued = services.api_key_create(tenant=find_tenant(tenant), name=name)
        self.stdout.write(f"api key: {issued.raw_key}")
        self.stdout.write(self.style.WARNING("Shown only now; store it safely."))
