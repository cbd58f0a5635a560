"""Command groups of the ``syncline`` CLI; each module exports ``COMMANDS``."""
