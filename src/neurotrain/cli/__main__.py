"""``python -m neurotrain.cli``: the same as the ``neurotrain`` console script."""

from neurotrain.cli import main

main()
