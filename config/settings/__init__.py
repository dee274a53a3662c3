"""One settings namespace, split by area: base first, then each area's own module."""

from config.settings.base import *  # noqa: F403
from config.settings.channels import *  # noqa: F403
from config.settings.conversations import *  # noqa: F403
from config.settings.egress import *  # noqa: F403
from config.settings.events import *  # noqa: F403
from config.settings.knowledge import *  # noqa: F403
from config.settings.ratelimit import *  # noqa: F403
from config.settings.secrets import *  # noqa: F403
from config.settings.webchat import *  # noqa: F403
