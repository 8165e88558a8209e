"""``python3 -m mongodouble ARGS`` (from Tests/MongoDouble), the same as mongo_double.py."""

import sys

from .main import main

sys.exit(main())
