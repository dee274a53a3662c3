from django.core.management.base import BaseCommand

from tenants import services
from tenants.management.commands._lookup import find_tenant
from tenants.models import Membership


class Command(BaseCommand):
    help = "Create (or attach) an admin staff user to a tenant with a role; prints a generated password."

    def add_arguments(self, parser):
        parser.add_argument("tenant", help="tenant id or slug")
        parser.add_argument("username")
        parser.add_argument("--role", choices=Membership.Role.values, default=Membership.Role.AGENT)
        parser.add_argument("--password", default=None, help="default: generate one and print it")
        parser.add_argument("--email", default="")

    def handle(self, *args, tenant: str, username: str, role: str, password: str | None, email: str, **options):
        user, generated = services.staff_user_create(
            tenant=find_tenant(tenant), username=username, role=role, password=password, email=email
        )
        self.stdout.write(f"staff user '{user.get_username()}' is {role} of tenant {tenant}")
        if generated:
            self.stdout.write(f"password: {generated}")
