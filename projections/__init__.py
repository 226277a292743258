"""Read models derived from events. Inline ones are updated in the append transaction."""
