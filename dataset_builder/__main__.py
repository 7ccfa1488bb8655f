"""`python -m dataset_builder` entry point."""
import sys

from .cli import main

sys.exit(main())
