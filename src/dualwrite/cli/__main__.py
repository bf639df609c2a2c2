"""``python -m dualwrite.cli`` — same as the ``dualwrite`` console script."""

from dualwrite.cli import main

main()
