"""``python -m syncline.cli``: the ``syncline`` command."""
from syncline.cli import main

main()
