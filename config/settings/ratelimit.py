"""Settings of the platform's rate limiter and of who a client is (from the environment; see
docs/channels.md "Abuse limits"). The limits themselves live beside the area they protect (web chat
in webchat.py, unrouted webhooks in channels.py, the API in base.py); the admin login's are here."""

from config.settings.base import env_bool, env_int

# Reverse proxies in front of daphne that append the address they saw to X-Forwarded-For. 0 (the
# default): no header is believed and a client is its TCP peer (daphne's scope client); N: the client
# is the Nth address from the right of X-Forwarded-For, the one the outermost trusted proxy recorded.
# Anything left of it was written by the client and is ignored. Run daphne without --proxy-headers
# when 0 (that flag believes the leftmost, client-written address).
TRUSTED_PROXY_COUNT = env_int("TRUSTED_PROXY_COUNT", 0)

# django-ratelimit keeps its counters in this cache: the Redis one of CACHES (shared by every process,
# INCR is atomic), never a per-process or database cache.
RATELIMIT_USE_CACHE = "default"
# django-ratelimit's switch, honoured by every limit of the platform (tenants.ratelimit): false turns
# them all off (a load test; never in production).
RATELIMIT_ENABLE = env_bool("RATELIMIT_ENABLE", True)

# Admin login: after this many failed logins of one username from one client address within the
# window, that username is locked out from that address (the right password too) until the window ends.
ADMIN_LOGIN_FAILURES_PER_USER_AND_ADDRESS = env_int("ADMIN_LOGIN_FAILURES_PER_USER_AND_ADDRESS", 5)
# Failed logins from one address, whatever the username (a spray over many usernames).
ADMIN_LOGIN_FAILURES_PER_ADDRESS = env_int("ADMIN_LOGIN_FAILURES_PER_ADDRESS", 20)
ADMIN_LOGIN_WINDOW_SECONDS = env_int("ADMIN_LOGIN_WINDOW_SECONDS", 900)
