"""`python -m core migrate`: bring the database schema up to date."""

import sys

from core.migrate import upgrade
from core.settings import get_settings

if __name__ == "__main__":
    if sys.argv[1:] != ["migrate"]:
        sys.exit("usage: python -m core migrate")
    upgrade(get_settings().resolved_database_url)
    print("database is up to date", file=sys.stderr)
